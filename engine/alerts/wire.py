"""The Confluent wire format Kafka carries alerts in: magic byte 0, a 4-byte big-endian schema
id (``major * 100 + minor`` for LSST schemas), then one schemaless Avro datum.

The one place that frames and unframes bodies; everything else calls these.
"""

from __future__ import annotations

import struct

from engine.errors import DecodeError

__all__ = ["HEADER_SIZE", "frame", "not_framed", "too_short", "unframe"]

_HEADER = struct.Struct(">bI")
HEADER_SIZE = _HEADER.size


def frame(datum: bytes | memoryview, schema_id: int) -> bytes:
    """Prefix a datum with the Confluent wire header (magic 0, big-endian schema id)."""
    return _HEADER.pack(0, schema_id) + bytes(datum)


def unframe(body: bytes | memoryview, *, where: str = "message") -> tuple[int, memoryview]:
    """Split a Confluent-framed body into ``(schema_id, datum)``; raise DecodeError if malformed."""
    view = memoryview(body)
    if len(view) < HEADER_SIZE:
        raise too_short(where, len(view))
    magic, schema_id = _HEADER.unpack_from(view)
    if magic != 0:
        raise not_framed(where, magic)
    return schema_id, view[HEADER_SIZE:]


def too_short(where: str, size: int) -> DecodeError:
    """The error for a body of ``size`` bytes, shorter than the wire header (the fast decoder
    checks headers in C and reports with the same words)."""
    return DecodeError(f"{where}: {size} bytes is too short for a Confluent wire header")


def not_framed(where: str, magic: int) -> DecodeError:
    """The error for a body whose first byte is ``magic`` instead of 0."""
    return DecodeError(
        f"{where}: magic byte is {magic}, not 0; this is not a Confluent-framed Avro alert"
    )
