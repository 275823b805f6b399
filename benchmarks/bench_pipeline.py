"""Whole visits, end to end: the design card's path (baseline) against ours, in one run.

Workload
--------
The benchmark visit shared by every file here (``conftest.py``: :func:`engine.local.bench.bench_block`,
one simulated v11.1 visit of 10,000 alerts, seed 7, cached after the first run; the 40,000-alert
visit repeats its block four times) and 100 typical filters owned by 100 users
(:func:`engine.local.bench.typical_filters`, ~15 matches each per visit, as the design expects).
One visit runs from its raw block (as received) to the last match written to a private Redis
(:class:`engine.local.redis_server.PrivateRedis`, never a shared server):

- ``baseline``: fastavro → dicts → ``from_pylist`` for the whole visit (every column), every
  filter in this process, then publish (the design card's path; one round after a warm-up on
  another batch, it takes ~10 s);
- ``ours``: the generated C decoder projected to the filters' columns, the filters in the
  isolated worker pool (long-lived per-user workers; ``workers=2`` as configured by default,
  and ``workers=1`` to show how the pool scales with cores), then publish; a 40,000-alert
  visit too. A new pool's first visit (forking and compiling 100 workers) is reported apart;
- ``publish only``: the 100 filters' matches of the visit (computed once, in-process) written
  by :class:`engine.sinks.streams.Publisher`, the full packet with each.

Each visit is also split into its parts (decode, evaluate, publish), so the baseline and ours
compare stage by stage. Each round publishes afresh (the server is flushed between rounds,
outside the timing). Run on purpose::

    python -m pytest benchmarks/bench_pipeline.py --benchmark-enable -s

The summary prints ms per visit (median, p95), alerts/s, the ratio to the baseline, the
scaling from 1 to 2 workers, and peak memory (the engine's, and the pool's from ``/proc``).
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import pytest
import redis

from engine.decode import VisitBatch, _split_block, decode_block, decode_reference
from engine.evaluate import Evaluator
from engine.local.bench import bench_block
from engine.local.redis_server import PrivateRedis
from engine.sinks.streams import Publisher

PARTS = ("decode", "evaluate", "publish")
RESULTS: dict[str, dict[str, list[float]]] = {}  # row -> part (or "total") -> seconds per round
ALERTS: dict[str, int] = {}  # row -> alerts per visit
NOTES: list[str] = []


@pytest.fixture(scope="module")
def client():  # type: ignore[no-untyped-def]
    """A client of a private Redis started for this file."""
    with PrivateRedis() as server:
        yield redis.Redis.from_url(server.url)


def _visit(
    block, schema, active, columns, publisher, evaluator, client, *, fast: bool
) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """One visit from its raw block to its last match published; seconds per part."""
    client.flushdb()  # each round publishes afresh instead of finding duplicates
    t0 = time.perf_counter()
    if fast:
        visit = decode_block(block, schema, columns)
    else:
        raw = _split_block(block, schema)
        visit = VisitBatch(block.visit, schema, decode_reference(raw, schema), raw)
    t1 = time.perf_counter()
    outcomes = evaluator.evaluate(visit.batch)
    t2 = time.perf_counter()
    report = publisher.publish(visit, active, outcomes)
    t3 = time.perf_counter()
    faults = [o.fault for o in outcomes if o.fault is not None]
    assert not faults, f"a benchmark filter failed, so the figures would be wrong: {faults[0]}"
    assert report.total > 0
    return {"decode": t1 - t0, "evaluate": t2 - t1, "publish": t3 - t2, "total": t3 - t0}


def _keep(row: str, alerts: int, rounds: list[dict[str, float]]) -> None:
    RESULTS[row] = {k: [r[k] for r in rounds] for k in (*PARTS, "total")}
    ALERTS[row] = alerts


def test_baseline_visit(
    bench_config, bench_visit, schema, typical_active, visit_projected, client
) -> None:  # type: ignore[no-untyped-def]
    """fastavro + from_pylist decode, filters in-process, publish: one 10,000-alert visit."""
    config = dataclasses.replace(bench_config, isolation="inprocess")
    publisher = Publisher(client, config)
    with Evaluator(typical_active, config) as ev:
        # Warm lazy imports, the filters' helpers and the server's script on another batch, as
        # our path's first visit is set apart: only the decoder (and its batch) differs.
        publisher.publish(visit_projected, typical_active, ev.evaluate(visit_projected.batch))
        parts = _visit(bench_visit, schema, typical_active, None, publisher, ev, client, fast=False)
    _keep("baseline, 10k", bench_visit.count, [parts])


def test_publish_only(benchmark, bench_config, visit_projected, typical_active, client) -> None:  # type: ignore[no-untyped-def]
    """The 100 filters' matches of one visit written to Redis (flushed before each round)."""
    config = dataclasses.replace(bench_config, isolation="inprocess")
    with Evaluator(typical_active, config) as ev:
        outcomes = ev.evaluate(visit_projected.batch)
    publisher = Publisher(client, bench_config)
    reports = []

    def flush() -> None:  # outside the timing; pytest-benchmark wants None from a setup
        client.flushdb()

    benchmark.pedantic(
        lambda: reports.append(publisher.publish(visit_projected, typical_active, outcomes)),
        setup=flush,
        rounds=7,
        iterations=1,
        warmup_rounds=1,
    )
    matches = reports[-1].total
    mb = sum(len(visit_projected.raw[r]) for o in outcomes for r in o.mask.nonzero()[0]) / 1e6
    RESULTS["publish only, 10k"] = {"publish": list(benchmark.stats.stats.data)}
    ALERTS["publish only, 10k"] = visit_projected.batch.num_rows
    NOTES.append(
        f"publish: {matches} matches per visit ({matches / len(outcomes):.0f} per filter), "
        f"{mb:.0f} MB of packets"
    )


