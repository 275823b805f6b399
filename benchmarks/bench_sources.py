"""Sources: opening a night in each form a scientist has alerts in, to visits ready to decode.

Workload: one simulated v11.1 night of 2 visits x 1000 alerts (seed 7, cutouts included, ~125
MB), written by ``minibroker simulate`` (the fast form: one block per visit, read where it
lies), then rewritten with fastavro as one Avro container (null and deflate codecs) and as a
directory of 2000 Kafka message bodies. Each figure is the median wall time of
``open_night(path)`` plus walking every block, over ROUNDS runs. The baseline in the same run
is what the pipeline does next with every visit anyway: decoding it in full with the engine's
decoder (the generated C one when a compiler is present).

Run: ``python -m pytest benchmarks/bench_sources.py --benchmark-enable -s``.
"""

from __future__ import annotations

import io
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import fastavro
import pytest

from engine.alerts.wire import frame
from engine.decode import decode_block
from engine.local.simulate import simulate_night
from engine.sources import open_night

ROUNDS = 3


def _open(path: Path) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "slower than a minibroker night": measured here
        return sum(b.count for b in open_night(path).blocks())


def measure() -> list[str]:
    """The figures, as summary lines."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        native = root / "night.avro"
        simulate_night(native, visits=2, alerts_per_visit=1000, seed=7, progress=False)
        night = open_night(native)
        datums = []
        for block in night.blocks():  # split each block with the schema, as a consumer would
            bio = io.BytesIO(block.data)
            for _ in range(block.count):
                start = bio.tell()
                fastavro.schemaless_reader(bio, night.schema.avro, night.schema.avro)
                datums.append(bytes(block.data[start : bio.tell()]))
        with open(native, "rb") as fo:
            records = list(fastavro.reader(fo))
        forms = {"minibroker night (blocks in place)": native}
        for codec in ("null", "deflate"):
            path = root / f"container-{codec}.avro"
            with open(path, "wb") as fo:
                fastavro.writer(fo, fastavro.parse_schema(night.schema.avro), records, codec=codec)
            forms[f"Avro container, {codec} codec"] = path
        folder = root / "packets"
        folder.mkdir()
        for i, datum in enumerate(datums):
            (folder / f"{i:05d}.avro").write_bytes(frame(datum, night.schema.schema_id))
        forms["directory of Kafka message bodies"] = folder
        timings: dict[str, list[float]] = {"decode every visit in full (baseline)": []}
        blocks = list(night.blocks())
        decode_block(blocks[0], night.schema)  # build (or load) the decoder outside the timing
        for _ in range(ROUNDS):
            start = time.perf_counter()
            for block in blocks:
                decode_block(block, night.schema)
            timings["decode every visit in full (baseline)"].append(time.perf_counter() - start)
        for name, path in forms.items():
            runs = []
            for _ in range(ROUNDS):
                start = time.perf_counter()
                assert _open(path) == len(datums)
                runs.append(time.perf_counter() - start)
            timings[name] = runs
    base = statistics.median(timings["decode every visit in full (baseline)"])
    lines = [
        f"{len(datums)} simulated alerts in 2 visits; {ROUNDS} rounds",
        f"{'':40s} {'s':>7s} {'alerts/s':>9s} {'x baseline':>10s}",
    ]
    for name, runs in timings.items():
        med = statistics.median(runs)
        lines.append(f"{name:40s} {med:7.3f} {len(datums) / med:9.0f} {med / base:10.2f}")
    return lines


def test_sources(benchmark, summaries) -> None:  # type: ignore[no-untyped-def]
    """Print the source figures (only with ``--benchmark-enable``)."""
    if benchmark.disabled:
        pytest.skip("run with --benchmark-enable")
    lines = benchmark.pedantic(measure, rounds=1, iterations=1)
    print("\nSources\n" + "\n".join(lines))
    summaries.append(("Sources (bench_sources.py)", lines))


if __name__ == "__main__":
    print("\n".join(measure()))
