"""Avro: a match's alert as an Avro object container file, readable by any Avro tool."""

from __future__ import annotations

import io

import fastavro

from engine.alerts.schema import load_schema
from engine.alerts.wire import unframe
from engine.errors import ConfigError

__all__ = ["render_avro"]


def render_avro(entry_id: str, fields: dict[bytes, bytes]) -> bytes:
    """One record (the alert as Rubin sent it) with its schema embedded."""
    body = fields.get(b"alert")
    if not body:
        raise ConfigError(
            f"entry {entry_id} has no stored packet (it expired after the retention period)"
        )
    schema_id, datum = unframe(body)
    schema = load_schema(schema_id)
    record = fastavro.schemaless_reader(io.BytesIO(datum), schema.avro, schema.avro)
    buffer = io.BytesIO()
    fastavro.writer(buffer, schema.avro, [record])
    return buffer.getvalue()
