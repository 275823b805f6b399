"""The live path's figures: visit latency through Kafka and Redis, and the sustained visit rate
beside a bare confluent-kafka consumer reading the same topic in the same run.

Workload: a simulated v11.1 night of 10,000-alert visits (seed 7, generated once into the
cache), the 100 typical filters of :mod:`engine.local.bench` (100 users), a private Tansu broker
and a private Redis-compatible server on loopback, the service as ``serve`` runs it (the
configured isolation: the worker pool by default).

1. Latency: the service waits in its group; the night is produced at ``pace_s`` seconds per
   visit. Per visit, two figures: *whole* = first alert received → last match in Redis, and
   *own* = last alert received → last match in Redis (the service's own part: closing the
   batch, decoding, evaluating, publishing, indexing). The first visit, which also starts the
   filters' worker processes, is reported alone; the percentiles cover the others.
2. Sustained rate: with the whole night waiting on the topic, a bare confluent-kafka consumer
   reads it all (the broker's own limit), then the service consumes it from the start in a
   fresh group; visits per minute = visits / (first message received → last visit published).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.errors import MinibrokerError

__all__ = ["live_night", "measure_live"]

PARTITIONS = 4


def live_night(config: Config, visits: int, *, progress: bool = False) -> Path:
    """A night of ``visits`` 10,000-alert v11.1 visits (seed 7), generated once and cached."""
    from engine.local.simulate import simulate_night

    for have in (visits, 6):  # the benchmark's 6-visit night serves any shorter run
        path = config.cache_dir / "nights" / f"bench-live-v11.1-{have}x10000-seed7.avro"
        if path.exists() and have >= visits:
            return path
    path = config.cache_dir / "nights" / f"bench-live-v11.1-{visits}x10000-seed7.avro"
    simulate_night(path, visits=visits, alerts_per_visit=10_000, seed=7, progress=progress)
    return path


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "p50": round(1000 * statistics.median(ordered), 1),
        "p95": round(1000 * p95, 1),
        "max": round(1000 * ordered[-1], 1),
    }


class _Visits:
    """Per visit id: earliest first alert, latest last alert, latest publish (batches merged)."""

    def __init__(self) -> None:
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.done: dict[int, float] = {}
        self.batches = 0
        self.parts: dict[str, list[float]] = {"decode": [], "evaluate": [], "publish": []}
        self.lock = threading.Lock()

    def __call__(self, batch: Any, report: Any, done: float) -> None:
        with self.lock:
            v = batch.visit
            self.batches += 1
            for part, seconds in (
                ("decode", report.decode_s),
                ("evaluate", report.evaluate_s),
                ("publish", report.publish_s),
            ):
                self.parts[part].append(seconds)
            self.first[v] = min(self.first.get(v, batch.first_received), batch.first_received)
            self.last[v] = max(self.last.get(v, batch.last_received), batch.last_received)
            self.done[v] = max(self.done.get(v, done), done)


def _run_service(
    bootstrap: str,
    topic: str,
    group: str,
    config: Config,
    client: Any,
    active: list[Any],
    until: Callable[[_Visits], bool],
    timeout_s: float,
    quiet_s: float,
) -> _Visits:
    from engine.service.serve import ServeSettings, Service
    from engine.sources.kafka import KafkaSettings

    settings = ServeSettings(KafkaSettings(bootstrap, topic, group, quiet_s=quiet_s), Path("."))
    service = Service(settings, config, client, filters=active)
    seen = _Visits()
    service.on_visit = seen
    worker = threading.Thread(target=service.run, daemon=True)
    worker.start()
    deadline = time.monotonic() + timeout_s
    try:
        while not until(seen):
            if time.monotonic() > deadline or not worker.is_alive():
                raise MinibrokerError(
                    f"the live benchmark's service did not finish within {timeout_s:.0f} s"
                )
            time.sleep(0.1)
    finally:
        service.stopping.set()
        worker.join(60)
    return seen


def _bare_consumer(bootstrap: str, topic: str, messages: int, timeout_s: float) -> float:
    """Seconds a bare consumer takes from its first message to its ``messages``-th."""
    from confluent_kafka import Consumer

    from engine.sources.kafka import consumer_config

    consumer = Consumer(consumer_config(bootstrap, "bench-bare", **{"enable.partition.eof": False}))
    consumer.subscribe([topic])
    got, first = 0, None
    deadline = time.monotonic() + timeout_s
    try:
        while got < messages:
            if time.monotonic() > deadline:
                raise MinibrokerError(
                    f"the bare consumer read {got} of {messages} messages in {timeout_s:.0f} s"
                )
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is None:
                    if first is None:
                        first = time.monotonic()
                    got += 1
    finally:
        consumer.close()
    assert first is not None
    return time.monotonic() - first


def measure_live(
    config: Config,
    *,
    visits: int = 6,
    pace_s: float = 10.0,
    filters: int = 100,
    quiet_s: float = 0.15,
    say: Callable[[str], None] = lambda text: None,
) -> dict[str, Any]:
    """Run both measurements (see the module doc) and return the figures."""
    import redis

    from engine.local.bench import typical_filters
    from engine.local.kafka import PrivateKafka
    from engine.local.redis_server import PrivateRedis
    from engine.registry import ActiveFilter
    from engine.service.produce import ensure_topic, produce_night
    from sandbox import FilterKey

    say(
        f"live: preparing a night of {visits} visits of 10,000 alerts (generated once, then cached)"
    )
    night = live_night(config, visits, progress=True)
    active = [
        ActiveFilter(FilterKey.parse(key).owner, compiled)
        for key, compiled in typical_filters(filters)
    ]
    figures: dict[str, Any] = {}
    with PrivateKafka() as kafka, PrivateRedis() as server:
        client = redis.Redis.from_url(server.url)
        topic, boot = "bench-live", kafka.bootstrap
        ensure_topic(boot, topic, PARTITIONS)

        say(f"live: latency, {visits} visits produced one every {pace_s:g} s while serve waits")
        producer = threading.Thread(
            target=produce_night,
            args=(night, boot, topic),
            daemon=True,
            kwargs={
                "partitions": PARTITIONS,
                "visits_per_minute": 60 / pace_s,
                "progress": False,
                "max_visits": visits,
            },
        )
        started = threading.Event()

        def until_paced(seen: _Visits) -> bool:
            if not started.is_set():
                started.set()
                producer.start()
            return len(seen.done) >= visits and not producer.is_alive()

        paced = _run_service(
            boot,
            topic,
            "bench-paced",
            config,
            client,
            active,
            until_paced,
            timeout_s=visits * pace_s + 300,
            quiet_s=quiet_s,
        )
        figures["live_batches_per_visit"] = round(paced.batches / max(1, len(paced.done)), 2)
        figures["live_parts_median_ms_10k"] = {
            k: round(1000 * statistics.median(v[1:] or v), 1) for k, v in paced.parts.items() if v
        }
        # The first visit also starts the filters' worker processes: reported alone.
        first, *ids = sorted(paced.done)
        ids = ids or [first]
        figures["live_first_own_ms_10k"] = round(1000 * (paced.done[first] - paced.last[first]), 1)
        whole = _percentiles([paced.done[v] - paced.first[v] for v in ids])
        own = _percentiles([paced.done[v] - paced.last[v] for v in ids])
        figures.update({f"live_whole_{k}_ms_10k": v for k, v in whole.items()})
        figures.update({f"live_own_{k}_ms_10k": v for k, v in own.items()})

        say(
            f"live: sustained rate, a bare consumer and then serve reading the {visits} visits from the start"
        )
        bare_s = _bare_consumer(boot, topic, visits * 10_000, timeout_s=600)
        client.flushdb()  # serve publishes afresh rather than finding every match already there
        backlog = _run_service(
            boot,
            topic,
            "bench-backlog",
            config,
            client,
            active,
            lambda seen: len(seen.done) >= visits,
            timeout_s=900,
            quiet_s=quiet_s,
        )
        engine_s = max(backlog.done.values()) - min(backlog.first.values())
        figures["live_visits_per_minute"] = round(60 * visits / engine_s, 1)
        figures["bare_consumer_visits_per_minute"] = round(60 * visits / bare_s, 1)
        figures["live_visits"] = visits
    return figures
