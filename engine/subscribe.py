"""Subscribe: read a user's stream (rendering is :mod:`engine.formats`).

Reading starts at new entries by default; ``start="0"`` replays everything retained, and a
stream id or a UTC time (``2026-11-25T03:00``) replays from that point on.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import redis

from engine.errors import ConfigError
from engine.sinks.streams import stream_key

__all__ = ["follow", "start_id"]

def start_id(since: str | None) -> str:
    """Stream id to read after: ``$`` (new only), ``0`` (all), an id, or an ISO time."""
    if since is None or since in ("$", "0", "now"):
        return "$" if since in (None, "now") else since
    if "-" in since and since.split("-")[0].isdigit() and len(since.split("-")) == 2:
        return since
    try:
        when = dt.datetime.fromisoformat(since)
    except ValueError:
        raise ConfigError(f"--since {since!r}: give 'now', '0' (everything kept), a stream id or a time like 2026-11-25T03:00") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return f"{int(when.timestamp() * 1000)}-0"


def follow(client: redis.Redis, user: str, *, since: str | None = None, block_ms: int = 1000,
           stop_when_idle: bool = False) -> Iterator[tuple[str, dict[bytes, bytes]]]:
    """Yield ``(entry_id, fields)`` from a user's stream as they arrive."""
    last = start_id(since)
    key = stream_key(user)
    while True:
        batch = client.xread({key: last}, block=block_ms, count=500)
        if not batch:
            if stop_when_idle:
                return
            continue
        for entry_id, fields in batch[0][1]:
            last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            yield last, fields
