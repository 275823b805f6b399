"""JSON lines: one object per stream entry, ids as exact integers, the packet optionally decoded."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro

from engine.alerts.schema import load_schema
from engine.alerts.wire import unframe

__all__ = ["render_json", "render_json_file"]

_NUMERIC = {
    "visit",
    "diaSourceId",
    "diaObjectId",
    "ssObjectId",
    "schema_id",
    "alerts",
    "count",
    "cap",
}
_FLOAT = {"ra", "dec", "midpointMjdTai", "snr", "reliability"}


def render_json(entry_id: str, fields: dict[bytes, bytes], *, full: bool = False) -> str:
    """One JSON line for an entry; with ``full`` the decoded alert (cutouts as byte counts)."""
    out: dict[str, Any] = {"id": entry_id}
    for k, v in fields.items():
        key = k.decode()
        if key == "alert":
            out["alert_bytes"] = len(v)
            if full and v:
                out["alert"] = _decoded(v)
            continue
        text = v.decode()
        if key in _NUMERIC and text:
            out[key] = int(text)
        elif key in _FLOAT and text:
            out[key] = float(text)
        elif key == "filters" and text:  # a visit marker's per-filter counts
            out[key] = json.loads(text)
        else:
            out[key] = text or None
    return json.dumps(out)


def render_json_file(entry_id: str, fields: dict[bytes, bytes]) -> bytes:
    """A match as a JSON document with its decoded alert (``subscribe --out DIR``)."""
    return (render_json(entry_id, fields, full=True) + "\n").encode()


def _decoded(body: bytes) -> dict[str, Any]:
    schema_id, datum = unframe(body)
    schema = load_schema(schema_id)
    record = fastavro.schemaless_reader(io.BytesIO(datum), schema.avro, schema.avro)
    assert isinstance(record, dict)  # an alert is an Avro record
    for key, value in list(record.items()):
        if isinstance(value, bytes):
            record[key] = {"bytes": len(value)}
    decoded: dict[str, Any] = json.loads(json.dumps(record, default=str))
    return decoded
