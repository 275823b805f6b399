"""The Confluent wire format Kafka carries alerts in: magic byte 0, a 4-byte big-endian schema
id (``major * 100 + minor`` for LSST schemas), then one schemaless Avro datum.

The one place that frames and unframes bodies; everything else calls these.
"""

from __future__ import annotations

import struct

from engine.errors import DecodeError

__all__ = ["HEADER_SIZE", "frame", "unframe"]

_HEADER = struct.Struct(">bI")
HEADER_SIZE = _HEADER.size


def frame(datum: bytes | memoryview, schema_id: int) -> bytes:
    """Prefix a datum with the Confluent wire header (magic 0, big-endian schema id)."""
    return _HEADER.pack(0, schema_id) + bytes(datum)


def unframe(body: bytes | memoryview, *, where: str = "message") -> tuple[int, memoryview]:
    """Split a Confluent-framed body into ``(schema_id, datum)``; raise DecodeError if malformed."""
    view = memoryview(body)
    if len(view) < 5:
        raise DecodeError(f"{where}: {len(view)} bytes is too short for a Confluent wire header")
    magic, schema_id = _HEADER.unpack_from(view)
    if magic != 0:
        raise DecodeError(
            f"{where}: magic byte is {magic}, not 0; this is not a Confluent-framed Avro alert"
        )
    return schema_id, view[5:]
