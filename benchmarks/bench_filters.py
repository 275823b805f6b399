"""Filter evaluation speed: vectorized vs per-alert form, and 100 typical filters on one visit.

Workload: the benchmark visit shared by every file here (``conftest.py``:
:func:`engine.local.bench.bench_block`, one simulated v11.1 visit of 10,000 alerts, seed 7), decoded
with every column by the fast decoder (the per-alert filter reads flags the typical filters'
projection leaves out). Filters run through ``sandbox.run.InProcessRunner``, the same code path
as ``minibroker test``; each round is one whole visit. The 100 filters are
:func:`engine.local.bench.typical_filters` (one user each).

- ``per-alert`` (the baseline): one selection written as ``filter_alert(alert)``, called once
  per alert on dicts, as a per-alert design would run it;
- ``vectorized``: the same selection as ``filter(alerts)`` on the columns;
- ``100 typical filters``: the whole set, column conversion included (no per-alert
  counterpart, so no ratio).

- ``new: ...``: one filter each using a helper added by issue 12 (``thin``, trigonometry, the
  null test of a record, ``rate_between`` with ``equal_times="inf"``, the elongation of every
  difference cutout of the visit), columns converted in the
  round; read them against ``vectorized, 1 filter``.

Extra, not the shared workload: ``test_hundred_typical_filters_report_real_packets`` runs the
100 filters on the 64 real LSSTCam packets tiled to 10,000 rows (their lightcurves are longer
than typical: the hard case for lightcurve reductions); it is skipped without the packets.

Run: ``python -m pytest benchmarks/bench_filters.py --benchmark-enable -s`` (the summary prints
alerts/s, ms per visit, the ratio to the per-alert baseline and peak memory).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

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

RESULTS: dict[str, float] = {}  # name -> seconds per visit (median round)
EXTRA: list[str] = []


def _tiled_real() -> pa.RecordBatch:
    """The extra workload: the 64 real packets tiled to 10,000 rows."""
    from engine.decode import decode_messages

    batch = decode_messages([f.read_bytes() for f in sorted(SHARED.glob("*.avro"))]).batch
    idx = np.resize(np.arange(batch.num_rows), N_ALERTS)
    return batch.take(pa.array(idx))


@pytest.fixture(scope="module")
def visit(visit_full) -> pa.RecordBatch:  # type: ignore[no-untyped-def]
    """The benchmark visit, every column."""
    return visit_full.batch


def _run(runner: InProcessRunner, batch: pa.RecordBatch) -> None:
    outcomes = runner.run(batch)
    faults = [o.fault for o in outcomes if o.fault is not None]
    assert not faults, faults[0]


def test_vectorized_filter(benchmark, visit) -> None:  # type: ignore[no-untyped-def]
    """The vectorized form on one visit."""
    runner = InProcessRunner([("v", compile_filter(VECTOR, "vector.py"))])
    benchmark(_run, runner, visit)
    RESULTS["vectorized, 1 filter"] = benchmark.stats.stats.median


def test_per_alert_filter(benchmark, visit) -> None:  # type: ignore[no-untyped-def]
    """The per-alert form of the same selection on one visit (a few rounds: it is slow)."""
    runner = InProcessRunner([("s", compile_filter(SCALAR, "scalar.py"))])
    benchmark.pedantic(_run, args=(runner, visit), rounds=3, iterations=1)
    RESULTS["per-alert, 1 filter"] = benchmark.stats.stats.median


def test_same_answer(visit) -> None:  # type: ignore[no-untyped-def]
    """Both forms select the same alerts (else the ratio would compare different work)."""
    vec = InProcessRunner([("v", compile_filter(VECTOR, "vector.py"))])
    sca = InProcessRunner([("s", compile_filter(SCALAR, "scalar.py"))])
    v, s = vec.run(visit)[0], sca.run(visit)[0]
    assert v.fault is None and s.fault is None
    assert (v.mask == s.mask).all(), "the two forms disagree"
    EXTRA.append(f"the selection passes {v.passed} of {len(visit)} alerts in both forms")


def test_hundred_typical_filters(benchmark, visit, typical) -> None:  # type: ignore[no-untyped-def]
    """100 typical filters (a third with lightcurve reductions) over one visit; target <= 10 ms
    once the visit's columns are converted (the first filter pays the conversion)."""
    runner = InProcessRunner(typical)
    benchmark(_run, runner, visit)
    RESULTS["100 typical filters"] = benchmark.stats.stats.median


