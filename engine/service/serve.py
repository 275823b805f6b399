"""Serve: the long-running service. Kafka visit batches → decode → evaluate → publish → commit.

One loop, one visit at a time, in the order the source closes them:

1. :class:`engine.sources.kafka.KafkaSource` hands out a visit batch (message bodies);
2. the filters are re-read when a file under ``--filters DIR`` changed (a new or edited filter
   takes effect at the next visit, no restart);
3. the bodies are decoded where they lie, evaluated and published by the same per-visit step
   ``run --night`` uses (:func:`engine.pipeline.run_visit`);
4. the visit goes into the visit index (for ``replay``), then its offsets are committed.

Exactly once, as users see it: offsets are committed only after publish returned, and publish
is idempotent per filter and alert, so whatever point a crash hits, the restart re-reads the
unfinished visits and writes only what is missing. Redis down: the visit is retried with
backoff and nothing is committed until it is through. SIGTERM or SIGINT: the open visits are
closed, published and committed, and :func:`serve` returns 0.

Log: one JSON line per visit on the ``engine.service.serve`` logger (stderr from the CLI).
Dead letters: Redis stream ``minibroker:deadletter``, fields ``reason``, ``detail``, ``topic``,
``partition``, ``offset``, ``body``; each message at most once (a seen set keyed by its
coordinates).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from engine.alerts.schema import load_schema
from engine.config import Config
from engine.decode import VisitBatch, decode_messages
from engine.errors import ConfigError, DecodeError, PublishError
from engine.evaluate import Evaluator, columns_needed
from engine.registry import ActiveFilter, discover
from engine.service import visitindex
from engine.service.pipeline import VisitReport, run_visit
from engine.sinks.streams import Publisher
from engine.sources.kafka import DeadLetter, DeadReason, KafkaSettings, KafkaSource, VisitMessages

__all__ = ["DEADLETTER_STREAM", "ServeSettings", "Service", "parse_shard", "serve", "shard_of"]

log = logging.getLogger(__name__)

DEADLETTER_STREAM = "minibroker:deadletter"
_DEADLETTER_SEEN = "minibroker:deadletter:seen"
_DEADLETTER_MAXLEN = 100_000
_DEAD_ONCE = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return false end
redis.call('EXPIRE', KEYS[2], ARGV[2])
local args = {'XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*'}
for i = 4, #ARGV do args[#args + 1] = ARGV[i] end
return redis.call(unpack(args))
"""
_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class ServeSettings:
    """What ``serve`` reads and how: the topic, the filters, and the shutdown bound."""

    kafka: KafkaSettings
    filters: Path | None  # None: the Redis registry's active filters
    owner: str = "demo"
    drain_timeout_s: float = 30.0
    shard: tuple[int, int] | None = None  # (I, N): run only users whose stable hash is I mod N
    metrics_port: int | None = None


@dataclass
class _FilterDir:
    """The filters of a directory, compiled again only when a file changed."""

    root: Path
    owner: str
    keep: Callable[[ActiveFilter], bool]
    stamp: tuple[tuple[str, int, int], ...] = ()
    active: list[ActiveFilter] = field(default_factory=list)
    fixed: bool = False  # given by the caller, never re-read

    def _stamp(self) -> tuple[tuple[str, int, int], ...]:
        out = []
        for path in sorted(self.root.rglob("*.py")):
            try:
                st = path.stat()
            except OSError:
                continue
            out.append((str(path), st.st_mtime_ns, st.st_size))
        return tuple(out)

    def refresh(self) -> bool:
        """Re-read the directory if a file changed; True when the filters are new."""
        if self.fixed:
            return False
        stamp = self._stamp()
        if stamp == self.stamp:
            return False
        fs = discover(self.root, owner=self.owner)
        for key, rejection in fs.rejected.items():
            log.warning(
                json.dumps({"event": "filter_rejected", "filter": key, "why": str(rejection)})
            )
        self.active = [f for f in fs.active if self.keep(f)]
        self.stamp = stamp
        return True


def _observed(visit: VisitBatch) -> float | None:
    """When the visit was observed (Unix seconds), from its alerts' midpoints, if decoded."""
    batch = visit.batch
    if "diaSource" not in batch.schema.names or not batch.num_rows:
        return None
    source = batch.column("diaSource")
    if source.type.get_field_index("midpointMjdTai") < 0:
        return None
    import pyarrow.compute as pc

    first = pc.min(source.field("midpointMjdTai")).as_py()
    return None if first is None else visitindex.observed_unix(first)


