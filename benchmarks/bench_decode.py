"""Decode speed: fastavro reference vs the generated C decoder, on the benchmark visit.

Workload
--------
The benchmark visit shared by every file here (``conftest.py``: :func:`engine.local.bench.bench_block`,
one simulated v11.1 visit of 10,000 alerts, seed 7, ~57 KB each with three FITS cutouts and up
to a year of lightcurve; generated once into ``~/.cache/minibroker/nights``). Measured on the
same bytes, in one run:

- ``baseline``: ``decode_reference`` (fastavro → dicts → ``from_pylist``, every column) on the
  first 1,000 alerts, one round (it takes ~1 s per 1,000), scaled per alert;
- ``projected``: the fast decoder with the columns the 100 typical filters can read plus the
  delivery columns (``engine.evaluate.columns_needed``: what the engine decodes in service),
  reading the block where it lies;
- ``full``: every column, lightcurves and cutouts included (cutouts are copied once into the
  large_binary columns); ``full minus cutouts`` leaves the three cutouts out;
- ``full, Kafka bodies``: the full schema from 10,000 separate ``bytes`` datums
  (``decode_datums``; nothing joined);
- ``N processes``: 1 and then 2 forked processes each decoding the visit 6 times side by side
  (projected and full); aggregate alerts/s from the wall time, so 2 vs 1 is the scaling with
  cores.

Run on purpose (pyproject's addopts disable benchmarks by default)::

    python -m pytest benchmarks/bench_decode.py --benchmark-enable -s

The summary (alerts/s, ms per visit, ratio to the baseline, scaling, peak memory) is printed
at the end, and again in the run's terminal summary.
"""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest

from engine.alerts.schema import load_schema
from engine.decode import _fast as fd
from engine.decode import decode_reference

BASELINE_ALERTS = 1_000
PROCESS_ROUNDS = 6
SCHEMA = load_schema("11.1")
RESULTS: dict[str, float] = {}  # name -> seconds per alert

pytestmark = pytest.mark.skipif(
    not fd.available(), reason=f"fast decoder: {fd.unavailable_reason()}"
)


@pytest.fixture(scope="module")
def visit(bench_visit, projected_columns) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """The visit as one block and as separate datums (Kafka bodies), decoders built."""
    data, count = bench_visit.data, bench_visit.count
    projected = sorted(projected_columns) if projected_columns is not None else None
    batch, raw = fd.decode_block(data, count, SCHEMA, None, "bench")  # builds + warms buffers
    fd.decode_block(data, count, SCHEMA, projected, "bench")
    del batch
    datums = [bytes(r) for r in raw]  # separate objects, as a Kafka consumer hands them out
    return {
        "data": data,
        "count": count,
        "datums": datums,
        "projected": projected,
        "mb": data.nbytes / 1e6,
    }


def _record(name: str, benchmark, count: int) -> None:  # type: ignore[no-untyped-def]
    RESULTS[name] = benchmark.stats.stats.min / count


def test_baseline_reference(benchmark, visit) -> None:  # type: ignore[no-untyped-def]
    """fastavro → dicts → from_pylist on the first 1,000 alerts (one round)."""
    datums = visit["datums"][:BASELINE_ALERTS]
    benchmark.pedantic(decode_reference, args=(datums, SCHEMA, None), rounds=1, iterations=1)
    _record("baseline (fastavro)", benchmark, len(datums))


def test_fast_projected(benchmark, visit) -> None:  # type: ignore[no-untyped-def]
    """Generated C, the typical filters' columns, from the visit's block."""
    benchmark.pedantic(
        fd.decode_block,
        args=(visit["data"], visit["count"], SCHEMA, visit["projected"], "b"),
        rounds=7,
        iterations=1,
        warmup_rounds=1,
    )
    _record("fast projected", benchmark, visit["count"])


