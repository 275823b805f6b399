"""Overhead of isolation: the same 100 typical filters over one 10,000-alert visit, run in the
engine process (:class:`sandbox.InProcessRunner`, the baseline here) and in the worker pool
(:class:`sandbox.pool.WorkerPool`, 2 workers), as ms per visit and a ratio to in-process.

Workload: the benchmark visit shared by every file here (``conftest.py``:
:func:`engine.local.bench.bench_block`, one simulated v11.1 visit of 10,000 alerts, seed 7), decoded
to the columns the filters can read plus the delivery columns, as the engine hands it to the
pool in service; the pool writes only the columns the filters can read to shared memory. The
filters are :func:`engine.local.bench.typical_filters` (cuts, flags, photometry, sky regions and
lightcurve reductions with varied thresholds), owned by 100 users (one filter each) or by 10
users (ten each).

Pool figures: **cold** is a new pool's first visit (every worker forked, hardened and
compiling); **steady** is the median of later visits (workers alive, filters compiled). With
100 users and the pool's default ``max_idle_workers=64``, 36 users get a fresh worker every
visit; the ``max_idle_workers=100`` row keeps them all (the engine's default,
``idle_workers=256``, keeps them all too).

Run: ``python -m pytest benchmarks/bench_isolation.py --benchmark-enable -s`` (or
``python benchmarks/bench_isolation.py``). The summary adds peak memory: the pool's workers
are the zygote's children, so they count in the children's peak once the pool has closed.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import pyarrow as pa
import pytest

from engine.local.bench import typical_filters
from sandbox import InProcessRunner
from sandbox.pool import WorkerPool

STEADY_VISITS = 7


def _time(run: Callable[[pa.RecordBatch], list], visit: pa.RecordBatch) -> float:
    start = time.perf_counter()
    out = run(visit)
    elapsed = time.perf_counter() - start
    faults = [o.fault for o in out if o.fault is not None]
    assert not faults, faults[:3]
    return elapsed


def measure(visit: pa.RecordBatch, probe: Callable[[], str] | None = None,
            notes: list[str] | None = None) -> dict[str, float]:
    """Seconds per visit for every configuration, in one run; ``probe()`` (the pool's memory)
    is noted after each pool's steady visits."""
    timings: dict[str, float] = {}
    runner = InProcessRunner(typical_filters(100))
    _time(runner.run, visit)  # warm caches and lazy imports
    timings["in-process"] = statistics.median(_time(runner.run, visit) for _ in range(STEADY_VISITS))
    for users, idle in ((100, 64), (100, 100), (10, 64)):
        label = f"pool, {users} users x {100 // users}" + (f", max_idle={idle}" if users > 64 else "")
        with WorkerPool(typical_filters(100, users), workers=2, budget_s=2.0, max_idle_workers=idle) as pool:
            timings[f"{label}: cold"] = _time(pool.run, visit)
            timings[f"{label}: steady"] = statistics.median(_time(pool.run, visit) for _ in range(STEADY_VISITS))
            if probe is not None and notes is not None:
                notes.append(f"{label}: {probe()}")
    return timings


def report(timings: dict[str, float], count: int) -> list[str]:
    """The table: ms per visit, alerts/s and the ratio to in-process (lower is better)."""
    base = timings["in-process"]
    lines = [f"100 filters, {count} alerts (the benchmark visit), {len(os.sched_getaffinity(0))} cores",
             f"{'':46s} {'ms/visit':>9s} {'alerts/s':>10s} {'x in-process':>12s}"]
    lines += [f"{name:46s} {t * 1000:9.1f} {count / t:10.0f} {t / base:12.1f}" for name, t in timings.items()]
    return lines


def test_isolation_overhead(benchmark, visit_projected, peak_memory, pool_memory, summaries) -> None:  # type: ignore[no-untyped-def]
    """Print the table (only with ``--benchmark-enable``: it takes about ten seconds)."""
    if benchmark.disabled:
        pytest.skip("run with --benchmark-enable")
    batch = visit_projected.batch
    notes: list[str] = []
    timings = benchmark.pedantic(measure, args=(batch, pool_memory, notes), rounds=1, iterations=1)
    lines = report(timings, batch.num_rows) + notes + [peak_memory()]
    print("\nisolation\n" + "\n".join(lines))
    summaries.append(("isolation (bench_isolation.py)", lines))


if __name__ == "__main__":
    from engine.alerts.schema import load_schema
    from engine.config import load_config
    from engine.decode import decode_block
    from engine.evaluate import columns_needed
    from engine.local.bench import bench_block
    from engine.registry import ActiveFilter

    schema = load_schema("11.1")
    active = [ActiveFilter(key.split("/")[0], c) for key, c in typical_filters(100)]
    block = bench_block(load_config(env={}), progress=True)
    batch = decode_block(block, schema, columns_needed(active, schema)).batch
    print("\n".join(report(measure(batch), batch.num_rows)))
