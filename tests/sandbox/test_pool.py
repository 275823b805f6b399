"""The worker pool: a drop-in for the in-process runner that isolates users, survives faults,
suspends repeat offenders, shares the batch read-only and leaks no credentials."""

from __future__ import annotations

import mmap
import os
import threading
import time

import numpy as np
import pyarrow as pa
import pytest
from attack_suite import HONEST

from sandbox import InProcessRunner, compile_filter
from sandbox.pool import WorkerPool, _Zygote, safe_compile, share_batch

LOOP = '"""Never ends."""\n\ndef filter(alerts):\n    while True:\n        pass\n'
BOOM = '"""Always fails."""\n\ndef filter(alerts):\n    return 1 / 0\n'


def _honest() -> list[tuple[str, object]]:
    return [(f"u{i % 3}/{k}", compile_filter(src, f"{k}.py")) for i, (k, src) in enumerate(HONEST.items())]


def test_same_outcomes_as_in_process_in_the_same_order(visit: pa.RecordBatch) -> None:
    """Keys in the order given, masks identical to InProcessRunner's."""
    filters = _honest()
    want = InProcessRunner(filters).run(visit)
    with WorkerPool(filters) as pool:
        got = pool.run(visit)
    assert [o.key for o in got] == [k for k, _ in filters]
    for g, w in zip(got, want, strict=True):
        assert g.fault is None and g.mask.dtype == bool
        np.testing.assert_array_equal(g.mask, w.mask)


def test_one_fresh_worker_per_user_per_visit(visit: pa.RecordBatch, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two users never share a process: each visit forks one worker per user."""
    forks: list[int] = []
    real = _Zygote.fork

    def counting(self: _Zygote):  # type: ignore[no-untyped-def]
        sock, pid, pidfd = real(self)
        forks.append(pid)
        return sock, pid, pidfd

    monkeypatch.setattr(_Zygote, "fork", counting)
    with WorkerPool(_honest(), workers=2) as pool:
        pool.run(visit)
        pool.run(visit)
    assert len(forks) == 6 and len(set(forks)) == 6


def test_a_killed_worker_faults_one_filter_and_the_rest_deliver(visit: pa.RecordBatch) -> None:
    """A worker that dies mid-filter gives that filter a 'killed' fault; the same user's next
    filter runs in a fresh worker."""
    filters = [("u/loop", compile_filter(LOOP, "loop.py")), ("u/snr", compile_filter(HONEST["snr"], "snr.py"))]
    with WorkerPool(filters, budget_s=10) as pool:
        zpid = pool._zygote.proc.pid  # type: ignore[union-attr]

        def kill_children() -> None:
            time.sleep(0.7)
            with open(f"/proc/{zpid}/task/{zpid}/children") as f:
                for pid in f.read().split():
                    os.kill(int(pid), 9)

        t = threading.Thread(target=kill_children)
        t.start()
        start = time.monotonic()
        loop, snr = pool.run(visit)
        t.join()
    assert time.monotonic() - start < 5
    assert loop.fault is not None and loop.fault.reason == "killed" and "loop.py" in str(loop.fault)
    assert snr.fault is None and snr.mask.sum() > 0


def test_repeated_faults_suspend_until_resubmitted(visit: pa.RecordBatch) -> None:
    """After max_faults faulty visits a filter is suspended with a readable reason; others run;
    resubmitting lifts the suspension."""
    filters = [("a/boom", compile_filter(BOOM, "boom.py")), ("b/snr", compile_filter(HONEST["snr"], "snr.py"))]
    with WorkerPool(filters, max_faults=2) as pool:
        for _ in range(2):
            boom, snr = pool.run(visit)
            assert boom.fault.reason == "error" and snr.fault is None
        assert "a/boom" in pool.suspended
        assert "ZeroDivisionError" in str(pool.suspended["a/boom"])
        boom, snr = pool.run(visit)
        assert boom.fault.reason == "suspended" and "resubmit" in str(boom.fault)
        assert snr.fault is None
        pool.update("a/boom", compile_filter(HONEST["snr"], "boom.py"))
        assert not pool.suspended
        boom, _ = pool.run(visit)
        assert boom.fault is None


def test_timeouts_are_enforced_by_the_clock(visit: pa.RecordBatch) -> None:
    """An endless filter is killed at its budget, and the visit takes about that long."""
    with WorkerPool([("a/loop", compile_filter(LOOP, "loop.py"))], budget_s=0.2) as pool:
        start = time.monotonic()
        (o,) = pool.run(visit)
    assert o.fault.reason == "timeout" and "0.2 s" in str(o.fault)
    assert 0.2 <= time.monotonic() - start < 2


def test_workers_hold_no_credentials(visit: pa.RecordBatch, canary_env: str) -> None:
    """The zygote's environment is an allowlist: the engine's REDIS_URL is not in it."""
    assert os.environ["REDIS_URL"] == canary_env
    with WorkerPool(_honest()) as pool:
        pid = pool._zygote.proc.pid  # type: ignore[union-attr]
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
        pool.run(visit)
    assert b"canary-s3cret" not in env and b"REDIS" not in env


def test_the_shared_batch_cannot_be_written(visit: pa.RecordBatch) -> None:
    """The visit's memfd is sealed: no write, no writable mapping, even from the engine."""
    fd = share_batch(visit)
    try:
        with pytest.raises(OSError):
            os.write(fd, b"x")
        with pytest.raises((OSError, PermissionError)):
            mmap.mmap(fd, 0, access=mmap.ACCESS_WRITE)
        rw = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
        try:
            with pytest.raises(PermissionError):
                os.pwrite(rw, b"x", 0)
        finally:
            os.close(rw)
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        assert pa.ipc.open_file(pa.py_buffer(mm)).get_batch(0).num_rows == visit.num_rows
    finally:
        os.close(fd)


def test_empty_visits_and_no_filters(visit: pa.RecordBatch) -> None:
    """No filters, or a visit with no alerts, are fine."""
    with WorkerPool([]) as pool:
        assert pool.run(visit) == []
    with WorkerPool(_honest()[:2]) as pool:
        out = pool.run(visit.slice(0, 0))
    assert all(o.fault is None and len(o.mask) == 0 for o in out)


def test_safe_compile_rejects_hostile_source_without_crashing() -> None:
    """Parser-hostile input and a blown deadline become rejections, never exceptions."""
    for source in ["(" * 10_000, "[" * 5000 + "]" * 5000, "x = 1\x00\n", "-" * 50_000 + "1"]:
        with pytest.raises(Exception) as info:
            safe_compile(source, "hostile.py")
        assert info.type.__name__ == "FilterRejected", info.value
    with pytest.raises(Exception) as info:
        safe_compile(HONEST["snr"], "slow.py", timeout_s=0.001)
    assert "took longer" in str(info.value)
    good = safe_compile(HONEST["snr"], "snr.py")
    assert good.version == compile_filter(HONEST["snr"], "snr.py").version
