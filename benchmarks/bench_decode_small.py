"""Small Kafka batches: decode cost per alert at 64, 640 and 10,000 messages, and unframing.

Workload
--------
The benchmark visit (``conftest.py``: 10,000 simulated v11.1 alerts, seed 7) as 10,000 separate
Confluent-framed ``bytes`` bodies, the way a consumer hands them out, decoded with
``decode_messages`` in batches of 64, 640 and 10,000 (engines that split a topic's partitions
see small batches), with the typical filters' projection and with every column.

Two ways, in one run:

- ``freed``: the batch is dropped after each decode, as the service does; its buffers go back
  to the decoder's pool at once and the next batch reuses them;
- ``held by a cycle`` (the *before*): each batch is kept in a reference cycle, so it is freed
  only when Python's cycle collector runs. That is what the nested, self-calling closures of the
  old Arrow assembly did to every batch: the next decodes got fresh buffers (fresh pages, ~2 µs
  each here) until the collector happened to run.

Unframing: 10,000 Confluent headers checked and stripped by the old Python loop
(``engine.alerts.wire.unframe`` per body) against the C check that ``decode_messages`` now
runs inside the decode (``decode_framed`` minus ``decode_datums`` on the same messages).

Run on purpose::

    python -m pytest benchmarks/bench_decode_small.py --benchmark-enable -s
"""

from __future__ import annotations

import time

import pytest

from engine.alerts.schema import load_schema
from engine.alerts.wire import frame, unframe
from engine.decode import _fast as fd
from engine.decode import configure, decode_messages

SCHEMA = load_schema("11.1")
SIZES = (64, 640, 10_000)
ROUNDS = 5
RESULTS: dict[str, float] = {}

pytestmark = pytest.mark.skipif(
    not fd.available(), reason=f"fast decoder: {fd.unavailable_reason()}"
)


@pytest.fixture(scope="module")
def bodies(bench_visit, bench_config) -> list[bytes]:  # type: ignore[no-untyped-def]
    """The benchmark visit as 10,000 framed message bodies; the decoder configured once, as
    the CLI does (otherwise every decode reads the settings from the environment again)."""
    configure(bench_config)
    _batch, raw = fd.decode_block(
        bench_visit.data, bench_visit.count, SCHEMA, ["diaSourceId"], "bench"
    )
    return [frame(r, SCHEMA.schema_id) for r in raw]


def _per_alert(bodies: list[bytes], size: int, columns: list[str] | None, *, cycle: bool) -> float:
    """Best of ROUNDS: seconds per alert decoding ``bodies`` in batches of ``size``."""
    chunks = [bodies[i : i + size] for i in range(0, len(bodies) - size + 1, size)]
    decode_messages(chunks[0], columns)  # build the decoder, size its buffers
    best = float("inf")
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for chunk in chunks:
            visit = decode_messages(chunk, columns)
            if cycle:
                holder: list[object] = [visit]
                holder.append(holder)  # freed only by the cycle collector, as before the fix
        best = min(best, (time.perf_counter() - t0) / (len(chunks) * size))
    return best


@pytest.mark.parametrize("projection", ["projected", "full"])
def test_batch_sizes(bodies, projected_columns, projection: str) -> None:  # type: ignore[no-untyped-def]
    """Per-alert decode time by batch size, freed at once vs held until the cycle collector."""
    columns = None if projection == "full" else sorted(projected_columns or [])
    for size in SIZES:
        for cycle in (True, False):
            way = "held by a cycle (before)" if cycle else "freed (now)"
            RESULTS[f"{projection}, {size:>6} per batch, {way}"] = _per_alert(
                bodies, size, columns, cycle=cycle
            )


def test_unframing(bodies, projected_columns) -> None:  # type: ignore[no-untyped-def]
    """10,000 headers: the Python loop vs the check inside the C decode."""
    columns = sorted(projected_columns or [])
    datums = [unframe(b)[1] for b in bodies]
    dec = fd.decoder(SCHEMA, columns)
    best_loop = best_c = float("inf")
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for body in bodies:
            unframe(body)
        best_loop = min(best_loop, time.perf_counter() - t0)
        t0 = time.perf_counter()
        dec.decode_framed(bodies, SCHEMA.schema_id, "bench")
        t1 = time.perf_counter()
        dec.decode_datums(datums, "bench")
        t2 = time.perf_counter()
        best_c = min(best_c, max(0.0, (t1 - t0) - (t2 - t1)))
    RESULTS["unframe 10,000, Python loop (before)"] = best_loop / len(bodies)
    RESULTS["unframe 10,000, in the C decode (now)"] = best_c / len(bodies)


def test_summary(summaries) -> None:  # type: ignore[no-untyped-def]
    """Print µs per alert and the before/after ratio of each batch size."""
    lines = ["10,000 v11.1 alerts as framed bodies; best of 5 rounds; µs per alert"]
    for name, per_alert in RESULTS.items():
        lines.append(f"  {name:<48s} {per_alert * 1e6:8.2f}")
    for projection in ("projected", "full"):
        for size in SIZES:
            before = RESULTS.get(f"{projection}, {size:>6} per batch, held by a cycle (before)")
            now = RESULTS.get(f"{projection}, {size:>6} per batch, freed (now)")
            big = RESULTS.get(f"{projection}, {SIZES[-1]:>6} per batch, freed (now)")
            if before and now and big:
                lines.append(
                    f"  {projection}, {size:>6} per batch: before/now {before / now:4.1f}x; "
                    f"now vs 10,000 per batch {now / big:4.2f}x per alert"
                )
    summaries.append(("small batches", lines))
    print("\n".join(lines))
