"""Test data helpers: where the shared real alert packets are (Confluent-framed Kafka bodies,
many versions), and a deep comparison for decoded alerts."""

from __future__ import annotations

import math
import os
from pathlib import Path

# shared/ sits beside the repository, for developers and in CI alike.
SHARED_ALERTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "alerts"
if not SHARED_ALERTS.is_dir():
    SHARED_ALERTS = Path(os.environ.get("MINIBROKER_SHARED_ALERTS", "/work/shared/data/alerts"))


def packet_files(folder: str = "") -> list[Path]:
    """Every shared real alert packet, optionally of one folder (e.g. ``lsstcam/v11_1``)."""
    return sorted((SHARED_ALERTS / folder).rglob("*.avro"))


def assert_same(a: object, b: object, path: str = "") -> None:
    """Deep equality of decoded alerts: same keys, lengths, types and values, NaN equal to NaN;
    a failure names the nested path."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        assert math.isnan(b), path
    else:
        assert type(a) is type(b) and a == b, f"{path}: {a!r} != {b!r}"
