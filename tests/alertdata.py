"""Where the shared real alert packets are (Confluent-framed Kafka bodies, many versions)."""

from __future__ import annotations

import os
from pathlib import Path

# shared/ sits beside the repository, for developers and in CI alike.
SHARED_ALERTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "alerts"
if not SHARED_ALERTS.is_dir():
    SHARED_ALERTS = Path(os.environ.get("MINIBROKER_SHARED_ALERTS", "/work/shared/data/alerts"))


def packet_files(folder: str = "") -> list[Path]:
    """Every shared real alert packet, optionally of one folder (e.g. ``lsstcam/v11_1``)."""
    return sorted((SHARED_ALERTS / folder).rglob("*.avro"))
