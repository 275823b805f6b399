"""Produce: publish a sample night onto a Kafka topic the way Rubin does.

Each alert becomes one message: the Confluent wire header (magic byte 0, 4-byte big-endian
schema id) and one schemaless Avro datum, exactly as Rubin's alert stream carries them. A
visit's alerts are dealt round-robin over the topic's partitions, so consumers see them
interleaved; ``visits_per_minute`` paces visits (Rubin's rate is about 2 per minute), and by
default the night goes out as fast as the broker takes it. For tests, demos and load tests.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from engine.alerts.wire import frame
from engine.decode import decode_block
from engine.errors import ConfigError, SourceError
from engine.progress import Progress
from engine.sources.night import night_info, read_night

__all__ = ["ProduceReport", "ensure_topic", "produce_night"]


@dataclass
class ProduceReport:
    """What was produced: visits in order, alerts and bytes, and per partition the count."""

    topic: str
    visits: list[int] = field(default_factory=list)
    alerts: int = 0
    bytes: int = 0
    per_partition: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0


def ensure_topic(bootstrap: str, topic: str, partitions: int, timeout_s: float = 10.0) -> int:
    """Create ``topic`` with ``partitions`` partitions unless it exists; return its partition count."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    # log_level 2: a broker that is down is reported once, below, not per connection attempt.
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
    try:
        # Asking for every topic: a metadata request naming one auto-creates it on some brokers
        # (Tansu), with their default partition count instead of ours.
        meta = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise SourceError(
            f"cannot reach the Kafka broker at {bootstrap} ({exc}); start one or "
            "check --bootstrap (`minibroker demo` starts its own)"
        ) from None
    found = meta.topics.get(topic)
    if found is not None and found.error is None and found.partitions:
        return len(found.partitions)
    futures = admin.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=timeout_s)
    try:
        futures[topic].result(timeout_s)
    except KafkaException as exc:
        if "TOPIC_ALREADY_EXISTS" not in str(exc):
            raise SourceError(f"cannot create topic {topic!r} on {bootstrap}: {exc}") from None
    return partitions


def produce_night(
    night: str | os.PathLike[str],
    bootstrap: str,
    topic: str,
    *,
    partitions: int = 4,
    visits_per_minute: float | None = None,
    progress: bool | Progress = True,
    max_visits: int | None = None,
) -> ProduceReport:
    """Publish every visit of ``night`` (the first ``max_visits`` if given) to ``topic``
    (created with ``partitions`` if missing).

    Returns when every message is acknowledged by the broker.
    """
    from confluent_kafka import KafkaException, Producer

    if partitions < 1:
        raise ConfigError(f"--partitions {partitions}: give at least 1")
    if visits_per_minute is not None and visits_per_minute <= 0:
        raise ConfigError(f"--visits-per-minute {visits_per_minute}: give a positive rate")
    schema, visit_ids = night_info(night)
    nparts = ensure_topic(bootstrap, topic, partitions)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "batch.size": 1_000_000,
            "queue.buffering.max.kbytes": 512 * 1024,
            "message.max.bytes": 8 * 1024 * 1024,
            # Critical only: librdkafka's per-attempt lines would garble the progress line; a
            # failed delivery is reported by its callback.
            "log_level": 2,
        }
    )
    errors: list[str] = []

    def delivered(err: object, msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    total = len(visit_ids) if visit_ids else None
    if total is not None and max_visits is not None:
        total = min(total, max_visits)
    bar = progress if isinstance(progress, Progress) else Progress(total, enabled=progress)
    report = ProduceReport(topic)
    t0 = time.monotonic()
    try:
        for i, block in enumerate(read_night(night)):
            if max_visits is not None and i >= max_visits:
                break
            if visits_per_minute:
                due = t0 + i * 60.0 / visits_per_minute
                while (wait := due - time.monotonic()) > 0:
                    producer.poll(wait)  # returns early when it serves a delivery report
            # Only the datum boundaries are needed; the projection keeps the walk cheap.
            raw = decode_block(block, schema, ["diaSourceId"]).raw
            for j, datum in enumerate(raw):
                body = frame(datum, schema.schema_id)
                part = j % nparts
                while True:
                    try:
                        producer.produce(topic, body, partition=part, on_delivery=delivered)
                        break
                    except BufferError:  # local queue full: let the broker catch up
                        producer.poll(0.05)
                report.per_partition[part] = report.per_partition.get(part, 0) + 1
                report.bytes += len(body)
            producer.poll(0)
            report.alerts += len(raw)
            report.visits.append(block.visit)
            bar.update(len(report.visits), f"visit {block.visit}: {len(raw)} alerts")
        left = producer.flush(60)
    except KafkaException as exc:
        raise SourceError(f"producing to {topic!r} on {bootstrap} failed: {exc}") from None
    finally:
        bar.close()
    if left or errors:
        raise SourceError(
            f"{left + len(errors)} of {report.alerts} messages to {topic!r} were not "
            f"acknowledged ({errors[0] if errors else 'timed out'}); check the broker "
            "and produce again (serve delivers each match once)"
        )
    report.seconds = time.monotonic() - t0
    return report
