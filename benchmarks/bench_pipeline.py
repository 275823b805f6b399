"""Whole visits, end to end: the design card's path (baseline) against ours, in one run.

Workload
--------
The benchmark visit of :mod:`engine.bench` (one simulated v11.1 visit of 10,000 alerts,
seed 7, cached after the first run) and 100 typical filters owned by 100 users
(:func:`engine.bench.typical_filters`, ~15 matches each per visit, as the design expects).
One visit runs from its raw block (as received) to the last match written to a private Redis:

- ``baseline``: fastavro → dicts → ``from_pylist`` for the whole visit, every filter in this
  process, then publish (the design card's path; one round, it takes ~5 s);
- ``ours``: the generated C decoder projected to the filters' columns, the filters in the
  isolated worker pool (long-lived per-user workers), then publish; a 40,000-alert visit too.

Each round publishes afresh (the server is flushed between rounds, outside the timing).
Run on purpose::

    python -m pytest benchmarks/bench_pipeline.py --benchmark-enable -s

The summary prints ms per visit (median, p95), alerts/s, the ratio to the baseline and the
engine's peak memory.
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import time

import pytest
import redis

from engine.bench import bench_block, typical_filters
from engine.config import load_config
from engine.decode import VisitBatch, _split_block, decode_block, decode_reference
from engine.evaluate import Evaluator, columns_needed
from engine.publish import Publisher
from engine.registry import ActiveFilter
from engine.schema import load_schema
from engine.server import PrivateRedis

SCHEMA = load_schema("11.1")
CONFIG = load_config(env={})
RESULTS: dict[str, list[float]] = {}


@pytest.fixture(scope="module")
def setup():
    """The visit block, the 100 filters and a private Redis client."""
    pairs = typical_filters(100)
    active = [ActiveFilter(key.split("/")[0], c) for key, c in pairs]
    with PrivateRedis() as server:
        yield bench_block(CONFIG), active, redis.Redis.from_url(server.url)


def _visit(block, active, client, config, *, fast: bool, evaluator: Evaluator) -> float:
    client.flushdb()
    t0 = time.perf_counter()
    if fast:
        visit = decode_block(block, SCHEMA, columns_needed(active, SCHEMA))
    else:
        raw = _split_block(block, SCHEMA)
        visit = VisitBatch(block.visit, SCHEMA, decode_reference(raw, SCHEMA), raw)
    outcomes = evaluator.evaluate(visit.batch)
    Publisher(client, config).publish(visit, active, outcomes)
    return time.perf_counter() - t0


def test_baseline_visit(setup) -> None:
    """fastavro + from_pylist decode, filters in-process, publish: one 10,000-alert visit."""
    block, active, client = setup
    config = dataclasses.replace(CONFIG, isolation="inprocess")
    with Evaluator(active, config) as ev:
        RESULTS["baseline 10k"] = [_visit(block, active, client, config, fast=False, evaluator=ev)]


@pytest.mark.parametrize("size", [10_000, 40_000])
def test_our_visit(benchmark, setup, size: int) -> None:
    """Fast projected decode, 100 filters in the worker pool, publish."""
    block, active, client = setup
    big = bench_block(CONFIG, size)
    with Evaluator(active, CONFIG) as ev:
        _visit(big, active, client, CONFIG, fast=True, evaluator=ev)  # start the workers
        times: list[float] = []
        benchmark.pedantic(lambda: times.append(_visit(big, active, client, CONFIG, fast=True, evaluator=ev)),
                           rounds=9 if size == 10_000 else 4, iterations=1)
    RESULTS[f"ours {size // 1000}k"] = times


def test_summary() -> None:
    """Prints the figures of this run (needs the tests above in the same run)."""
    base = RESULTS.get("baseline 10k")
    if not base or "ours 10k" not in RESULTS:
        pytest.skip("run the whole file: the summary compares figures of the same run")
    print("\nwhole visit, 100 filters, decode -> evaluate -> publish")
    print(f"{'path':<14} {'median ms':>10} {'p95 ms':>8} {'alerts/s':>10} {'x baseline':>11}")
    for name, times in RESULTS.items():
        alerts = 40_000 if "40k" in name else 10_000
        med = statistics.median(times)
        p95 = sorted(times)[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        ratio = (base[0] / (med * 10_000 / alerts))
        print(f"{name:<14} {med * 1e3:>10.1f} {p95 * 1e3:>8.1f} {alerts / med:>10.0f} {ratio:>10.1f}x")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory of the engine process: {peak:.0f} MB")
