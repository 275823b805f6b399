"""Replay: re-evaluate a past window of the alert topic into one user's stream.

The window is found in the visit index that ``serve`` keeps (:mod:`engine.service.visitindex`),
not in the broker's time index: each visit received between ``since`` and ``until`` is read
again from exactly its offset ranges (the consumer is assigned the partitions, it joins no
group and commits nothing), decoded, run through the user's filters and published with the
same idempotent publisher as ``serve``. What a filter already delivered is not delivered again;
whether a new version of a filter re-delivers is the publisher's rule (its entries carry
``filter_version``).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from engine.config import Config
from engine.decode import VisitBatch, decode_messages
from engine.errors import ConfigError, DecodeError, SourceError
from engine.evaluate import Evaluator, columns_needed
from engine.registry import ActiveFilter, discover
from engine.service.pipeline import run_visit
from engine.service.visitindex import VisitSpan, lookup
from engine.sinks.streams import Publisher
from engine.sources.kafka import consumer_config, peek_visit, schema_of

__all__ = ["ReplayReport", "replay"]


@dataclass
class ReplayReport:
    """What a replay did."""

    visits: int = 0
    alerts: int = 0
    published: int = 0
    skipped: int = 0  # messages that could not be read (they went to the dead letters when served)


def _user_filters(
    filters: str | os.PathLike[str], owner: str, user: str, filter_name: str | None
) -> list[ActiveFilter]:
    fs = discover(filters, owner=owner)
    chosen = [f for f in fs.active if f.user == user and filter_name in (None, f.compiled.name)]
    if not chosen:
        what = f"filter {filter_name!r} of {user}" if filter_name else f"filter of {user}"
        raise ConfigError(f"no usable {what} under {filters}; check --user, --filter and --filters")
    return chosen


def _read_span(
    consumer: Any, topic: str, span: VisitSpan, timeout_s: float
) -> tuple[dict[int, list[bytes]], int]:
    """The bodies of one indexed visit, by schema id, and how many messages were unreadable."""
    from confluent_kafka import TopicPartition

    consumer.assign([TopicPartition(topic, p, lo) for p, (lo, _hi) in sorted(span.offsets.items())])
    left = {p: hi for p, (_lo, hi) in span.offsets.items()}
    found: dict[int, list[bytes]] = {}
    bad = 0
    deadline = time.monotonic() + timeout_s
    while left:
        if time.monotonic() > deadline:
            raise SourceError(
                f"visit {span.visit}: partitions {sorted(left)} of {topic} did not deliver "
                f"their indexed offsets within {timeout_s:.0f} s; is the broker up, and "
                "are the messages still retained?"
            )
        for msg in consumer.consume(1000, 0.5):
            if msg.error() is not None:
                continue
            p, offset = msg.partition(), msg.offset()
            if p not in left or offset > left[p]:
                continue
            if offset == left[p]:
                del left[p]
            body = msg.value() or b""
            schema, reason, _detail = schema_of(body)
            if schema is None:
                bad += 1
                continue
            try:
                if peek_visit(body, schema) != span.visit:
                    continue  # another visit interleaved in the same offset range
            except SourceError:
                bad += 1
                continue
            found.setdefault(schema.schema_id, []).append(body)
    return found, bad


def replay(
    client: redis.Redis,
    bootstrap: str,
    topic: str,
    *,
    user: str,
    filters: str | os.PathLike[str],
    since: float,
    until: float | None = None,
    owner: str = "demo",
    filter_name: str | None = None,
    config: Config,
    timeout_s: float = 30.0,
) -> ReplayReport:
    """Re-evaluate the visits received between ``since`` and ``until`` (Unix seconds) for
    ``user`` (only ``filter_name`` if given) and publish what is new to their stream."""
    chosen = _user_filters(filters, owner, user, filter_name)
    spans = lookup(client, topic, since, until)
    if not spans:
        raise SourceError(
            f"no visit of {topic} was served between {since:.0f} and "
            f"{'now' if until is None else f'{until:.0f}'} (Unix seconds) according "
            "to the visit index; check the topic and the window"
        )
    from confluent_kafka import Consumer

    # assign() reads without joining the group; the id only has to be unique.
    consumer = Consumer(consumer_config(bootstrap, f"minibroker-replay-{uuid.uuid4().hex[:8]}"))
    publisher = Publisher(client, config)
    report = ReplayReport()
    columns: dict[int, set[str] | None] = {}
    try:
        with Evaluator(chosen, config) as evaluator:
            for span in spans:
                by_schema, bad = _read_span(consumer, topic, span, timeout_s)
                report.skipped += bad
                for schema_id, bodies in by_schema.items():
                    if schema_id not in columns:
                        from engine.alerts.schema import load_schema

                        columns[schema_id] = columns_needed(chosen, load_schema(schema_id))

                    def decode(
                        b: list[bytes] = bodies,
                        c: set[str] | None = columns[schema_id],
                        v: int = span.visit,
                    ) -> VisitBatch:
                        return decode_messages(b, c, visit=v)

                    try:
                        vr, _visit, _outcomes = run_visit(decode, chosen, evaluator, publisher)
                    except DecodeError:
                        report.skipped += len(bodies)
                        continue
                    report.alerts += vr.alerts
                    report.published += vr.published
                report.visits += 1
    finally:
        consumer.close()
    return report
