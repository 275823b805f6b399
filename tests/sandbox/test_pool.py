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
from procfs import children as _children

from sandbox import FilterRejected, InProcessRunner, compile_filter
from sandbox.pool import WorkerPool, safe_compile, safe_compile_many, share_batch
from sandbox.pool.zygote import Zygote

LOOP = '"""Never ends."""\n\ndef filter(alerts):\n    while True:\n        pass\n'
BOOM = '"""Always fails."""\n\ndef filter(alerts):\n    return 1 / 0\n'


def _honest() -> list[tuple[str, object]]:
    return [
        (f"u{i % 3}/{k}", compile_filter(src, f"{k}.py"))
        for i, (k, src) in enumerate(HONEST.items())
    ]


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


def _counting_forks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    forks: list[int] = []
    real = Zygote.fork

    def counting(self: Zygote):  # type: ignore[no-untyped-def]
        sock, pid, pidfd = real(self)
        forks.append(pid)
        return sock, pid, pidfd

    monkeypatch.setattr(Zygote, "fork", counting)
    return forks


def _state(pid: int, wait_for: str = "T") -> str:
    """The process state letter, after waiting a little for ``wait_for`` (signals are async)."""
    deadline = time.monotonic() + 2
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            state = "gone"
        if state == wait_for or time.monotonic() > deadline:
            return state
        time.sleep(0.01)


def _pids(pool: WorkerPool) -> dict[str, int]:
    """The live (idle) worker of each user, by pid."""
    return {user: w.pid for user, w in pool._idle.items()}