class _RegistryFilters:
    """The registry's active filters (one GET between visits when nothing changed); pending
    submissions are answered between visits too, dry-run on a sample of a served visit."""

    def __init__(self, client: redis.Redis, config: Config, keep: Callable[[ActiveFilter], bool]):
        from engine.registry.store import ActiveFilters

        self._store = ActiveFilters(client)
        self._client, self._config, self._keep = client, config, keep
        self.reference: VisitBatch | None = None
        self.active: list[ActiveFilter] = []

    @property
    def caps(self) -> dict[str, int]:
        """Per-filter caps an admin set."""
        return self._store.caps

    def refresh(self) -> bool:
        """Answer waiting submissions, then re-read the registry; True when the filters changed."""
        if self.reference is not None:
            from engine.service.submissions import process_pending

            process_pending(self._client, self.reference, self._config)
        changed = self._store.refresh()
        self.active = [f for f in self._store.filters if self._keep(f)]
        return changed


def shard_of(user: str, shards: int) -> int:
    """The shard of a user: a stable hash (the same in every process and release)."""
    import zlib

    return zlib.crc32(user.encode()) % shards


class _RetryingPublisher(Publisher):
    """Publish, retrying with backoff while Redis is unavailable (publishing is idempotent)."""

    def __init__(
        self, client: redis.Redis, config: Config, retry: Callable[[Callable[[], Any], str], Any]
    ):
        super().__init__(client, config)
        self._with_retry = retry

    def publish(
        self, visit: VisitBatch, filters: Sequence[ActiveFilter], outcomes: Sequence[Any]
    ) -> Any:
        return self._with_retry(
            lambda: super(_RetryingPublisher, self).publish(visit, filters, outcomes),
            f"visit {visit.visit}",
        )


