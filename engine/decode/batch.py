"""Decode: raw Avro alerts of one visit → one ``pyarrow.RecordBatch``.

Two inputs, one output:

- a night block (``count`` datums back to back, see :mod:`engine.sources.night`);
- Confluent-framed Kafka message bodies (magic byte 0, 4-byte big-endian schema id, one datum).

Both become a :class:`VisitBatch`: the Arrow batch with the schema of :mod:`engine.alerts.schema`
(optionally projected to the columns filters read) and, per alert, the datum's bytes where they
lie, so delivery can forward the full packet without re-encoding it.

``fastavro`` is the reference decoder: :func:`decode_reference` is the slow, obviously-correct
path that every faster decoder is tested against.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import fastavro
import pyarrow as pa

from engine.alerts.schema import AlertSchema, load_schema, project_schema
from engine.alerts.wire import HEADER_SIZE, frame, unframe
from engine.decode import _fast
from engine.errors import ConfigError, DecodeError, MinibrokerWarning
from engine.sources.night import NightBlock

__all__ = [
    "VisitBatch",
    "decode_block",
    "decode_messages",
    "decode_reference",
]


@dataclass(frozen=True)
class VisitBatch:
    """One visit's alerts, decoded.

    Attributes
    ----------
    visit : int
        The visit id.
    schema : AlertSchema
        The alert schema the datums were written with.
    batch : pyarrow.RecordBatch
        One row per alert; columns as in ``schema.arrow``, possibly projected.
    raw : sequence of memoryview
        Each alert's Avro datum (no wire header), in row order.
    """

    visit: int
    schema: AlertSchema
    batch: pa.RecordBatch
    raw: Sequence[memoryview] = field(repr=False)

    def __len__(self) -> int:
        return self.batch.num_rows

    def wire(self, row: int) -> bytes:
        """The full alert of ``row`` as a Kafka message body (Confluent header + datum)."""
        return frame(self.raw[row], self.schema.schema_id)


def decode_reference(
    datums: Sequence[bytes | memoryview], schema: AlertSchema, columns: Iterable[str] | None = None
) -> pa.RecordBatch:
    """Decode datums with fastavro into dicts, then ``from_pylist``: slow and obviously right."""
    avro = schema.avro
    records = [fastavro.schemaless_reader(io.BytesIO(d), avro, avro) for d in datums]
    full = pa.RecordBatch.from_pylist(records, schema=schema.arrow)
    target = project_schema(schema.arrow, columns)
    if target == schema.arrow:
        return full
    return pa.RecordBatch.from_pylist(full.select(target.names).to_pylist(), schema=target)


def _split_block(block: NightBlock, schema: AlertSchema) -> list[memoryview]:
    """Find datum boundaries in a block by reading it with fastavro (the reference walker)."""
    bio = io.BytesIO(block.data)
    bounds = [0]
    avro = schema.avro
    for i in range(block.count):
        try:
            fastavro.schemaless_reader(bio, avro, avro)
        except Exception as exc:
            raise DecodeError(
                f"visit {block.visit}: alert {i} at byte {bounds[-1]} of its block is corrupt "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        bounds.append(bio.tell())
    return [block.data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def decode_block(
    block: NightBlock, schema: AlertSchema, columns: Iterable[str] | None = None
) -> VisitBatch:
    """Decode one night block (one visit) into a :class:`VisitBatch`."""
    fast = _fast_decoder()
    if fast is not None:
        batch, raw = fast.decode_block(
            block.data, block.count, schema, columns, where=f"visit {block.visit}"
        )
        return VisitBatch(block.visit, schema, batch, raw)
    raw = _split_block(block, schema)
    return VisitBatch(block.visit, schema, decode_reference(raw, schema, columns), raw)


def decode_messages(
    bodies: Sequence[bytes | memoryview],
    columns: Iterable[str] | None = None,
    *,
    visit: int | None = None,
) -> VisitBatch:
    """Decode Confluent-framed message bodies of one visit into a :class:`VisitBatch`.

    Every body must carry the same schema id (Rubin does not change schema mid-visit).
    """
    if not bodies:
        raise DecodeError("no messages to decode")
    schema_id, _ = unframe(bodies[0], where="message 0")
    try:
        schema = load_schema(schema_id)
    except Exception as exc:
        raise DecodeError(
            f"message 0: schema id {schema_id} is not a known LSST alert schema: {exc}"
        ) from exc
    fast = _fast_decoder()
    raw: Sequence[memoryview]
    if fast is not None:
        batch = fast.decode_framed(bodies, schema, columns)
        raw = _Datums(bodies)
    else:
        datums = []
        for i, body in enumerate(bodies):
            sid, datum = unframe(body, where=f"message {i}")
            if sid != schema_id:
                raise DecodeError(
                    f"message {i}: schema id {sid} differs from the visit's {schema_id}"
                )
            datums.append(datum)
        try:
            batch = decode_reference(datums, schema, columns)
        except Exception as exc:
            raise DecodeError(
                f"visit {visit}: a message is corrupt ({type(exc).__name__}: {exc})"
            ) from exc
        raw = datums
    if visit is None:
        visit = _visit_of(batch)
    return VisitBatch(visit, schema, batch, raw)


class _Datums(Sequence[memoryview]):
    """The datums of framed bodies, each sliced out when asked for: delivery reads a few rows
    of a visit, and slicing all 10,000 up front would cost more than decoding a small batch."""

    __slots__ = ("_bodies",)

    def __init__(self, bodies: Sequence[bytes | memoryview]) -> None:
        self._bodies = bodies

    def __len__(self) -> int:
        return len(self._bodies)

    def __getitem__(self, index: Any) -> Any:  # an int gives a datum, a slice a list of them
        if isinstance(index, slice):
            return [memoryview(b)[HEADER_SIZE:] for b in self._bodies[index]]
        return memoryview(self._bodies[index])[HEADER_SIZE:]


def _visit_of(batch: pa.RecordBatch) -> int:
    """The visit of the first alert, or -1 when the projection left ``diaSource.visit`` out."""
    if "diaSource" in batch.schema.names and batch.num_rows:
        struct = batch.column("diaSource")
        if struct.type.get_field_index("visit") >= 0:
            return int(struct.field("visit")[0].as_py())
    return -1


_said_slow = False


def _fast_decoder() -> ModuleType | None:
    """The compiled decoder when it can run here (gcc present, not switched off by
    the ``decoder`` setting); None means use the fastavro reference, about a hundred times
    slower: a one-line warning says so once per process, unless it was switched off on purpose."""
    if _fast.available():
        return _fast
    if _fast.settings().decoder == "fast":
        raise ConfigError(
            f"the decoder setting asks for the fast decoder, but {_fast.unavailable_reason()}; "
            "install gcc, or set MINIBROKER_DECODER=auto to fall back to fastavro"
        )
    global _said_slow
    if not _said_slow and _fast.settings().decoder != "reference":
        _said_slow = True  # once per process: every visit would say it again
        warnings.warn(
            MinibrokerWarning(
                f"fast decoding is off ({_fast.unavailable_reason()}): alerts are decoded with fastavro, "
                "about 100 times slower; results are the same"
            ),
            stacklevel=3,
        )
    return None
