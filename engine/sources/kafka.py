"""Kafka source: a consumer group's messages → one batch of message bodies per visit.

Rubin sends a visit's ~10,000 alerts over a few seconds, interleaved across partitions. This
source reads them with confluent-kafka in a consumer group and hands out *visit batches*: the
bodies of one visit, untouched (the decoder reads each where it lies). A batch closes when

- its alerts stop arriving for ``linger_s`` (the visit is over), or
- it holds ``max_alerts`` messages (bounds memory and latency; the rest of the visit starts a
  new batch with the same visit id), or
- every assigned partition has moved past it (each has delivered a message of a later visit),
  so latency does not wait for the linger when the stream goes on, or
- every assigned partition is caught up (end of partition) and nothing arrived for
  ``quiet_s`` (a fraction of the linger): Rubin sends a visit in one burst, so an idle, caught-up
  consumer has the whole visit. Should a visit's tail come later after all, it is published as a
  second batch of the same visit (publishing is idempotent, so nothing is lost or doubled).

The visit of a message is read from the first few fields of its Avro datum, without decoding
it (:mod:`engine.sources.visitpeek`).

Bad input is never fatal and never silently lost: a message that is not Confluent-framed Avro,
has a schema id no ``lsst-alert-packet`` version knows, or is truncated goes to the
``dead_letter`` callback (with topic, partition and offset) and counts as consumed.

Offsets are committed by hand, only through :meth:`KafkaSource.commit` after the caller has
published a visit, and never past a message of a batch that is still open or unpublished: a
crash anywhere means those messages are read again, and idempotent publishing makes that
harmless. A rebalance discards open batches (their messages go to the partitions' new owners,
or come back here).
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.alerts.schema import AlertSchema, load_schema
from engine.errors import ConfigError, MinibrokerError, SourceError
from engine.sources.visitpeek import peek_visit

__all__ = [
    "DeadLetter",
    "DeadReason",
    "KafkaSettings",
    "KafkaSource",
    "VisitMessages",
    "consumer_config",
    "peek_visit",
    "schema_of",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KafkaSettings:
    """Where to read and how to cut the stream into visits.

    ``linger_s``: a visit closes when none of its alerts arrived for this long.
    ``max_alerts``: a batch closes at this many messages.
    ``quiet_s``: a batch closes when every assigned partition is caught up and none of its
    alerts arrived for this long.
    ``extra``: further librdkafka settings, which override the defaults below.
    """

    bootstrap: str
    topic: str
    group: str
    linger_s: float = 2.0
    max_alerts: int = 50_000
    quiet_s: float = 0.15
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.linger_s <= 0:
            raise ConfigError(f"linger {self.linger_s} s: give a positive time")
        if self.quiet_s <= 0:
            raise ConfigError(f"quiet time {self.quiet_s} s: give a positive time")
        if self.max_alerts < 1:
            raise ConfigError(f"max alerts per batch {self.max_alerts}: give at least 1")


def consumer_config(bootstrap: str, group: str, **extra: Any) -> dict[str, Any]:
    """librdkafka settings of a minibroker consumer: manual commits, from the earliest offset,
    and a short session (with the defaults a group join takes 20 s+ on Tansu, ~3 s with these)."""
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
        # A caught-up consumer learns it is at the end when an empty fetch returns: Tansu holds
        # it for this long, so it bounds how soon a finished visit can close (default 500 ms).
        "fetch.wait.max.ms": 50,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        "fetch.max.bytes": 64 * 1024 * 1024,
        # Prefetch a whole 10,000-alert visit (~600 MB) while the previous one is processed;
        # the default (64 MB, ~800 alerts) leaves the consumer idle during each visit's work.
        "queued.max.messages.kbytes": 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
        # librdkafka logs a line per failed connection attempt (20 a second to a broker that is
        # down); the error callback below says it once in a while instead.
        "log_level": 2,
    }
    conf.update(extra)
    return conf


class DeadReason(enum.Enum):
    """Why a message went to the dead-letter stream."""

    NOT_AVRO = "not_avro"  # no Confluent wire header (too short, or magic byte not 0)
    UNKNOWN_SCHEMA = "unknown_schema"  # no lsst-alert-packet version has this schema id
    TRUNCATED = "truncated"  # the datum ends before its first fields do
    CORRUPT = "corrupt"  # the decoder rejected the datum


@dataclass(frozen=True)
class DeadLetter:
    """One message that could not be used, and where it lies."""

    reason: DeadReason
    detail: str
    topic: str
    partition: int
    offset: int
    body: bytes = field(repr=False)


@dataclass
class VisitMessages:
    """The messages of one visit batch (all of one schema id), with their Kafka coordinates.

    ``offsets`` maps partition → (first, last) offset of this batch's messages; times are wall
    clock (``time.time()``) of the first and last message received.
    """

    visit: int
    schema_id: int
    bodies: list[bytes] = field(default_factory=list, repr=False)
    coords: list[tuple[int, int]] = field(default_factory=list, repr=False)
    offsets: dict[int, tuple[int, int]] = field(default_factory=dict)
    first_received: float = 0.0
    last_received: float = 0.0
    closed_by: str = ""
    closed_at: float = 0.0  # wall clock when the batch closed
    _seq: int = field(default=0, repr=False)
    _last_mono: float = field(default=0.0, repr=False)

    def __len__(self) -> int:
        return len(self.bodies)

    def _add(self, body: bytes, partition: int, offset: int, now: float, mono: float) -> None:
        if not self.bodies:
            self.first_received = now
        self.bodies.append(body)
        self.coords.append((partition, offset))
        lo, hi = self.offsets.get(partition, (offset, offset))
        self.offsets[partition] = (min(lo, offset), max(hi, offset))
        self.last_received, self._last_mono = now, mono


def schema_of(body: bytes) -> tuple[AlertSchema | None, DeadReason | None, str]:
    """The schema of a framed body, or (None, why, detail) when it has no usable header."""
    if len(body) < 5 or body[0] != 0:
        what = f"{len(body)} bytes" if len(body) < 5 else f"magic byte {body[0]}"
        return None, DeadReason.NOT_AVRO, f"{what}: not a Confluent-framed Avro message"
    schema_id = int.from_bytes(body[1:5], "big")
    try:
        return load_schema(schema_id), None, ""
    except MinibrokerError as exc:
        return None, DeadReason.UNKNOWN_SCHEMA, f"schema id {schema_id}: {exc}"


# -- the source ----------------------------------------------------------------------------------


class KafkaSource:
    """Visit batches from one topic, read in a consumer group (see the module docstring).

    Use :meth:`poll` in a loop, publish each visit it returns and then :meth:`commit` it;
    :meth:`drain` closes what is still open (on shutdown); :meth:`close` leaves the group.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        dead_letter: Callable[[DeadLetter], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        from confluent_kafka import Consumer

        self.settings = settings
        self._dead_letter = dead_letter
        self._clock = clock
        conf = consumer_config(settings.bootstrap, settings.group, **dict(settings.extra))
        conf.setdefault("error_cb", self._broker_error)
        self._last_error: tuple[str, float] | None = None
        self._consumer = Consumer(conf)
        self._open: dict[tuple[int, int], VisitMessages] = {}  # (schema id, visit) → batch
        self._handed: list[VisitMessages] = []  # closed, not yet committed
        self._ready: list[VisitMessages] = []  # closed by size, not yet returned by poll
        self._next: dict[int, int] = {}  # partition → offset after the last message read
        self._committed: dict[int, int] = {}
        self._last_seq: dict[int, int] = {}  # partition → seq of the visit it delivered last
        self._seq = 0
        self._assigned: set[int] = set()
        self._at_end: set[int] = set()  # assigned partitions read to their end
        self._dirty = False
        self.dead_letters = 0
        self._consumer.subscribe(
            [settings.topic], on_assign=self._on_assign, on_revoke=self._on_revoke
        )

    # -- group membership --------------------------------------------------------------------

    def _broker_error(self, err: Any) -> None:
        """librdkafka keeps retrying by itself; say what is wrong in one line, at most every 30 s
        (a broker that is down must not flood the log)."""
        what, now = str(err.str()), time.monotonic()
        if self._last_error is None or now - self._last_error[1] >= 30:
            self._last_error = (what, now)
            log.warning(
                json.dumps(
                    {
                        "event": "kafka_error",
                        "bootstrap": self.settings.bootstrap,
                        "error": what,
                        "next": "retrying; check the broker address and that it runs",
                    }
                )
            )

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        self._assigned |= {p.partition for p in partitions}
        log.info("assigned partitions %s of %s", sorted(self._assigned), self.settings.topic)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        # Published visits are committed first; open ones are dropped and read again by
        # whoever owns their partitions next (publishing is idempotent).
        from confluent_kafka import TopicPartition

        self._commit_safe()
        gone = {p.partition for p in partitions}
        self._at_end -= gone
        rewind = {p: o for p, o in self._safe_offsets(everything=True).items() if p not in gone}
        self._open.clear()
        self._handed.clear()
        self._ready.clear()
        for p in gone:
            self._next.pop(p, None)
            self._committed.pop(p, None)
            self._last_seq.pop(p, None)
        # A partial (cooperative) revocation keeps some partitions: read their dropped
        # messages again from where the dropped batches began.
        for p, offset in rewind.items():
            self._consumer.seek(TopicPartition(self.settings.topic, p, offset))
            self._next[p] = offset
        self._assigned -= gone
        self._dirty = False
        log.info("revoked partitions %s of %s", sorted(gone), self.settings.topic)

    @property
    def assignment(self) -> set[int]:
        """The partitions this consumer holds now."""
        return set(self._assigned)

    @property
    def busy(self) -> bool:
        """True while unassigned (joining the group) or holding an open batch."""
        return not self._assigned or bool(self._open)

    # -- reading -----------------------------------------------------------------------------
    def poll(self, timeout_s: float = 0.2, max_messages: int = 1000) -> list[VisitMessages]:
        """Read what has arrived (waiting up to ``timeout_s``) and return the batches that closed."""
        from confluent_kafka import KafkaError

        self._commit_safe()
        if self._open:  # wake up when the next open batch is due, not a whole timeout later
            caught_up = bool(self._assigned) and self._assigned <= self._at_end
            wait = self.settings.quiet_s if caught_up else self.settings.linger_s
            due = min(b._last_mono for b in self._open.values()) + wait
            timeout_s = max(0.01, min(timeout_s, due - self._clock()))
        messages = self._consumer.consume(max_messages, timeout_s)
        now, mono = time.time(), self._clock()
        for msg in messages:
            err = msg.error()
            partition: int = msg.partition()  # type: ignore[assignment]  # set on every fetched message
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._at_end.add(partition)
                else:
                    log.warning("kafka: %s", err)
                continue
            self._at_end.discard(partition)
            self._take(msg.value() or b"", partition, msg.offset(), now, mono)  # type: ignore[arg-type]
        return self._close_due(self._clock())

    def _take(self, body: bytes, partition: int, offset: int, now: float, mono: float) -> None:
        self._next[partition] = offset + 1
        schema, reason, detail = schema_of(body)
        visit = 0
        if schema is not None:
            try:
                visit = peek_visit(body, schema)
            except SourceError as exc:
                reason, detail = DeadReason.TRUNCATED, str(exc)
        if reason is not None:
            self.reject(DeadLetter(reason, detail, self.settings.topic, partition, offset, body))
            return
        assert schema is not None
        key = (schema.schema_id, visit)
        batch = self._open.get(key)
        if batch is None:
            self._seq += 1
            batch = self._open[key] = VisitMessages(visit, schema.schema_id, _seq=self._seq)
        batch._add(body, partition, offset, now, mono)
        self._last_seq[partition] = max(self._last_seq.get(partition, 0), batch._seq)
        if len(batch) >= self.settings.max_alerts:
            self._ready.append(self._hand_out(key, "size"))

    def reject(self, letter: DeadLetter) -> None:
        """Send one message to the dead-letter callback (it must not lose it: it blocks until
        the letter is stored); the message then counts as consumed."""
        self._dead_letter(letter)
        self.dead_letters += 1
        self._dirty = True

    def _hand_out(self, key: tuple[int, int], why: str) -> VisitMessages:
        batch = self._open.pop(key)
        batch.closed_by, batch.closed_at = why, time.time()
        self._handed.append(batch)
        return batch

    def _close_due(self, mono: float) -> list[VisitMessages]:
        out, self._ready = self._ready, []
        caught_up = bool(self._assigned) and self._assigned <= self._at_end
        for key, batch in list(self._open.items()):
            idle = mono - batch._last_mono
            if idle >= self.settings.linger_s:
                out.append(self._hand_out(key, "linger"))
            elif caught_up and idle >= self.settings.quiet_s:
                out.append(self._hand_out(key, "caught_up"))
            elif self._assigned and all(
                self._last_seq.get(p, 0) > batch._seq for p in self._assigned
            ):
                out.append(self._hand_out(key, "passed"))
        out.sort(key=lambda b: b._seq)
        return out

    def drain(self) -> list[VisitMessages]:
        """Close every open batch now (shutdown), oldest first."""
        out, self._ready = self._ready, []
        out += [self._hand_out(key, "drain") for key in list(self._open)]
        out.sort(key=lambda b: b._seq)
        return out

    def lag(self) -> dict[int, int]:
        """Per assigned partition, messages not yet read (high watermark − position), from the
        watermarks the last fetches reported (no broker round trip); partitions without a
        figure yet are left out."""
        from confluent_kafka import TopicPartition

        out = {}
        for p in sorted(self._assigned):
            try:
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self.settings.topic, p), cached=True
                )
            except Exception:  # KafkaException: no figure yet
                continue
            pos = self._next.get(p)
            if high >= 0 and pos is not None:
                out[p] = max(0, high - pos)
        return out

    # -- committing --------------------------------------------------------------------------
    def commit(self, batch: VisitMessages) -> bool:
        """Record that ``batch`` is published and commit every offset that is now safe;
        False when the broker did not take the commit (it is retried at the next poll)."""
        try:
            self._handed.remove(batch)
        except ValueError:
            return False  # dropped by a rebalance meanwhile: its messages are read again
        self._dirty = True
        return self._commit_safe()

    def _safe_offsets(self, *, everything: bool = False) -> dict[int, int]:
        """Per partition, the offset of the first message not yet published (or dead-lettered);
        only those past the last commit unless ``everything``."""
        safe = dict(self._next)
        for batch in (*self._open.values(), *self._handed):
            for p, (lo, _hi) in batch.offsets.items():
                if p in safe:
                    safe[p] = min(safe[p], lo)
        if everything:
            return safe
        return {p: o for p, o in safe.items() if o > self._committed.get(p, -1)}

    def _commit_safe(self) -> bool:
        if not self._dirty:
            return True
        from confluent_kafka import KafkaException, TopicPartition

        safe = self._safe_offsets()
        if not safe:
            self._dirty = False
            return True
        offsets = [TopicPartition(self.settings.topic, p, o) for p, o in sorted(safe.items())]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("commit of %s failed (%s); retrying at the next poll", safe, exc)
            return False
        self._committed.update(safe)
        self._dirty = False
        return True

    def close(self) -> None:
        """Commit what is safe and leave the group (partitions move to the other engines now)."""
        self._commit_safe()
        self._consumer.close()