class Service:
    """The serve loop's state: source, filters, evaluator, publisher. See the module docstring."""

    def __init__(
        self,
        settings: ServeSettings,
        config: Config,
        client: redis.Redis,
        *,
        filters: Sequence[ActiveFilter] | None = None,
    ):
        """``filters`` fixes the filter set (benchmarks); by default it is read from
        ``settings.filters`` and re-read when a file there changes."""
        self.settings = settings
        self.config = config
        self.client = client
        shard = settings.shard
        keep: Callable[[ActiveFilter], bool] = (
            (lambda f: True)
            if shard is None
            else (lambda f: shard_of(f.user, shard[1]) == shard[0])
        )
        self._filters: _FilterDir | _RegistryFilters
        if filters is not None or settings.filters is not None:
            self._filters = _FilterDir(settings.filters or Path("."), settings.owner, keep)
            if filters is not None:
                self._filters.active = [f for f in filters if keep(f)]
                self._filters.fixed = True
        else:
            self._filters = _RegistryFilters(client, config, keep)
        #: Called after each visit with (batch, report, done wall time): benchmarks, tests.
        self.on_visit: Callable[[VisitMessages, VisitReport, float], None] | None = None
        self._evaluator: Evaluator | None = None
        self._columns: dict[int, set[str] | None] = {}
        from engine.service import metrics

        self.metrics = metrics.ServeMetrics()
        self.stopping = threading.Event()
        self.visits_done = 0
        # The publisher writes to Redis when it starts (its secret): wait for Redis like a visit does.
        self._publisher = self._retry(
            lambda: _RetryingPublisher(client, config, self._retry), "start"
        )
        self._dead_once = client.register_script(_DEAD_ONCE)
        self.source = KafkaSource(settings.kafka, self._store_dead_letter)

    # -- dead letters ------------------------------------------------------------------------
    def _store_dead_letter(self, letter: DeadLetter) -> None:
        member = f"{letter.topic}/{letter.partition}/{letter.offset}"
        fields: list[Any] = [
            "reason",
            letter.reason.value,
            "detail",
            letter.detail,
            "topic",
            letter.topic,
            "partition",
            letter.partition,
            "offset",
            letter.offset,
            "body",
            letter.body,
        ]
        self._retry(
            lambda: self._dead_once(
                keys=[DEADLETTER_STREAM, _DEADLETTER_SEEN],
                args=[member, 14 * 24 * 3600, _DEADLETTER_MAXLEN, *fields],
            ),
            f"dead letter {member}",
        )
        self.metrics.dead_letter(letter.reason.value)
        log.warning(
            json.dumps(
                {
                    "event": "dead_letter",
                    "reason": letter.reason.value,
                    "topic": letter.topic,
                    "partition": letter.partition,
                    "offset": letter.offset,
                    "detail": letter.detail,
                }
            )
        )

    def _retry(self, action: Callable[[], Any], what: str) -> Any:
        """Run ``action`` until Redis takes it, backing off; consumption waits meanwhile."""
        for attempt in range(10**9):
            try:
                return action()
            except (redis.RedisError, PublishError) as exc:
                wait = _BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)]
                log.warning(
                    json.dumps(
                        {
                            "event": "redis_unavailable",
                            "what": what,
                            "error": str(exc),
                            "retry_in_s": wait,
                        }
                    )
                )
                self.metrics.redis_retry()
                time.sleep(wait)
        raise AssertionError("unreachable")

    # -- one visit ---------------------------------------------------------------------------
    def _ensure_filters(self) -> list[ActiveFilter]:
        if self._filters.refresh() or self._evaluator is None:
            if self._evaluator is not None:
                self._evaluator.close()
            self._evaluator = Evaluator(self._filters.active, self.config)
            self._columns.clear()
            if isinstance(self._filters, _RegistryFilters):
                self._publisher.caps = dict(self._filters.caps)
            log.info(
                json.dumps({"event": "filters", "active": [f.key for f in self._filters.active]})
            )
        return self._filters.active

    def _decode(self, batch: VisitMessages, columns: set[str] | None) -> VisitBatch:
        """Decode the batch; corrupt datums go to the dead letters and the rest goes on."""
        try:
            return decode_messages(batch.bodies, columns, visit=batch.visit)
        except DecodeError:
            pass
        good: list[bytes] = []
        for body, (partition, offset) in zip(batch.bodies, batch.coords, strict=True):
            try:
                decode_messages([body], columns, visit=batch.visit)
                good.append(body)
            except DecodeError as exc:
                self.source.reject(
                    DeadLetter(
                        DeadReason.CORRUPT,
                        str(exc),
                        self.settings.kafka.topic,
                        partition,
                        offset,
                        body,
                    )
                )
        if not good:
            raise DecodeError(f"visit {batch.visit}: every message is corrupt (all dead-lettered)")
        return decode_messages(good, columns, visit=batch.visit)

    @staticmethod
    def _reference(batch: VisitMessages, schema: Any) -> VisitBatch | None:
        """Up to 1,000 alerts of the first visit, every column but the cutouts: what
        submissions are dry-run on."""
        columns = [n for n in schema.arrow.names if not n.startswith("cutout")]
        try:
            return decode_messages(batch.bodies[:1000], columns, visit=batch.visit)
        except DecodeError:
            return None

    def process(self, batch: VisitMessages) -> VisitReport | None:
        """Decode, evaluate, publish, index and commit one visit batch."""
        filters = self._ensure_filters()
        assert self._evaluator is not None
        schema = load_schema(batch.schema_id)
        if isinstance(self._filters, _RegistryFilters) and self._filters.reference is None:
            self._filters.reference = self._reference(batch, schema)
        if batch.schema_id not in self._columns:
            self._columns[batch.schema_id] = columns_needed(filters, schema)
        columns = self._columns[batch.schema_id]

        def decode() -> VisitBatch:
            return self._decode(batch, columns)

        report: VisitReport | None = None
        outcomes: list[Any] = []
        observed = None
        try:
            report, visit, outcomes = run_visit(decode, filters, self._evaluator, self._publisher)
            observed = _observed(visit)
        except DecodeError as exc:
            log.warning(
                json.dumps({"event": "visit_skipped", "visit": batch.visit, "why": str(exc)})
            )
        self._retry(
            lambda: visitindex.record(self.client, self.settings.kafka.topic, batch, observed),
            f"visit index {batch.visit}",
        )
        done = time.time()
        committed = self.source.commit(batch)
        self.visits_done += 1
        if report is not None:
            self._log_visit(batch, report, outcomes, done, committed)
            if self.on_visit is not None:
                self.on_visit(batch, report, done)
        return report

    def _log_visit(
        self,
        batch: VisitMessages,
        report: VisitReport,
        outcomes: list[Any],
        done: float,
        committed: bool,
    ) -> None:
        own_s = done - batch.last_received
        whole_s = done - batch.first_received
        self.metrics.visit(report, outcomes, whole_s=whole_s, own_s=own_s)
        self.metrics.consumer_lag(self.source.lag())
        log.info(
            json.dumps(
                {
                    "event": "visit",
                    "ts": round(done, 3),
                    "visit": batch.visit,
                    "schema_id": batch.schema_id,
                    "alerts": report.alerts,
                    "closed_by": batch.closed_by,
                    "partitions": {str(p): list(r) for p, r in sorted(batch.offsets.items())},
                    "decode_ms": round(report.decode_s * 1000, 1),
                    "evaluate_ms": round(report.evaluate_s * 1000, 1),
                    "publish_ms": round(report.publish_s * 1000, 1),
                    "latency_ms": round(whole_s * 1000, 1),
                    "own_latency_ms": round(own_s * 1000, 1),
                    "close_wait_ms": round((batch.closed_at - batch.last_received) * 1000, 1),
                    "passed": sum(report.passed.values()),
                    "published": report.published,
                    "faults": len(report.faults),
                    "committed": committed,
                }
            )
        )

    # -- the loop ----------------------------------------------------------------------------
    def run(self, *, max_visits: int | None = None, idle_exit_s: float | None = None) -> int:
        """Serve until :attr:`stopping` is set (SIGTERM), ``max_visits`` are done, or nothing
        arrived for ``idle_exit_s``; drain, commit, leave the group; return the exit code 0."""
        self._ensure_filters()
        last_activity = time.monotonic()
        try:
            while not self.stopping.is_set():
                batches = self.source.poll(0.2)
                for batch in batches:
                    self.process(batch)
                if batches or self.source.busy:  # idle time counts only when nothing is pending
                    last_activity = time.monotonic()
                if max_visits is not None and self.visits_done >= max_visits:
                    break
                if idle_exit_s is not None and time.monotonic() - last_activity > idle_exit_s:
                    break
            for batch in self.source.drain():
                self.process(batch)
        finally:
            self.source.close()
            if self._evaluator is not None:
                self._evaluator.close()
        return 0


