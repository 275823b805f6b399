"""The unit every source hands on: one visit's raw alerts, Avro datums back to back."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["NightBlock"]


@dataclass(frozen=True)
class NightBlock:
    """The raw alerts of one visit: ``count`` Avro datums back to back in ``data``."""

    visit: int
    count: int
    data: memoryview