def test_one_worker_per_user_reused_across_visits_never_across_users(
    visit: pa.RecordBatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each user gets one fresh fork, which serves that user's later visits and nobody else's."""
    forks = _counting_forks(monkeypatch)
    filters = _honest()
    want = InProcessRunner(filters).run(visit)
    with WorkerPool(filters, workers=2) as pool:
        seen = []
        for _ in range(3):
            got = pool.run(visit)
            for g, w in zip(got, want, strict=True):
                assert g.fault is None
                np.testing.assert_array_equal(g.mask, w.mask)
            seen.append(_pids(pool))
    assert len(forks) == 3 and len(set(forks)) == 3
    assert seen[0] == seen[1] == seen[2]
    assert sorted(seen[0]) == ["u0", "u1", "u2"] and len(set(seen[0].values())) == 3


def test_idle_workers_are_stopped_and_limited_per_visit(visit: pa.RecordBatch) -> None:
    """Between visits a worker is stopped (no user code runs); its soft CPU and address-space
    limits are this visit's allowance, below the hard backstops fixed for its life. It is
    scheduled as a batch task, so waking it never preempts the engine."""
    with WorkerPool(
        _honest()[:1], budget_s=0.5, compile_s=1.0, startup_s=2.0, memory_mb=512
    ) as pool:
        pool.run(visit)
        pool.run(visit)
        (pid,) = _pids(pool).values()
        assert _state(pid) == "T"
        assert os.sched_getscheduler(pid) == os.SCHED_BATCH  # never preempts the engine
        with open(f"/proc/{pid}/limits") as f:
            rows = {line[:26].strip(): line[26:].split() for line in f}
    cpu_soft, cpu_hard = (int(x) for x in rows["Max cpu time"][:2])
    assert cpu_soft <= 1 + 4 and cpu_hard > 600  # used (~0 s) + 1 x (0.5 + 1.0) + 2.0, rounded up
    as_soft, as_hard = (int(x) for x in rows["Max address space"][:2])
    assert as_soft + 512 * 2**20 <= as_hard


def test_a_faulty_worker_is_replaced_on_the_next_visit(visit: pa.RecordBatch) -> None:
    """A worker killed for a timeout is gone; the user's next visit (and the rest of this one)
    runs in a fresh worker. A worker that dies while idle is replaced without a fault."""
    filters = [
        ("a/loop", compile_filter(LOOP, "loop.py")),
        ("a/snr", compile_filter(HONEST["snr"], "snr.py")),
        ("b/snr", compile_filter(HONEST["snr"], "snr.py")),
    ]
    with WorkerPool(filters, budget_s=0.2) as pool:
        loop, snr, other = pool.run(visit)
        assert loop.fault.reason == "timeout" and snr.fault is None and other.fault is None
        first = _pids(pool)
        pool.update("a/loop", None)
        assert all(o.fault is None for o in pool.run(visit))
        second = _pids(pool)
        assert second["b"] == first["b"]  # b's worker lives on
        os.kill(second["b"], 9)  # dies while stopped
        time.sleep(0.05)
        for o in pool.run(visit):
            assert o.fault is None
        third = _pids(pool)
    assert third["a"] == second["a"] and third["b"] != second["b"]


def test_out_of_memory_retires_the_worker(
    visit: pa.RecordBatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A memory fault kills the worker; the user's next filter runs in a fresh one, which
    then serves the user's next visit."""
    forks = _counting_forks(monkeypatch)
    bomb = '"""Bomb."""\n\ndef filter(alerts):\n    x = [0] * (10 ** 10)\n    return True\n'
    filters = [
        ("a/bomb", compile_filter(bomb, "bomb.py")),
        ("a/snr", compile_filter(HONEST["snr"], "snr.py")),
    ]
    with WorkerPool(filters, memory_mb=256) as pool:
        bomb_o, snr = pool.run(visit)
        assert bomb_o.fault.reason == "memory" and snr.fault is None
        assert len(forks) == 2 and _pids(pool) == {"a": forks[1]}
        assert _state(forks[0], "gone") in ("gone", "Z")


def test_state_left_in_a_worker_reaches_no_other_user(visit: pa.RecordBatch) -> None:
    """A filter that mutates a list default, a module-level list and the store's shared
    lightcurve cache leaves nothing behind: it sees fresh state on every visit, in its own
    process, and another user's results never change."""
    stateful = (
        '"""Leaves state wherever it can."""\nSEEN = []\n\n'
        "def mark(x, acc=[]):\n    acc.append(x)\n    return len(acc)\n\n"
        "def filter(alerts):\n"
        "    SEEN.append(1)\n"
        "    lc = alerts.prvDiaSources.psfFlux\n"
        "    lc.mean()\n"
        "    fresh = len(SEEN) == 1 and mark(1) == 1\n"
        "    return (alerts.diaSource.snr > 10) if fresh else ~(alerts.diaSource.snr > 10)\n"
    )
    filters = [
        ("mallory/state", compile_filter(stateful, "state.py")),
        ("alice/lightcurve", compile_filter(HONEST["lightcurve"], "lightcurve.py")),
        ("alice/snr", compile_filter(HONEST["snr"], "snr.py")),
    ]
    reference = {o.key: o.mask for o in InProcessRunner(filters[1:]).run(visit)}
    snr = InProcessRunner([filters[2]]).run(visit)[0].mask
    with WorkerPool(filters) as pool:
        for _ in range(3):
            out = {o.key: o for o in pool.run(visit)}
            np.testing.assert_array_equal(out["mallory/state"].mask, snr)
            for key, mask in reference.items():
                np.testing.assert_array_equal(out[key].mask, mask)
            pids = _pids(pool)
            assert pids["mallory"] != pids["alice"]


def test_least_recently_used_workers_are_evicted(
    visit: pa.RecordBatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most max_idle_workers stay alive; with users in a steady order the same ones do."""
    forks = _counting_forks(monkeypatch)
    with WorkerPool(
        _honest(), max_idle_workers=2, workers=1
    ) as pool:  # one at a time: a fixed order
        history = []
        for _ in range(3):
            assert all(o.fault is None for o in pool.run(visit))
            assert len(pool._idle) <= 2
            history.append(_pids(pool))
    assert history[0] == history[1] == history[2] and sorted(history[0]) == ["u1", "u2"]
    assert len(forks) == 3 + 2  # u0 forks afresh on every visit


def test_workers_retire_after_max_visits(visit: pa.RecordBatch) -> None:
    """A worker serves at most max_visits_per_worker visits."""
    with WorkerPool(_honest()[:1], max_visits_per_worker=2) as pool:
        pids = []
        for _ in range(4):
            pool.run(visit)
            pids.append(_pids(pool).get("u0"))
    assert pids[1] is None and pids[3] is None  # retired right after its 2nd visit
    assert pids[0] is not None and pids[2] is not None and pids[0] != pids[2]


def test_update_recompiles_in_the_live_worker(
    visit: pa.RecordBatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resubmitted filter is compiled again in the user's live worker (no new fork); removing
    a user's last filter stops that user's worker."""
    forks = _counting_forks(monkeypatch)
    quality = (
        InProcessRunner([("u/f", compile_filter(HONEST["quality"], "f.py"))]).run(visit)[0].mask
    )
    with WorkerPool([("u/f", compile_filter(HONEST["snr"], "f.py"))]) as pool:
        pool.run(visit)
        pid = _pids(pool)["u"]
        pool.update("u/f", compile_filter(HONEST["quality"], "f.py"))
        (o,) = pool.run(visit)
        np.testing.assert_array_equal(o.mask, quality)
        assert _pids(pool)["u"] == pid and len(forks) == 1
        pool.update("u/f", compile_filter(BOOM, "f.py"))
        (o,) = pool.run(visit)
        assert o.fault.reason == "error" and "ZeroDivisionError" in str(o.fault)
        assert _pids(pool)["u"] == pid  # an exception is contained; the worker stays
        pool.update("u/f", None)
        assert pool._idle == {} and pool.run(visit) == []
    assert _state(pid, "gone") in ("gone", "Z")  # killed (a zombie until the zygote reaps it)


def _worker_pids(pool: WorkerPool) -> list[int]:
    """The pool's worker processes: the zygote's children (the zygote is its launcher's child
    when it runs in a PID namespace of its own)."""
    launcher = pool._zygote.proc.pid  # type: ignore[union-attr]
    zygotes = _children(launcher) if pool.enforced["pidns"] else [launcher]
    return [w for z in zygotes for w in _children(z)]


def test_a_killed_worker_faults_one_filter_and_the_rest_deliver(visit: pa.RecordBatch) -> None:
    """A worker that dies mid-filter gives that filter a 'killed' fault; the same user's next
    filter runs in a fresh worker."""
    filters = [
        ("u/loop", compile_filter(LOOP, "loop.py")),
        ("u/snr", compile_filter(HONEST["snr"], "snr.py")),
    ]
    with WorkerPool(filters, budget_s=10) as pool:

        def kill_children() -> None:
            time.sleep(0.7)
            for pid in _worker_pids(pool):
                os.kill(pid, 9)

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
    filters = [
        ("a/boom", compile_filter(BOOM, "boom.py")),
        ("b/snr", compile_filter(HONEST["snr"], "snr.py")),
    ]
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


def test_safe_compile_many_rejects_each_bad_file_and_compiles_the_rest() -> None:
    """Many files share one throwaway interpreter; a hostile file is rejected on its own and
    the files after it still compile; a blown deadline moves on to a fresh interpreter."""
    files = [
        (HONEST["snr"], "a.py"),
        ("(" * 10_000, "b.py"),
        ("x = 1\x00\n", "c.py"),
        (HONEST["snr"], "d.py"),
    ]
    a, b, c, d = safe_compile_many(files)
    assert a.name == "a" and d.name == "d"
    assert isinstance(b, FilterRejected) and isinstance(c, FilterRejected)
    slow = safe_compile_many(files[:2], timeout_s=0.001)
    assert all(isinstance(r, FilterRejected) and "took longer" in str(r) for r in slow)


def test_more_users_than_idle_workers_is_said_once(
    visit: pa.RecordBatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Users beyond max_idle_workers get a fresh worker every visit: the operator is told,
    once, and what to change."""
    with (
        caplog.at_level("WARNING", logger="sandbox.pool"),
        WorkerPool(_honest(), max_idle_workers=1) as pool,
    ):
        for _ in range(2):
            assert all(o.fault is None for o in pool.run(visit))
    said = [r.getMessage() for r in caplog.records if "idle workers kept" in r.getMessage()]
    assert len(said) == 1 and "3 users but only 1" in said[0] and "raise idle_workers" in said[0]


def test_a_worker_asked_ahead_and_never_taken_goes_with_the_pool(visit: pa.RecordBatch) -> None:
    """The zygote forks the next new user's worker ahead of time; one that no user took exits
    when the pool closes (before any job, so it never ran anything)."""
    pool = WorkerPool(_honest()[:1])
    try:
        assert all(o.fault is None for o in pool.run(visit))
        live = set(_worker_pids(pool))
        pool._zygote.request()  # type: ignore[union-attr]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not set(_worker_pids(pool)) - live:
            time.sleep(0.02)
        spare = set(_worker_pids(pool)) - live
        assert len(spare) == 1
    finally:
        pool.close()
    assert all(_state(pid, "gone") in ("gone", "Z") for pid in spare | live)


def test_a_free_core_takes_its_own_users_first_and_steals_only_when_out() -> None:
    """Users run on the core their worker is pinned to, in queue order with the users who
    have no worker yet; a core that runs out takes the busiest core's last user (one re-pin)."""
    from sandbox.pool.scheduler import _Queue

    q = _Queue()
    for user, cpu in [("a", 0), ("b", 1), ("new", -1), ("c", 0), ("d", 1), ("e", 1)]:
        q.push(user, [0], cpu)
    q.push("retry", [0], front=True)
    order = [q.pop(0)[0] for _ in range(4)]
    assert order == ["retry", "a", "new", "c"]
    assert q.pop(0)[0] == "e"  # core 0 is out of users: the last of core 1's
    assert [q.pop(1)[0] for _ in range(2)] == ["b", "d"] and not q


def test_a_worker_reports_a_batch_it_cannot_release() -> None:
    """A worker unmaps a visit's batch after its DONE; while anything still holds the mapping
    it cannot, says so (the next DONE carries RETIRE) and keeps the mapping rather than fault."""
    import mmap

    from sandbox.worker import _release

    fd = os.memfd_create("test-batch")
    os.ftruncate(fd, 4096)
    held = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    free = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    os.close(fd)
    view = memoryview(held)  # a filter's column still pointing into the batch
    assert _release([free]) is True and free.closed
    assert _release([held]) is False and not held.closed
    view.release()
    assert _release([held]) is True


def test_a_third_worker_shares_a_core_only_among_quick_users() -> None:
    """Each core first gets a worker of its own; one more may start only beside a quick user
    and only for a quick user (or on a core where nobody runs)."""
    from types import SimpleNamespace

    from sandbox.pool.scheduler import WorkerPool, _Queue

    pool = SimpleNamespace(_cpus=[0, 1], workers=2, shared_workers=1, _quick={"q1", "q2", "q3"})

    def running(*pairs: tuple[str, int]) -> list[SimpleNamespace]:
        return [SimpleNamespace(user=u, cpu=c) for u, c in pairs]

    def nxt(queued: list[tuple[str, int]], active: list[SimpleNamespace]):  # type: ignore[no-untyped-def]
        q = _Queue()
        for user, cpu in queued:
            q.push(user, [0], cpu)
        return WorkerPool._next(pool, q, active)  # type: ignore[arg-type]

    # Beside a quick user, a quick user of that core; never a slow one.
    assert nxt([("q2", 0)], running(("q1", 0), ("slow", 1))) == ("q2", [0], 0)
    assert nxt([("slow2", 0)], running(("q1", 0), ("slow", 1))) is None
    # Never beside a slow user, even for a quick one.
    assert nxt([("q2", 1)], running(("q1", 0), ("slow", 1))) is None
    # A core nobody runs on takes anyone; three running is the most.
    assert nxt([("slow2", 1)], running(("q1", 0), ("q2", 0))) == ("slow2", [0], 1)
    assert nxt([("q3", 1)], running(("q1", 0), ("q2", 0), ("slow", 1))) is None
    # With fewer lanes than cores (one at a time), nobody shares.
    pool.workers = 1
    assert nxt([("q2", 0)], running(("q1", 1))) is None


def test_quick_users_are_those_whose_filters_ran_well_within_budget(
    visit: pa.RecordBatch,
) -> None:
    """A user is quick after a visit whose filters all ran without a fault in under a tenth
    of the budget; a fault, or a new version of a filter, takes that away."""
    filters = [
        ("a/loop", compile_filter(LOOP, "loop.py")),
        ("b/snr", compile_filter(HONEST["snr"], "snr.py")),
    ]
    with WorkerPool(filters, budget_s=0.5) as pool:
        pool.run(visit)
        assert pool._quick == {"b"}
        pool.update("b/snr", compile_filter(HONEST["snr"], "snr.py"))
        assert pool._quick == set()
        pool.run(visit)
        assert pool._quick == {"b"}
