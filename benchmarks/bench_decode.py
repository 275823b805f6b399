"""Decode speed: fastavro reference vs the generated C decoder, on one realistic visit.

Workload
--------
One visit of 10,000 v11.1 alerts from ``engine.simulate.simulate_night(seed=2026)`` (~57 KB
each, three FITS cutouts, a year of lightcurve for the variables), cached under
``$MINIBROKER_CACHE/bench`` after the first run. (Without ``engine.simulate``, the 64 real
v11.1 shared packets are cycled to 10,000.) Measured on the same bytes, in one run:

- ``baseline``: ``decode_reference`` (fastavro → dicts → ``from_pylist``) on 1,000 of the
  alerts, one round (it takes ~1 s per 1,000), scaled per alert;
- ``projected``: the fast decoder with diaSource + diaObject scalars (the typical filter
  projection), reading the night block where it lies;
- ``full``: every column, lightcurves and cutouts included (cutouts are copied once into the
  large_binary columns);
- ``full, Kafka bodies``: the full schema from 10,000 separate ``bytes`` datums
  (``decode_datums``; nothing joined);
- ``2 processes``: both cores each decoding the visit (projected and full), aggregate rate.

Run on purpose (pyproject's addopts disable benchmarks by default)::

    python -m pytest benchmarks/bench_decode.py --benchmark-enable -s

The summary (alerts/s, ms per visit, ratio to the baseline) is printed at the end.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from engine import _fastdecode as fd
from engine.decode import decode_reference, unframe
from engine.schema import load_schema

ALERTS = 10_000
BASELINE_ALERTS = 1_000
SCHEMA = load_schema("11.1")
PROJECTED = [f"diaSource.{f.name}" for f in SCHEMA.arrow.field("diaSource").type] + [
    f"diaObject.{f.name}" for f in SCHEMA.arrow.field("diaObject").type
]
RESULTS: dict[str, float] = {}  # name -> seconds per alert

pytestmark = pytest.mark.skipif(not fd.available(), reason=f"fast decoder: {fd.unavailable_reason()}")


def _visit() -> tuple[memoryview, int, str]:
    """The benchmark visit's block bytes, its alert count, and where it came from."""
    try:
        from engine.night import read_night
        from engine.simulate import simulate_night
    except ImportError:
        return _shared_visit()
    root = Path(os.environ.get("MINIBROKER_CACHE") or Path.home() / ".cache" / "minibroker")
    path = root / "bench" / f"night-11.1-{ALERTS}-seed2026.avro"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        simulate_night(path, visits=1, alerts_per_visit=ALERTS, seed=2026, schema_version="11.1",
                       progress=False)
    block = next(iter(read_night(path)))
    return block.data, block.count, f"simulated night {path.name}"


def _shared_visit() -> tuple[memoryview, int, str]:
    folder = Path(os.environ.get("MINIBROKER_SHARED_ALERTS", "/work/shared/data/alerts"))
    datums = [bytes(unframe(p.read_bytes())[1]) for p in sorted((folder / "lsstcam/v11_1").glob("*.avro"))]
    return memoryview(b"".join(datums[i % len(datums)] for i in range(ALERTS))), ALERTS, "shared v11.1 x cycle"


@pytest.fixture(scope="module")
def visit() -> dict[str, object]:
    """The visit as one block and as separate datums (Kafka bodies), decoders built."""
    data, count, origin = _visit()
    batch, raw = fd.decode_block(data, count, SCHEMA, None, "bench")  # builds + warms buffers
    fd.decode_block(data, count, SCHEMA, PROJECTED, "bench")
    del batch
    datums = [bytes(r) for r in raw]  # separate objects, as a Kafka consumer hands them out
    return {"data": data, "count": count, "datums": datums, "origin": origin,
            "mb": data.nbytes / 1e6}


def _record(name: str, benchmark, count: int) -> None:  # type: ignore[no-untyped-def]
    RESULTS[name] = benchmark.stats.stats.min / count