def serve(
    settings: ServeSettings,
    config: Config,
    client: redis.Redis,
    *,
    max_visits: int | None = None,
    idle_exit_s: float | None = None,
    handle_signals: bool = True,
) -> int:
    """Run the service (see the module docstring); SIGTERM/SIGINT drain and return 0."""
    if settings.filters is not None and not settings.filters.is_dir():
        raise ConfigError(
            f"{settings.filters}: no such filter directory; give --filters DIR "
            "(or leave it out to serve the registry's filters)"
        )
    service = Service(settings, config, client)
    if settings.metrics_port is not None:
        service.metrics.serve(settings.metrics_port)
    previous: dict[int, Any] = {}
    if handle_signals and threading.current_thread() is threading.main_thread():

        def stop(signum: int, frame: object) -> None:
            service.stopping.set()
            log.info(json.dumps({"event": "stopping", "signal": signal.Signals(signum).name}))
            # A second signal, or a drain past its bound, ends the process at once: nothing
            # was committed for unfinished visits, so they are read again after a restart.
            signal.signal(signum, signal.SIG_DFL)
            timer = threading.Timer(settings.drain_timeout_s, lambda: os._exit(3))
            timer.daemon = True
            timer.start()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[int(sig)] = signal.signal(sig, stop)
    for line in _describe(settings):
        log.info(line)
    try:
        return service.run(max_visits=max_visits, idle_exit_s=idle_exit_s)
    finally:
        service.metrics.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` → (I, N) with 0 ≤ I < N."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: give I/N, e.g. 0/2") from None
    if not 0 <= i < n:
        raise ConfigError(f"--shard {text!r}: I must be between 0 and N-1")
    return i, n


def _describe(settings: ServeSettings) -> Sequence[str]:
    """Lines saying what the service reads (printed at start)."""
    k = settings.kafka
    shard = "" if settings.shard is None else f", shard {settings.shard[0]}/{settings.shard[1]}"
    source = settings.filters if settings.filters is not None else "the registry"
    return [f"serving {k.topic} on {k.bootstrap} in group {k.group}{shard}; filters from {source}"]
