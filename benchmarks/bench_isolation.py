"""Overhead of isolation: the same 100 typical filters over one 10,000-alert visit, run in the
engine process (:class:`sandbox.InProcessRunner`) and in the worker pool
(:class:`sandbox.pool.WorkerPool`, 2 workers), as a ratio.

Workload: the 64 real v11.1 packets replicated to 10,000 rows (cutouts included in the batch;
the pool leaves them out of shared memory because no filter reads them). Filters are quality
cuts, lightcurve statistics, sky regions and magnitude cuts with varied thresholds, owned by
100 users (worst case: one fork per filter) or by 25 users (4 filters each).

Run: ``python -m pytest benchmarks/bench_isolation.py --benchmark-enable -s``
"""

from __future__ import annotations

import glob
import os

import numpy as np
import pyarrow as pa
import pytest

from engine.decode import decode_messages
from sandbox import InProcessRunner, compile_filter
from sandbox.pool import WorkerPool

N_ALERTS = 10_000
ALERTS = os.environ.get("MINIBROKER_SHARED_ALERTS", "/work/shared/data/alerts")

TEMPLATES = [
    "return (alerts.diaSource.snr > {a}) & (fill(alerts.diaSource.reliability, 0) > 0.{b})",
    "lc = alerts.prvDiaSources.psfFlux\n    return (lc.count() >= {b}) & (alerts.diaSource.psfFlux > lc.mean() * 1.{a})",
    "return sky.cone(alerts.diaSource.ra, alerts.diaSource.dec, {a}.0, -{b}.0, 20.0)",
    "return mag_from_flux(alerts.diaSource.psfFlux) < 2{b}.{a}",
    "ds = alerts.diaSource\n    return (ds.snr > {b}) & ~isnull(ds.psfFlux) & (alerts.prvDiaSources.psfFlux.max() > {a})",
]

_timings: dict[str, float] = {}


@pytest.fixture(scope="module")
def visit() -> pa.RecordBatch:
    files = sorted(glob.glob(f"{ALERTS}/lsstcam/v11_1/*.avro"))
    batch = decode_messages([open(f, "rb").read() for f in files]).batch
    idx = pa.array(np.arange(N_ALERTS) % batch.num_rows)
    return batch.take(idx)


def _filters(users: int) -> list:
    out = []
    for i in range(100):
        body = TEMPLATES[i % len(TEMPLATES)].format(a=i % 10 + 1, b=i % 7 + 1)
        src = f'"""Typical filter {i}."""\n\ndef filter(alerts):\n    {body}\n'
        out.append((f"user{i % users}/f{i}", compile_filter(src, f"f{i}.py")))
    return out


def _record(benchmark, name: str) -> None:  # type: ignore[no-untyped-def]
    if benchmark.stats is not None:
        _timings[name] = benchmark.stats.stats.median


def test_in_process(benchmark, visit: pa.RecordBatch) -> None:  # type: ignore[no-untyped-def]
    """100 filters in the engine process."""
    runner = InProcessRunner(_filters(100))
    out = benchmark.pedantic(runner.run, args=(visit,), rounds=5, warmup_rounds=1)
    assert all(o.fault is None for o in out)
    _record(benchmark, "in-process")


@pytest.mark.parametrize("users", [100, 25])
def test_worker_pool(benchmark, visit: pa.RecordBatch, users: int) -> None:  # type: ignore[no-untyped-def]
    """100 filters in the worker pool (2 workers), owned by ``users`` users."""
    with WorkerPool(_filters(users), workers=2, budget_s=2.0) as pool:
        out = benchmark.pedantic(pool.run, args=(visit,), rounds=5, warmup_rounds=1)
    assert all(o.fault is None for o in out), [o.fault for o in out if o.fault][:3]
    _record(benchmark, f"pool, {users} users")


def test_report_ratio() -> None:
    """Print the overhead of isolation (median pool time / median in-process time)."""
    base = _timings.get("in-process")
    if not base:
        pytest.skip("run with --benchmark-enable")
    for name, t in _timings.items():
        print(f"\n{name:>20}: {t * 1000:8.1f} ms  ratio {t / base:5.2f}")
