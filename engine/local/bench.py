"""``minibroker bench``: the speed figures, measured quickly in one run on this machine.

The workload (shared with ``benchmarks/``): one simulated v11.1 visit of 10,000 alerts (seed 7,
generated once and cached), a 40,000-alert visit made of that visit's block repeated four times,
and 100 typical filters (:func:`typical_filters`: cuts, flags, photometry, sky, lightcurve
reductions) owned by 100 different users. Every figure is measured in the same run, so ratios
to the baseline hold on a noisy, shared machine.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.alerts.schema import load_schema
from engine.config import Config
from engine.errors import MinibrokerError
from engine.sources.night import NightBlock, read_night

if TYPE_CHECKING:
    import redis

    from engine.alerts.schema import AlertSchema
    from engine.registry import ActiveFilter

__all__ = ["TYPICAL_FILTERS", "bench_block", "measure", "typical_filters"]

# Bodies of "typical" filters: a quality cut and a science condition each (scalar cuts, flags,
# photometry, sky, lightcurve reductions), selective as the design expects (~0.1-0.5% of a
# visit). ``ds`` is ``alerts.diaSource``; {a} (5-11) and {b} (1-9) vary the thresholds.
TYPICAL_FILTERS = (
    "return (ds.snr > 1{b}0) & (ds.reliability > 0.9) & none_set(ds.pixelFlags_bad, ds.pixelFlags_cr, null=True)",
    "return none_set(ds.pixelFlags_bad, ds.pixelFlags_edge, ds.pixelFlags_saturated, null=True) & (ds.snr > 1{b}0) & (ds.reliability > 0.8) & (fill(ds.extendedness, 0) > 0.{b})",
    "return (mag_from_flux(ds.psfFlux) < 19.{b}) & ~ds.isDipole & (ds.reliability > 0.8)",
    "return (abs(sky.galactic_latitude(ds.ra, ds.dec)) > {a}) & (ds.snr > 1{b}0) & (ds.reliability > 0.8)",
    "return (alerts.prvDiaSources.psfFlux.count() >= 4{b}) & (ds.snr > 1{b}0) & (ds.reliability > 0.8)",
    "return (alerts.history('psfFlux').max() > {a}0000) & (ds.reliability > 0.8) & (ds.snr > 1{b}0)",
    "return (alerts.prvDiaSources.psfFlux.in_band(ds.band).last() < ds.psfFlux * 0.{b}) & (ds.snr > 1{b}0) & (ds.reliability > 0.8)",
    "return (days_since_first_detection(alerts) < 2) & (ds.snr > 1{a}) & (ds.reliability > 0.8) & isnull(alerts.ssSource.ssObjectId)",
    "return (alerts.diaSourceId % 9{b}7 == 0) & (ds.reliability > 0.5)",
    "return (alerts.history('psfFlux').std() > alerts.history('psfFlux').mean() * {b}) & (ds.reliability > 0.8) & (ds.snr > 1{b}0)",
)


def typical_filters(n: int = 100, users: int | None = None) -> list[tuple[str, Any]]:
    """``n`` compiled typical filters as ``("user/name", CompiledFilter)`` pairs, spread over
    ``users`` owners (default: one owner each)."""
    from sandbox import compile_filter

    users = users or n
    out = []
    for k in range(n):
        body = TYPICAL_FILTERS[k % len(TYPICAL_FILTERS)].format(a=5 + k % 7, b=1 + k % 9)
        src = f'"""Typical filter {k}."""\ndef filter(alerts):\n    ds = alerts.diaSource\n    {body}\n'
        out.append((f"user{k % users}/typical{k}", compile_filter(src, f"typical{k}.py")))
    return out


def bench_block(config: Config, alerts: int = 10_000, *, progress: bool = False) -> NightBlock:
    """The benchmark visit: ``alerts`` alerts (a multiple of 10,000), generated once and cached.

    Larger visits repeat the 10,000-alert block, which costs the decoder and the filters the
    same as distinct alerts would.
    """
    from engine.local.simulate import simulate_night

    path = config.cache_dir / "nights" / "bench-v11.1-1x10000-seed7.avro"
    if not path.exists():
        simulate_night(path, visits=1, alerts_per_visit=10_000, seed=7, progress=progress)
    block = next(iter(read_night(path)))
    copies = max(1, alerts // block.count)
    if copies == 1:
        return block
    return NightBlock(block.visit, block.count * copies, memoryview(bytes(block.data) * copies))


def _best_rate(fn: Callable[[], object], alerts: int, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return alerts / min(times)


def _p95(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]


def measure(
    config: Config, *, rounds: int = 5, say: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run every measurement once and return the figures (see ``minibroker bench --help``)."""
    import redis

    from engine.decode import decode_block, decode_reference
    from engine.decode.batch import _split_block
    from engine.evaluate import columns_needed
    from engine.local.redis_server import PrivateRedis
    from engine.registry import ActiveFilter
    from sandbox import FilterKey, InProcessRunner

    say = say or (lambda text: print(text, file=sys.stderr))
    schema = load_schema("11.1")
    say("preparing the 10,000-alert benchmark visit (generated once, then cached)")
    block = bench_block(config, progress=True)
    n = block.count
    pairs = typical_filters(100)
    active = [ActiveFilter(FilterKey.parse(key).owner, compiled) for key, compiled in pairs]
    columns = columns_needed(active, schema)
    figures: dict[str, Any] = {"alerts_per_visit": n, "filters": len(pairs)}

    say("baseline: fastavro -> dicts -> from_pylist on 1,000 alerts")
    datums = _split_block(block, schema)[:1000]
    figures["baseline_alerts_per_s"] = round(
        _best_rate(lambda: decode_reference(datums, schema), 1000, 2)
    )

    say("decoding: projected to the filters' columns, and full")
    figures["decode_projected_alerts_per_s"] = round(
        _best_rate(lambda: decode_block(block, schema, columns), n, rounds)
    )
    figures["decode_full_alerts_per_s"] = round(
        _best_rate(lambda: decode_block(block, schema), n, rounds)
    )
    figures["decode_ratio_to_baseline"] = round(
        figures["decode_projected_alerts_per_s"] / figures["baseline_alerts_per_s"], 1
    )

    say("evaluating 100 typical filters in-process")
    batch = decode_block(block, schema, columns).batch
    runner = InProcessRunner(pairs)
    runner.run(batch)  # compile and warm the helpers' caches once
    evals = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        runner.run(batch)
        evals.append(time.perf_counter() - t0)
    figures["evaluate_100_filters_ms"] = round(1000 * statistics.median(evals), 1)

    say("1,000 users of one typical filter each: in-process, and through the worker pool")
    figures.update(scaling(block, schema, 1000, rounds))

    with PrivateRedis() as server:
        client = redis.Redis.from_url(server.url)
        for label, size, visits in (
            ("10k", n, rounds + 3),
            ("40k", 4 * n, max(3, rounds // 2 + 1)),
        ):
            say(f"whole visits of {size} alerts: decode + 100 filters in the worker pool + publish")
            big = bench_block(config, size)
            first, totals, parts = _visits(big, schema, active, config, client, visits)
            figures[f"visit_first_ms_{label}"] = round(1000 * first, 1)
            figures[f"visit_p95_ms_{label}"] = round(1000 * _p95(totals), 1)
            figures[f"visit_median_ms_{label}"] = round(1000 * statistics.median(totals), 1)
            figures[f"visit_parts_median_ms_{label}"] = {
                k: round(1000 * statistics.median(v), 1) for k, v in parts.items()
            }
    # The engine process only: a forked worker's own peak would count the pages it shares.
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    figures["cores"] = len(os.sched_getaffinity(0))
    return figures


def scaling(
    block: NightBlock, schema: AlertSchema, users: int, rounds: int = 5
) -> dict[str, float]:
    """``users`` users of one typical filter each over one visit: the same filters in-process
    and through the worker pool (workers started and warmed first, all kept between visits),
    as median ms per visit, plus the pool's start (fork, harden and compile every worker) and
    first visit."""
    from engine.alerts.schema import project_schema
    from engine.decode import decode_block
    from engine.evaluate import columns_needed
    from engine.registry import ActiveFilter
    from sandbox import FilterKey, InProcessRunner
    from sandbox.pool import WorkerPool

    pairs = typical_filters(users, users)
    active = [ActiveFilter(FilterKey.parse(key).owner, compiled) for key, compiled in pairs]
    columns = columns_needed(active, schema)
    batch = decode_block(block, schema, columns).batch

    def median_ms(run: Callable[[Any], object]) -> float:
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            run(batch)
            times.append(time.perf_counter() - t0)
        return round(1000 * statistics.median(times), 1)

    runner = InProcessRunner(pairs)
    runner.run(batch)
    out = {f"inprocess_{users}_filters_ms": median_ms(runner.run)}
    t0 = time.perf_counter()
    # The service's default number of idle workers: it must keep every user's worker here.
    idle = Config().idle_workers
    with WorkerPool(pairs, budget_s=2.0, max_idle_workers=idle) as pool:
        pool.warm(project_schema(schema.arrow, columns))
        out[f"pool_{users}_users_start_ms"] = round(1000 * (time.perf_counter() - t0), 1)
        t0 = time.perf_counter()
        pool.run(batch)
        out[f"pool_{users}_users_first_ms"] = round(1000 * (time.perf_counter() - t0), 1)
        out[f"pool_{users}_users_ms"] = median_ms(pool.run)
    return out


def _visits(
    block: NightBlock,
    schema: AlertSchema,
    active: list[ActiveFilter],
    config: Config,
    client: redis.Redis,
    visits: int,
) -> tuple[float, list[float], dict[str, list[float]]]:
    """Run ``visits`` visits end to end through the service's own pipeline; return the first
    visit's time (workers starting), the later visits' times and their parts."""
    from engine.evaluate import Evaluator
    from engine.service.pipeline import run_visits
    from engine.sinks.streams import Publisher

    def flush(*_: object) -> None:
        client.flushdb()  # after each visit's timing: the next one publishes afresh, not duplicates

    flush()
    with Evaluator(active, config) as evaluator:
        report = run_visits(
            [block] * visits, schema, active, evaluator, Publisher(client, config), on_visit=flush
        )
    for vr in report.visits:
        if vr.faults:
            raise MinibrokerError(
                f"a benchmark filter failed, so the figures would be wrong: {next(iter(vr.faults.values()))}"
            )
    first, *rest = report.visits  # the first visit includes starting the workers: reported alone
    parts = {
        "decode": [v.decode_s for v in rest],
        "evaluate": [v.evaluate_s for v in rest],
        "publish": [v.publish_s for v in rest],
    }
    return first.total_s, [v.total_s for v in rest], parts