def test_baseline_reference(benchmark, visit) -> None:  # type: ignore[no-untyped-def]
    """fastavro → dicts → from_pylist on the first 1,000 alerts (one round)."""
    datums = visit["datums"][:BASELINE_ALERTS]
    benchmark.pedantic(decode_reference, args=(datums, SCHEMA, None), rounds=1, iterations=1)
    _record("baseline (fastavro)", benchmark, len(datums))


def test_fast_projected(benchmark, visit) -> None:  # type: ignore[no-untyped-def]
    """Generated C, diaSource + diaObject scalars, from the night block."""
    benchmark.pedantic(fd.decode_block, args=(visit["data"], visit["count"], SCHEMA, PROJECTED, "b"),
                       rounds=7, iterations=1, warmup_rounds=1)
    _record("fast projected", benchmark, visit["count"])


def test_fast_full(benchmark, visit) -> None:  # type: ignore[no-untyped-def]
    """Generated C, every column (lightcurves and cutouts), from the night block."""
    benchmark.pedantic(fd.decode_block, args=(visit["data"], visit["count"], SCHEMA, None, "b"),
                       rounds=5, iterations=1, warmup_rounds=1)
    _record("fast full", benchmark, visit["count"])


def test_fast_full_no_cutouts(benchmark, visit) -> None:  # type: ignore[no-untyped-def]
    """Generated C, every column except the three cutouts."""
    cols = [n for n in SCHEMA.arrow.names if not n.startswith("cutout")]
    fd.decoder(SCHEMA, cols)
    benchmark.pedantic(fd.decode_block, args=(visit["data"], visit["count"], SCHEMA, cols, "b"),
                       rounds=5, iterations=1, warmup_rounds=1)
    _record("fast full minus cutouts", benchmark, visit["count"])


def test_fast_full_kafka_bodies(benchmark, visit) -> None:  # type: ignore[no-untyped-def]
    """Generated C, every column, from 10,000 separate bytes objects (decode_datums)."""
    benchmark.pedantic(fd.decode_datums, args=(visit["datums"], SCHEMA, None),
                       rounds=5, iterations=1, warmup_rounds=1)
    _record("fast full, Kafka bodies", benchmark, visit["count"])


def _worker(args: tuple[memoryview, int, list[str] | None, int, object, object]) -> None:
    data, count, cols, rounds, start, done = args
    fd.decode_block(data, count, SCHEMA, cols, "w")  # warm: load the decoder, map buffers
    start.wait()  # type: ignore[attr-defined]
    for _ in range(rounds):
        fd.decode_block(data, count, SCHEMA, cols, "w")
    done.put(time.perf_counter())  # type: ignore[attr-defined]


@pytest.mark.parametrize("name,cols", [("projected", PROJECTED), ("full", None)])
def test_two_processes(visit, name: str, cols: list[str] | None) -> None:  # type: ignore[no-untyped-def]
    """Two forked processes decode the visit side by side: aggregate alerts/s."""
    ctx = mp.get_context("fork")
    rounds = 6
    start, done = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=((visit["data"], visit["count"], cols, rounds, start, done),))
             for _ in range(2)]
    for p in procs:
        p.start()
    start.wait()
    t0 = time.perf_counter()
    ends = [done.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    RESULTS[f"2 processes, {name}"] = (max(ends) - t0) / (2 * rounds * visit["count"])


def test_summary(visit) -> None:  # type: ignore[no-untyped-def]
    """Print alerts/s, ms per 10,000-alert visit and the ratio to the baseline."""
    base = RESULTS.get("baseline (fastavro)")
    lines = [f"\nworkload: {visit['count']} v11.1 alerts, {visit['mb']:.0f} MB ({visit['origin']})",
             f"{'':28s} {'alerts/s':>10s} {'ms/visit':>9s} {'x baseline':>10s}"]
    for name, per_alert in RESULTS.items():
        ratio = f"{base / per_alert:10.0f}" if base else ""
        lines.append(f"{name:28s} {1 / per_alert:10.0f} {per_alert * 1e7:9.1f} {ratio}")
    print("\n".join(lines))
