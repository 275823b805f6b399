"""Fast Avro → Arrow decoding: C generated from the alert schema, built with gcc, run by ctypes.

This is the module ``engine.decode._fast_decoder()`` hands out. It decodes a visit's datums
where they lie (a night block, or the Kafka bodies one by one) straight into Arrow buffers and
returns exactly what ``engine.decode.decode_reference`` returns, 100× faster or more.

One decoder is generated per (schema version, projection): see :mod:`.emit` for the code it
writes and :mod:`.build` for the compiler cache (under the ``cache_dir`` setting; a warm
cache never starts the compiler). Without a C compiler, :func:`available` is False and callers
use the reference decoder; the ``decoder`` setting (``MINIBROKER_DECODER=reference``) switches
it off on purpose. Settings come from :mod:`engine.config` through :func:`configure`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import pyarrow as pa

from engine.alerts.schema import AlertSchema, project_schema
from engine.errors import ConfigError

from .build import compile_cached, compiler, configure, settings
from .emit import emit
from .runtime import Decoder

__all__ = [
    "available",
    "configure",
    "decode_block",
    "decode_datums",
    "decoder",
    "unavailable_reason",
]

_decoders: dict[tuple[object, ...], Decoder] = {}
_lock = threading.Lock()


def unavailable_reason() -> str | None:
    """Why the fast decoder is off (None when it is available)."""
    if settings().decoder == "reference":
        return "switched off by the decoder setting (MINIBROKER_DECODER=reference)"
    if compiler() is None:
        return "no C compiler found (install gcc or set MINIBROKER_CC)"
    return None


def available() -> bool:
    """True when decoders can be built here (a C compiler exists and nothing switched it off)."""
    return unavailable_reason() is None


def decoder(schema: AlertSchema, columns: Iterable[str] | None) -> Decoder:
    """The compiled decoder for a schema version and projection (built once per process).

    Raises
    ------
    ConfigError
        The fast decoder is unavailable or the compiler failed.
    """
    cols = None if columns is None else tuple(columns)
    quick = (schema.version, cols)
    found = _decoders.get(quick)
    if found is not None:
        return found
    target = project_schema(schema.arrow, cols)
    exact = (schema.version, target.serialize().to_pybytes())
    found = _decoders.get(exact)
    if found is None:
        reason = unavailable_reason()
        if reason:
            raise ConfigError(f"fast decoder unavailable: {reason}")
        # Built outside the lock: several decoders may compile at once (the disk cache is
        # race-safe; if two threads build the same one, the first to finish is kept).
        label = f"lsst alert schema {schema.name}, columns {list(target.names)}"
        source, layout = emit(schema.avro, target, label)
        name = f"alert_{schema.version[0]}_{schema.version[1]}"
        built = Decoder(str(compile_cached(source, name)), layout)
        with _lock:
            found = _decoders.setdefault(exact, built)
    with _lock:
        _decoders[quick] = found
    return found


def decode_block(
    data: memoryview, count: int, schema: AlertSchema, columns: Iterable[str] | None, where: str
) -> tuple[pa.RecordBatch, list[memoryview]]:
    """Decode one night block: ``count`` datums back to back in ``data``.

    Parameters
    ----------
    data : memoryview
        The block's bytes (read where they lie; typically a slice of a memory-mapped night).
    count : int
        Number of datums in the block.
    schema : AlertSchema
        The schema the datums were written with.
    columns : iterable of str or None
        Dotted paths to keep (see ``engine.alerts.schema.project_schema``); None keeps everything.
    where : str
        Prefix for error messages, e.g. ``"visit 2025090500225"``.

    Returns
    -------
    tuple of (pyarrow.RecordBatch, list of memoryview)
        The batch, and each datum's slice of ``data`` in row order.

    Raises
    ------
    DecodeError
        A datum is corrupt or truncated; the message names the alert and the byte offset.
    """
    return decoder(schema, columns).decode_block(data, count, where)


def decode_datums(
    datums: Sequence[bytes | memoryview],
    schema: AlertSchema,
    columns: Iterable[str] | None,
    *,
    where: str = "message",
) -> pa.RecordBatch:
    """Decode one datum per element (Kafka bodies without their 5-byte header), each in place.

    Parameters
    ----------
    datums : sequence of bytes-like
        One Avro datum each; nothing is joined or copied before decoding.
    schema : AlertSchema
        The schema the datums were written with.
    columns : iterable of str or None
        Dotted paths to keep; None keeps everything.
    where : str
        Prefix for error messages; the datum's index follows it.

    Returns
    -------
    pyarrow.RecordBatch
        Equal to ``engine.decode.decode_reference(datums, schema, columns)``.

    Raises
    ------
    DecodeError
        A datum is corrupt, truncated or has trailing bytes.
    """
    return decoder(schema, columns).decode_datums(datums, where)


def decode_framed(
    bodies: Sequence[bytes | memoryview],
    schema: AlertSchema,
    columns: Iterable[str] | None,
    *,
    where: str = "message",
) -> pa.RecordBatch:
    """Decode Kafka bodies (Confluent header + datum) in place; the headers are checked and
    skipped in C (a Python loop over 10,000 headers costs ~4 ms, more than a small batch's decode).

    Raises
    ------
    DecodeError
        A body is shorter than the header, its magic byte is not 0, its schema id is not
        ``schema.schema_id``, or its datum is corrupt; the message names the body's index.
    """
    return decoder(schema, columns).decode_framed(bodies, schema.schema_id, where)