@pytest.mark.parametrize(
    "size,workers,rounds",
    [(10_000, 2, 9), (10_000, 1, 7), (40_000, 2, 4)],
    ids=["10k-workers2", "10k-workers1", "40k-workers2"],
)
def test_our_visit(
    benchmark,
    bench_config,
    schema,
    typical_active,
    projected_columns,
    client,  # type: ignore[no-untyped-def]
    pool_memory,
    size: int,
    workers: int,
    rounds: int,
) -> None:
    """Fast projected decode, 100 filters in the worker pool, publish."""
    config = dataclasses.replace(bench_config, workers=workers)
    block = bench_block(config, size)
    publisher = Publisher(client, config)
    row = f"ours, {size // 1000}k, workers={workers}"
    with Evaluator(typical_active, config) as ev:

        def one() -> dict[str, float]:
            return _visit(
                block, schema, typical_active, projected_columns, publisher, ev, client, fast=True
            )

        first = one()  # starts the workers: reported on its own
        kept: list[dict[str, float]] = []
        benchmark.pedantic(lambda: kept.append(one()), rounds=rounds, iterations=1)
        if size == 10_000 and workers == 2:
            NOTES.append(f"pool while running it ({row}): {pool_memory()}")
    _keep(row, size, kept)
    NOTES.append(
        f"{row}: a new pool's first visit took {first['total'] * 1e3:.0f} ms "
        f"(evaluate {first['evaluate'] * 1e3:.0f} ms: forking and compiling 100 workers)"
    )


def _p95(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]


def test_summary(peak_memory, summaries) -> None:  # type: ignore[no-untyped-def]
    """Prints the figures of this run (needs the tests above in the same run)."""
    base = RESULTS.get("baseline, 10k")
    if not base or "ours, 10k, workers=2" not in RESULTS:
        pytest.skip("run the whole file: the summary compares figures of the same run")
    per_alert = {part: base[part][0] / ALERTS["baseline, 10k"] for part in (*PARTS, "total")}
    lines = [
        "decode -> evaluate (100 filters) -> publish; median (and p95) of the rounds;",
        "x baseline = the baseline's time per alert / this row's, stage by stage",
    ]
    lines.append(
        f"{'':26s} {'stage':>8s} {'ms/visit':>9s} {'p95':>8s} {'alerts/s':>10s} {'x baseline':>10s}"
    )
    for row, parts in RESULTS.items():
        name = row
        for part in ("total", *PARTS):
            if part not in parts:
                continue
            med, p95 = statistics.median(parts[part]), _p95(parts[part])
            ratio = per_alert[part] / (med / ALERTS[row])
            lines.append(
                f"{name:26s} {'visit' if part == 'total' else part:>8s} {med * 1e3:9.1f} "
                f"{p95 * 1e3:8.1f} {ALERTS[row] / med:10.0f} {ratio:10.1f}"
            )
            name = ""
    one, two = RESULTS.get("ours, 10k, workers=1"), RESULTS.get("ours, 10k, workers=2")
    if one and two:
        for part in ("total", "evaluate"):
            gain = statistics.median(one[part]) / statistics.median(two[part])
            lines.append(
                f"scaling, {'whole visit' if part == 'total' else 'evaluate'}: "
                f"workers=2 is {gain:.2f}x as fast as workers=1"
            )
    lines += NOTES
    lines.append(peak_memory())
    print("\nwhole visit\n" + "\n".join(lines))
    summaries.append(("whole visit (bench_pipeline.py)", lines))
