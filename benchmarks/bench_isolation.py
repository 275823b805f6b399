"""Overhead of isolation: the same 100 typical filters over one 10,000-alert visit, run in the
engine process (:class:`sandbox.InProcessRunner`) and in the worker pool
(:class:`sandbox.pool.WorkerPool`, 2 workers), as ms per visit and a ratio to in-process.

Workload: the first visit of a simulated night (``engine.simulate``, 1 visit x 10,000 alerts,
seed 0, all columns decoded; the night file is cached in the temp directory), or, when the
simulator is unavailable, the 64 real v11.1 packets tiled to 10,000 rows. The pool writes only
the columns the filters can read (diaSource, diaObject, prvDiaSources) to shared memory.
Filters are quality cuts, lightcurve statistics, sky regions and magnitude cuts with varied
thresholds, owned by 100 users (one filter each) or by 10 users (ten each).

Pool figures: **cold** is a new pool's first visit (every worker forked, hardened and
compiling); **steady** is the median of later visits (workers alive, filters compiled). With
100 users and the default ``max_idle_workers=64``, 36 users get a fresh worker every visit;
the ``max_idle_workers=100`` row keeps them all.

Run: ``python benchmarks/bench_isolation.py`` or
``python -m pytest benchmarks/bench_isolation.py --benchmark-enable -s``.
"""

from __future__ import annotations

import glob
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sandbox import InProcessRunner, compile_filter
from sandbox.compile import CompiledFilter
from sandbox.pool import WorkerPool

N_ALERTS = 10_000
STEADY_VISITS = 7
ALERTS = os.environ.get("MINIBROKER_SHARED_ALERTS", "/work/shared/data/alerts")

TEMPLATES = [
    "return (alerts.diaSource.snr > {a}) & (fill(alerts.diaSource.reliability, 0) > 0.{b})",
    "lc = alerts.prvDiaSources.psfFlux\n    return (lc.count() >= {b}) & (alerts.diaSource.psfFlux > lc.mean() * 1.{a})",
    "return sky.cone(alerts.diaSource.ra, alerts.diaSource.dec, {a}.0, -{b}.0, 20.0)",
    "return mag_from_flux(alerts.diaSource.psfFlux) < 2{b}.{a}",
    "ds = alerts.diaSource\n    return (ds.snr > {b}) & ~isnull(ds.psfFlux) & (alerts.prvDiaSources.psfFlux.max() > {a})",
]


def load_visit() -> tuple[pa.RecordBatch, str]:
    """A 10,000-alert visit and a description of where it came from."""
    try:
        from engine.decode import decode_block
        from engine.night import read_night
        from engine.schema import load_schema
        from engine.simulate import simulate_night

        night = Path(tempfile.gettempdir()) / f"minibroker-bench-night-{N_ALERTS}.avro"
        if not night.exists():
            simulate_night(night, visits=1, alerts_per_visit=N_ALERTS, seed=0, progress=False)
        batch = decode_block(next(read_night(night)), load_schema("11.1")).batch
        if batch.num_rows == N_ALERTS:
            return batch, "simulated night, seed 0"
    except Exception as exc:  # the simulator is someone else's work in progress: fall back
        print(f"simulator unavailable ({type(exc).__name__}: {exc}); tiling the real packets")
    from engine.decode import decode_messages

    files = sorted(glob.glob(f"{ALERTS}/lsstcam/v11_1/*.avro"))
    batch = decode_messages([open(f, "rb").read() for f in files]).batch
    return batch.take(pa.array(np.arange(N_ALERTS) % batch.num_rows)), "64 real packets tiled"


def typical_filters(users: int) -> list[tuple[str, CompiledFilter]]:
    """The same 100 filters, owned round-robin by ``users`` users."""
    out = []
    for i in range(100):
        body = TEMPLATES[i % len(TEMPLATES)].format(a=i % 10 + 1, b=i % 7 + 1)
        src = f'"""Typical filter {i}."""\n\ndef filter(alerts):\n    {body}\n'
        out.append((f"user{i % users}/f{i}", compile_filter(src, f"f{i}.py")))
    return out


def _time(run: Callable[[pa.RecordBatch], list], visit: pa.RecordBatch) -> float:
    start = time.perf_counter()
    out = run(visit)
    elapsed = time.perf_counter() - start
    faults = [o.fault for o in out if o.fault is not None]
    assert not faults, faults[:3]
    return elapsed


def measure(visit: pa.RecordBatch) -> dict[str, float]:
    """Seconds per visit for every configuration, in one run."""
    timings: dict[str, float] = {}
    runner = InProcessRunner(typical_filters(100))
    _time(runner.run, visit)  # warm caches and lazy imports
    timings["in-process"] = statistics.median(_time(runner.run, visit) for _ in range(STEADY_VISITS))
    for users, idle in ((100, 64), (100, 100), (10, 64)):
        label = f"pool, {users} users x {100 // users}" + (f", max_idle={idle}" if users > 64 else "")
        with WorkerPool(typical_filters(users), workers=2, budget_s=2.0, max_idle_workers=idle) as pool:
            timings[f"{label}: cold"] = _time(pool.run, visit)
            timings[f"{label}: steady"] = statistics.median(_time(pool.run, visit) for _ in range(STEADY_VISITS))
    return timings


def report(timings: dict[str, float], source: str) -> str:
    base = timings["in-process"]
    lines = [f"100 filters, {N_ALERTS} alerts ({source}), {os.cpu_count()} cores; ms per visit, ratio to in-process"]
    lines += [f"{name:>46}: {t * 1000:8.1f} ms  x{t / base:6.1f}" for name, t in timings.items()]
    return "\n".join(lines)


def test_isolation_overhead(benchmark) -> None:  # type: ignore[no-untyped-def]
    """Print the table (only with ``--benchmark-enable``: it takes about a minute)."""
    if benchmark.disabled:
        pytest.skip("run with --benchmark-enable")
    visit, source = load_visit()
    timings = benchmark.pedantic(measure, args=(visit,), rounds=1, iterations=1)
    print("\n" + report(timings, source))


if __name__ == "__main__":
    batch, where = load_visit()
    print(report(measure(batch), where))
