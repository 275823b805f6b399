"""Fixtures for the adversarial suite: a small real visit, canaries for outside effects.

Outside effects are watched three ways: a world-writable marker directory that must stay empty,
a TCP listener on 127.0.0.1 that must never see a connection, and a fake Redis credential in
the engine's environment that must never reach a worker.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pyarrow as pa
import pytest
from attack_suite import Outside

from engine.decode import decode_messages

CANARY = "redis://:canary-s3cret@127.0.0.1:6399/0"


@pytest.fixture(scope="session", autouse=True)
def canary_env() -> Iterator[str]:
    """A Redis password in the engine's environment, as in production."""
    old = os.environ.get("REDIS_URL")
    os.environ["REDIS_URL"] = CANARY
    yield CANARY
    if old is None:
        del os.environ["REDIS_URL"]
    else:
        os.environ["REDIS_URL"] = old


@pytest.fixture(scope="session")
def visit(v11_packets: list[bytes]) -> pa.RecordBatch:
    """The 64 real v11.1 alerts as one visit batch."""
    return decode_messages(v11_packets).batch


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outside]:
    """A marker directory anyone may write to and a listening socket nobody may reach."""
    d = tmp_path_factory.mktemp("markers")
    d.chmod(0o1777)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.setblocking(False)
    yield Outside(d, srv)
    srv.close()
