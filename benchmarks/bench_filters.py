"""Filter evaluation speed: vectorized vs per-alert form, and 100 typical filters on one visit.

Workload: one visit of 10,000 alerts in schema v11.1 — the first visit of a simulated night
(``engine.simulate``, 1 visit x 10,000 alerts, seed 0) when the simulator is installed, else
the 64 real LSSTCam packets tiled to 10,000 rows (their lightcurves are longer than typical,
so that is the harder case). Filters run through ``sandbox.run.InProcessRunner``, the same
code path as ``minibroker test``; each round is one whole visit.

Run: ``python -m pytest benchmarks/bench_filters.py --benchmark-enable`` (add ``-s`` to see
the printed ratio and per-filter figures).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from engine.bench import typical_filters
from sandbox.compile import compile_filter
from sandbox.run import InProcessRunner

N_ALERTS = 10_000
SHARED = Path("/work/shared/data/alerts/lsstcam/v11_1")

VECTOR = '''"""Bright, reliable, clean, rising in its own band."""
def filter(alerts):
    ds = alerts.diaSource
    clean = none_set(ds.pixelFlags_bad, ds.pixelFlags_saturatedCenter, ds.pixelFlags_crCenter, null=True)
    now = mag_from_flux(ds.psfFlux)
    before = mag_from_flux(alerts.prvDiaSources.psfFlux.in_band(ds.band).last())
    return (ds.reliability > 0.5) & (ds.snr > 8) & clean & (now < before - 0.1)
'''

SCALAR = '''"""The same selection, one alert at a time."""
def filter_alert(alert):
    ds = alert["diaSource"]
    if ds["reliability"] <= 0.5 or ds["snr"] <= 8:
        return False
    for flag in ("pixelFlags_bad", "pixelFlags_saturatedCenter", "pixelFlags_crCenter"):
        if ds[flag] is None or ds[flag]:
            return False
    if ds["psfFlux"] is None or ds["psfFlux"] <= 0:
        return False
    now = -2.5 * log10(ds["psfFlux"]) + 31.4
    last = None
    for p in alert["prvDiaSources"] or ():
        if p["band"] == ds["band"] and p["psfFlux"] is not None:
            if last is None or p["midpointMjdTai"] >= last["midpointMjdTai"]:
                last = p
    if last is None or last["psfFlux"] <= 0:
        return False
    return now < -2.5 * log10(last["psfFlux"]) + 31.4 - 0.1
'''

def _visit() -> pa.RecordBatch:
    try:
        from engine.decode import decode_block
        from engine.night import night_info, read_night
        from engine.simulate import simulate_night
    except ImportError:
        return _tiled_real()
    import tempfile

    out = Path(tempfile.mkdtemp()) / "bench.avro"
    simulate_night(out, visits=1, alerts_per_visit=N_ALERTS, seed=0, progress=False)
    schema, _ = night_info(out)
    return decode_block(next(iter(read_night(out))), schema).batch


def _tiled_real() -> pa.RecordBatch:
    from engine.decode import decode_messages

    batch = decode_messages([f.read_bytes() for f in sorted(SHARED.glob("*.avro"))]).batch
    idx = np.resize(np.arange(batch.num_rows), N_ALERTS)
    return batch.take(pa.array(idx))


@pytest.fixture(scope="module")
def visit() -> pa.RecordBatch:
    """One visit of 10,000 alerts."""
    return _visit()


def _run(runner: InProcessRunner, batch: pa.RecordBatch) -> None:
    outcomes = runner.run(batch)
    faults = [o.fault for o in outcomes if o.fault is not None]
    assert not faults, faults[0]


def test_vectorized_filter(benchmark, visit) -> None:
    """The vectorized form on one visit."""
    runner = InProcessRunner([("v", compile_filter(VECTOR, "vector.py"))])
    benchmark(_run, runner, visit)


def test_per_alert_filter(benchmark, visit) -> None:
    """The per-alert form of the same selection on one visit (a few rounds: it is slow)."""
    runner = InProcessRunner([("s", compile_filter(SCALAR, "scalar.py"))])
    benchmark.pedantic(_run, args=(runner, visit), rounds=3, iterations=1)


def test_same_answer_and_speed_ratio(visit) -> None:
    """Both forms select the same alerts; prints the per-alert / vectorized time ratio."""
    vec = InProcessRunner([("v", compile_filter(VECTOR, "vector.py"))])
    sca = InProcessRunner([("s", compile_filter(SCALAR, "scalar.py"))])
    v, s = vec.run(visit)[0], sca.run(visit)[0]
    assert v.fault is None and s.fault is None
    assert (v.mask == s.mask).all(), "the two forms disagree"
    tv = statistics.median(_time(vec, visit) for _ in range(7))
    ts = statistics.median(_time(sca, visit) for _ in range(3))
    print(f"\n{len(visit)} alerts, {v.passed} pass: vectorized {tv * 1e3:.2f} ms, "
          f"per-alert {ts * 1e3:.0f} ms, ratio {ts / tv:.0f}x")


def _time(runner: InProcessRunner, batch: pa.RecordBatch) -> float:
    t0 = time.perf_counter()
    runner.run(batch)
    return time.perf_counter() - t0


def _typical_filters() -> list[tuple[str, object]]:
    return typical_filters(100)


def test_hundred_typical_filters(benchmark, visit) -> None:
    """100 typical filters (a third with lightcurve reductions) over one visit; target <= 10 ms
    once the visit's columns are converted (the first filter pays the conversion)."""
    runner = InProcessRunner(_typical_filters())
    benchmark(_run, runner, visit)


def _report(label: str, batch: pa.RecordBatch, rounds: int = 9) -> None:
    runner = InProcessRunner(_typical_filters())
    totals, firsts = [], []
    for _ in range(rounds):
        outcomes = runner.run(batch)
        assert all(o.fault is None for o in outcomes), next(o.fault for o in outcomes if o.fault)
        totals.append(sum(o.seconds for o in outcomes))
        firsts.append(max(o.seconds for o in outcomes))
    print(f"\n100 typical filters on {len(batch)} alerts ({label}): median {statistics.median(totals) * 1e3:.1f} ms, "
          f"best {min(totals) * 1e3:.1f} ms per visit over {rounds} visits (slowest single filter, which "
          f"converts shared columns: {statistics.median(firsts) * 1e3:.1f} ms)")


def test_hundred_typical_filters_report(visit) -> None:
    """Prints the median and best time of 100 typical filters per visit (target <= 10 ms),
    column conversion included, and the slowest single filter."""
    _report("the benchmark visit", visit)


@pytest.mark.skipif(not SHARED.is_dir(), reason="the real LSSTCam packets are not available")
def test_hundred_typical_filters_report_real_packets() -> None:
    """The same on the 64 real packets tiled to 10,000 alerts: long lightcurves (~28 previous
    sources per alert), the hard case for lightcurve reductions."""
    _report("real packets tiled", _tiled_real())
