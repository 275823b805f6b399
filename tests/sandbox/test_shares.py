"""Fair shares: one user's many or slow filters cost that user, never the others; suspension
counts faults over a window; idle workers that hold too much memory are retired."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from sandbox import InProcessRunner, Shares, compile_filter
from sandbox.pool import WorkerPool

DOC = '"""A test filter."""\n'
HONEST = DOC + "def filter(alerts):\n    return alerts.diaSource.snr > 5\n"
# Busy for a few tenths of a second, then an honest answer.
SLOW = DOC + (
    "def filter(alerts):\n"
    "    n = 0\n"
    "    for i in range(5000000):\n"
    "        n += 1\n"
    "    return alerts.diaSource.snr > 5\n"
)
# Faults on the 64-alert visit, passes on any other.
ON_AND_OFF = DOC + (
    "def filter(alerts):\n"
    "    if len(alerts) == 64:\n"
    "        raise ValueError('bad visit')\n"
    "    return alerts.diaSource.snr > 5\n"
)


def _runner(kind: str, filters: list, **kw: object) -> WorkerPool | InProcessRunner:
    if kind == "pool":
        return WorkerPool(filters, budget_s=5, **kw)  # type: ignore[arg-type]
    return InProcessRunner(filters, shares=kw.get("shares"))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["inprocess", "pool"])
def test_filters_beyond_a_users_count_do_not_run(kind: str, visit: pa.RecordBatch) -> None:
    """A user with more active filters than the limit gets over-share faults for the rest;
    another user's filter runs as usual."""
    filters = [(f"greedy/f{i}", compile_filter(HONEST, f"f{i}.py")) for i in range(5)]
    filters.append(("modest/f", compile_filter(HONEST, "f.py")))
    runner = _runner(kind, filters, shares=Shares(max_filters=3))
    try:
        outcomes = runner.run(visit)
    finally:
        runner.close()
    assert [o.fault is None for o in outcomes] == [True, True, True, False, False, True]
    for o in outcomes[3:5]:
        assert o.fault.reason == "over-share" and "more than 3 active filters" in str(o.fault)


@pytest.mark.parametrize("kind", ["inprocess", "pool"])
def test_a_users_time_share_stops_their_later_filters_only(
    kind: str, visit: pa.RecordBatch
) -> None:
    """Once a user's filters used their share of the visit, their remaining filters do not run
    (over-share); the other user's filter runs and delivers."""
    filters = [(f"slow/f{i}", compile_filter(SLOW, f"f{i}.py")) for i in range(4)]
    filters.append(("quick/f", compile_filter(HONEST, "f.py")))
    runner = _runner(kind, filters, shares=Shares(budget_s=0.3))
    try:
        outcomes = runner.run(visit)
    finally:
        runner.close()
    *slow, quick = outcomes
    assert slow[0].fault is None or slow[0].fault.reason == "over-share"
    assert slow[-1].fault is not None and slow[-1].fault.reason == "over-share", slow[-1]
    assert "share of 0.3 s" in str(slow[-1].fault)
    assert quick.fault is None and quick.passed > 0


def test_suspension_counts_faults_in_a_window(visit: pa.RecordBatch) -> None:
    """A filter that faults on every other visit is suspended after 3 faults in its last 5
    visits (it never faults 3 times in a row)."""
    other = pa.record_batch(
        {"diaSource": pa.StructArray.from_arrays([pa.array(np.full(10, 7.0))], ["snr"])}
    )
    filters = [("a/flaky", compile_filter(ON_AND_OFF, "flaky.py"))]
    with WorkerPool(filters, budget_s=5, max_faults=3, fault_window=5) as pool:
        reasons = [pool.run(b)[0].fault for b in (visit, other, visit, other, visit)]
        assert [f is None for f in reasons] == [False, True, False, True, False]
        assert "a/flaky" in pool.suspended
        (after,) = pool.run(other)
        assert after.fault.reason == "suspended" and "3 faults in its last 5 visits" in str(
            after.fault
        )


@pytest.mark.parametrize(("limit_mb", "kept"), [(1, False), (4096, True)])
def test_idle_workers_are_retired_on_resident_memory(
    limit_mb: int, kept: bool, visit: pa.RecordBatch
) -> None:
    """After a visit a worker whose resident memory exceeds the limit is retired, not kept."""
    with WorkerPool([("a/f", compile_filter(HONEST, "f.py"))], max_idle_rss_mb=limit_mb) as pool:
        assert pool.run(visit)[0].fault is None
        assert ("a" in pool._idle) is kept