def _report(label: str, batch: pa.RecordBatch, typical, rounds: int = 9) -> str:  # type: ignore[no-untyped-def]
    runner = InProcessRunner(typical)
    totals, firsts = [], []
    for _ in range(rounds):
        outcomes = runner.run(batch)
        assert all(o.fault is None for o in outcomes), next(o.fault for o in outcomes if o.fault)
        totals.append(sum(o.seconds for o in outcomes))
        firsts.append(max(o.seconds for o in outcomes))
    return (
        f"100 typical filters on {len(batch)} alerts ({label}): median {statistics.median(totals) * 1e3:.1f} ms, "
        f"best {min(totals) * 1e3:.1f} ms per visit over {rounds} visits (slowest single filter, which "
        f"converts shared columns: {statistics.median(firsts) * 1e3:.1f} ms)"
    )


def test_hundred_typical_filters_report(visit, typical) -> None:  # type: ignore[no-untyped-def]
    """Prints the median and best time of 100 typical filters per visit (target <= 10 ms),
    column conversion included, and the slowest single filter."""
    EXTRA.append(_report("the benchmark visit", visit, typical))


@pytest.mark.skipif(not SHARED.is_dir(), reason="the real LSSTCam packets are not available")
def test_hundred_typical_filters_report_real_packets(typical) -> None:  # type: ignore[no-untyped-def]
    """EXTRA, not the shared workload: the same on the 64 real packets tiled to 10,000 alerts:
    long lightcurves (~28 previous sources per alert), the hard case for lightcurve reductions."""
    EXTRA.append(
        "extra: " + _report("real packets tiled, not the shared visit", _tiled_real(), typical)
    )


# --- the helpers of issue 12 (appended): each alone as a whole filter, on the same visit ---------
NEW_HELPERS = {
    "thin, 0.5 d": 'return thin(alerts.history("psfFlux"), 0.5).count() >= 3',
    "trig, 7 calls": (
        "ds = alerts.diaSource\n    dec = radians(ds.dec)\n"
        "    x = cos(dec) * cos(radians(ds.ra))\n"
        "    return (degrees(atan2(cos(dec) * sin(radians(ds.ra)), x)) > 0) & (hypot(x, sin(dec)) > 0.5)"
    ),
    "isnull(record)": "return isnull(alerts.diaObject) | notnull(alerts.prvDiaSources)",
    "cutout_elongation": 'return cutout_elongation(alerts, "cutoutDifference", half=7) < 3',
    "rate_between inf": (
        "ds = alerts.diaSource\n    prv = alerts.prvDiaSources.psfFlux\n"
        '    return rate_between(ds.psfFlux, ds.midpointMjdTai, prv.last(), prv.last_time(), equal_times="inf") > 0'
    ),
}


def _new_helper_runner(body: str) -> InProcessRunner:
    src = f'"""One new helper."""\ndef filter(alerts):\n    {body}\n'
    return InProcessRunner([("n", compile_filter(src, "new.py"))])


@pytest.mark.parametrize("name", sorted(NEW_HELPERS))
def test_new_helper(benchmark, visit, name) -> None:  # type: ignore[no-untyped-def]
    """One filter using one of the new helpers on one visit (its columns converted in the
    round, as the first filter of a visit pays); compare with ``vectorized, 1 filter``."""
    benchmark(_run, _new_helper_runner(NEW_HELPERS[name]), visit)
    RESULTS[f"new: {name}"] = benchmark.stats.stats.median


@pytest.mark.skipif(not SHARED.is_dir(), reason="the real LSSTCam packets are not available")
def test_new_helpers_report_real_packets() -> None:
    """EXTRA: the same filters on the real packets tiled to 10,000 alerts, whose histories run
    to ~390 points: the hard case for ``thin`` (one scan step per point of the longest)."""
    batch = _tiled_real()
    for name in sorted(NEW_HELPERS):
        runner = _new_helper_runner(NEW_HELPERS[name])
        times = []
        for _ in range(9):
            (o,) = runner.run(batch)
            assert o.fault is None, o.fault
            times.append(o.seconds)
        EXTRA.append(
            f"extra, real packets tiled: new: {name}: median {statistics.median(times) * 1e3:.2f} ms, "
            f"best {min(times) * 1e3:.2f} ms per visit"
        )


def test_summary(visit, peak_memory, summaries) -> None:  # type: ignore[no-untyped-def]
    """Print alerts/s, ms per visit, the ratio to the per-alert baseline and peak memory."""
    base = RESULTS.get("per-alert, 1 filter")
    n = len(visit)
    lines = [
        f"{n} alerts (the benchmark visit), in-process, median round",
        f"{'':28s} {'alerts/s':>10s} {'ms/visit':>9s} {'x baseline':>10s}",
    ]
    for name, seconds in RESULTS.items():
        ratio = f"{base / seconds:10.0f}" if base and "1 filter" in name else f"{'-':>10s}"
        lines.append(f"{name:28s} {n / seconds:10.0f} {seconds * 1e3:9.2f} {ratio}")
    lines += EXTRA
    lines.append(peak_memory())
    print("\nevaluate\n" + "\n".join(lines))
    summaries.append(("evaluate (bench_filters.py)", lines))
