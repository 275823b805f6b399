"""Subscribe: read a user's stream and render its entries (JSON lines today; VOEvent later).

Reading starts at new entries by default; ``start="0"`` replays everything retained, and a
stream id or a UTC time (``2026-11-25T03:00``) replays from that point on.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Iterator
from typing import Any

import fastavro
import redis

from engine.decode import unframe
from engine.errors import ConfigError
from engine.publish import stream_key
from engine.schema import load_schema

__all__ = ["follow", "render_json", "start_id"]

_NUMERIC = {"visit", "diaSourceId", "diaObjectId", "ssObjectId", "schema_id"}
_FLOAT = {"ra", "dec", "midpointMjdTai", "snr", "reliability"}


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


def render_json(entry_id: str, fields: dict[bytes, bytes], *, full: bool = False) -> str:
    """One JSON line for an entry; with ``full`` the decoded alert (cutouts as byte counts)."""
    out: dict[str, Any] = {"id": entry_id}
    for k, v in fields.items():
        key = k.decode()
        if key == "alert":
            out["alert_bytes"] = len(v)
            if full:
                out["alert"] = _decoded(v)
            continue
        text = v.decode()
        if key in _NUMERIC and text:
            out[key] = int(text)
        elif key in _FLOAT and text:
            out[key] = float(text)
        else:
            out[key] = text or None
    return json.dumps(out)


def _decoded(body: bytes) -> dict[str, Any]:
    schema_id, datum = unframe(body)
    schema = load_schema(schema_id)
    record = fastavro.schemaless_reader(io.BytesIO(datum), schema.avro, schema.avro)
    for key, value in list(record.items()):
        if isinstance(value, bytes):
            record[key] = {"bytes": len(value)}
    return json.loads(json.dumps(record, default=str))