def test_fast_full(benchmark, visit) -> None:  # type: ignore[no-untyped-def]
    """Generated C, every column (lightcurves and cutouts), from the visit's block."""
    benchmark.pedantic(
        fd.decode_block,
        args=(visit["data"], visit["count"], SCHEMA, None, "b"),
        rounds=5,
        iterations=1,
        warmup_rounds=1,
    )
    _record("fast full", benchmark, visit["count"])


def test_fast_full_no_cutouts(benchmark, visit) -> None:  # type: ignore[no-untyped-def]
    """Generated C, every column except the three cutouts."""
    cols = [n for n in SCHEMA.arrow.names if not n.startswith("cutout")]
    fd.decoder(SCHEMA, cols)
    benchmark.pedantic(
        fd.decode_block,
        args=(visit["data"], visit["count"], SCHEMA, cols, "b"),
        rounds=5,
        iterations=1,
        warmup_rounds=1,
    )
    _record("fast full minus cutouts", benchmark, visit["count"])


def test_fast_full_kafka_bodies(benchmark, visit) -> None:  # type: ignore[no-untyped-def]
    """Generated C, every column, from 10,000 separate bytes objects (decode_datums)."""
    benchmark.pedantic(
        fd.decode_datums,
        args=(visit["datums"], SCHEMA, None),
        rounds=5,
        iterations=1,
        warmup_rounds=1,
    )
    _record("fast full, Kafka bodies", benchmark, visit["count"])


def _worker(args: tuple[memoryview, int, list[str] | None, int, object, object]) -> None:
    data, count, cols, rounds, start, done = args
    fd.decode_block(data, count, SCHEMA, cols, "w")  # warm: load the decoder, map buffers
    start.wait()  # type: ignore[attr-defined]
    for _ in range(rounds):
        fd.decode_block(data, count, SCHEMA, cols, "w")
    done.put(time.perf_counter())  # type: ignore[attr-defined]


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("name", ["projected", "full"])
def test_processes(visit, name: str, processes: int) -> None:  # type: ignore[no-untyped-def]
    """1 or 2 forked processes decode the visit side by side: aggregate alerts/s."""
    cols = visit["projected"] if name == "projected" else None
    ctx = mp.get_context("fork")
    start, done = ctx.Barrier(processes + 1), ctx.Queue()
    job = (visit["data"], visit["count"], cols, PROCESS_ROUNDS, start, done)
    procs = [ctx.Process(target=_worker, args=(job,)) for _ in range(processes)]
    for p in procs:
        p.start()
    start.wait()
    t0 = time.perf_counter()
    ends = [done.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    RESULTS[f"{processes} process{'es' if processes > 1 else ''}, {name}"] = (max(ends) - t0) / (
        processes * PROCESS_ROUNDS * visit["count"]
    )


def test_summary(visit, peak_memory, summaries) -> None:  # type: ignore[no-untyped-def]
    """Print alerts/s, ms per 10,000-alert visit, the ratio to the baseline and peak memory."""
    base = RESULTS.get("baseline (fastavro)")
    lines = [
        f"{visit['count']} v11.1 alerts, {visit['mb']:.0f} MB (the benchmark visit); "
        "best round; N processes: aggregate",
        f"{'':28s} {'alerts/s':>10s} {'ms/visit':>9s} {'x baseline':>10s}",
    ]
    for name, per_alert in RESULTS.items():
        ratio = f"{base / per_alert:10.0f}" if base else ""
        lines.append(
            f"{name:28s} {1 / per_alert:10.0f} {per_alert * visit['count'] * 1e3:9.1f} {ratio}"
        )
    for name in ("projected", "full"):
        one, two = RESULTS.get(f"1 process, {name}"), RESULTS.get(f"2 processes, {name}")
        if one and two:
            lines.append(f"scaling, {name}: 2 processes give {one / two:.2f}x the alerts/s of 1")
    lines.append(peak_memory())
    print("\ndecode\n" + "\n".join(lines))
    summaries.append(("decode (bench_decode.py)", lines))
