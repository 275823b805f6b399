"""Sample-night files: Avro Object Container Files with one block per visit.

A night is a standard Avro OCF (any Avro tool reads it) with two conventions that let the engine
read it at the speed of the stream instead of record by record:

- each visit's alerts form one OCF block, written in time order, uncompressed (``null`` codec);
- the header metadata ``minibroker.visits`` lists the visit ids of the blocks, in order.

Reading maps the file and hands out each block's bytes where they lie, so the decoder walks
the datums in place. An OCF written by anyone else still reads: its records are regrouped by
``diaSource.visit`` (slower, said in a warning).
"""

from __future__ import annotations

import json
import mmap
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import fastavro

from engine.alerts.schema import AlertSchema, load_schema, parse_version
from engine.errors import SourceError

__all__ = ["NightBlock", "NightWriter", "read_night", "night_info"]

_MAGIC = b"Obj\x01"
_VISITS_KEY = "minibroker.visits"
_SCHEMA_KEY = "minibroker.schema_version"


@dataclass(frozen=True)
class NightBlock:
    """The raw alerts of one visit: ``count`` Avro datums back to back in ``data``."""

    visit: int
    count: int
    data: memoryview


class NightWriter:
    """Write a night, one visit at a time, as an OCF with one block per visit.

    Each visit's block is built in memory before it is written (a 40,000-alert visit with
    cutouts is several GB). Use as a context manager::

        with NightWriter(path, schema, visits=[v1, v2]) as night:
            night.write_visit(v1, alerts_of_v1)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        schema: AlertSchema,
        visits: Sequence[int],
        sync_marker: bytes | None = None,
    ):
        self.path = Path(path)
        # A fixed marker makes the same alerts give the same bytes (OCF draws one at random).
        self._sync = sync_marker
        self.schema = schema
        self._visits = list(visits)
        self._written: list[int] = []
        self._fo: BinaryIO | None = None
        self._writer: Any = None

    def __enter__(self) -> NightWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + ".partial")
        self._fo = open(self._tmp, "wb")
        metadata = {_VISITS_KEY: json.dumps(self._visits), _SCHEMA_KEY: self.schema.name}
        # A sync interval larger than any visit: blocks end only where write_visit flushes.
        self._writer = fastavro.write.Writer(
            self._fo, self.schema.avro, codec="null", sync_interval=2**62, metadata=metadata,
            sync_marker=self._sync,
        )
        return self

    def write_visit(self, visit: int, alerts: Iterable[dict[str, Any]]) -> None:
        """Append one visit's alerts (dicts in the schema's shape) as one block."""
        expected = self._visits[len(self._written)] if len(self._written) < len(self._visits) else None
        if visit != expected:
            raise SourceError(f"visit {visit} written out of the declared order (expected {expected})")
        for alert in alerts:
            self._writer.write(alert)
        self._writer.flush()
        self._written.append(visit)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self._fo is not None
        self._writer.flush()
        self._fo.close()
        if exc_type is None and self._written == self._visits:
            os.replace(self._tmp, self.path)  # never leave a half-written night behind
        else:
            self._tmp.unlink(missing_ok=True)


def _read_long(buf: memoryview | bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(buf):
            raise SourceError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7


def _read_header(buf: memoryview) -> tuple[dict[str, bytes], bytes, int]:
    if bytes(buf[:4]) != _MAGIC:
        raise SourceError("not an Avro object container file (bad magic)")
    pos = 4
    meta: dict[str, bytes] = {}
    while True:
        n, pos = _read_long(buf, pos)
        if n == 0:
            break
        if n < 0:  # a negative count is followed by the block's byte size
            n = -n
            _, pos = _read_long(buf, pos)
        for _ in range(n):
            klen, pos = _read_long(buf, pos)
            key = bytes(buf[pos : pos + klen]).decode()
            pos += klen
            vlen, pos = _read_long(buf, pos)
            meta[key] = bytes(buf[pos : pos + vlen])
            pos += vlen
    sync = bytes(buf[pos : pos + 16])
    return meta, sync, pos + 16


def night_info(path: str | os.PathLike[str]) -> tuple[AlertSchema, list[int] | None]:
    """The schema of a night file and its visit list (None for a foreign OCF)."""
    try:
        with open(path, "rb") as fo:
            head = fo.read(1 << 20)
    except FileNotFoundError:
        raise SourceError(f"{path}: no such night file; make one with `minibroker simulate --out {path}`") from None
    meta, _, _ = _read_header(memoryview(head))
    visits = json.loads(meta[_VISITS_KEY]) if _VISITS_KEY in meta else None
    return _schema_of(meta, path), visits


def _schema_of(meta: dict[str, bytes], path: object) -> AlertSchema:
    if _SCHEMA_KEY in meta:
        return load_schema(meta[_SCHEMA_KEY].decode())
    name = json.loads(meta["avro.schema"]).get("namespace", "")  # e.g. "lsst.v11_1"
    try:
        return load_schema(parse_version(name.rsplit(".", 1)[-1]))
    except Exception as exc:
        raise SourceError(
            f"{path}: cannot tell which LSST alert schema this file uses (namespace {name!r}); "
            "write it with `minibroker simulate` or an lsst-alert-packet schema"
        ) from exc


def read_night(path: str | os.PathLike[str]) -> Iterator[NightBlock]:
    """Yield the visits of a night file in order, each as raw datums where they lie."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path}: no such night file; make one with `minibroker simulate --out {path}`")
    with open(path, "rb") as fo:
        size = os.fstat(fo.fileno()).st_size
        if size == 0:
            raise SourceError(f"{path}: empty file")
        mm = mmap.mmap(fo.fileno(), 0, access=mmap.ACCESS_READ)
    buf = memoryview(mm)
    meta, sync, pos = _read_header(buf)
    codec = meta.get("avro.codec", b"null").decode()
    visits = json.loads(meta[_VISITS_KEY]) if _VISITS_KEY in meta else None
    if visits is None or codec != "null":
        warnings.warn(
            f"{path} was not written by minibroker (or is compressed): regrouping its records by "
            "visit record by record, which is slow",
            stacklevel=2,
        )
        yield from _regroup(path, _schema_of(meta, path))
        return
    index = 0
    while pos < len(buf):
        count, pos = _read_long(buf, pos)
        nbytes, pos = _read_long(buf, pos)
        data = buf[pos : pos + nbytes]
        pos += nbytes
        if bytes(buf[pos : pos + 16]) != sync:
            raise SourceError(f"{path}: block {index} is corrupt (sync marker mismatch at byte {pos})")
        pos += 16
        if count == 0:
            continue
        if index >= len(visits):
            raise SourceError(f"{path}: more blocks than the {len(visits)} visits its header lists")
        yield NightBlock(visit=visits[index], count=count, data=data)
        index += 1


def _regroup(path: Path, schema: AlertSchema) -> Iterator[NightBlock]:
    import io

    by_visit: dict[int, io.BytesIO] = {}
    counts: dict[int, int] = {}
    with open(path, "rb") as fo:
        for record in fastavro.reader(fo):
            visit = int(record["diaSource"]["visit"])
            out = by_visit.setdefault(visit, io.BytesIO())
            fastavro.schemaless_writer(out, schema.avro, record)
            counts[visit] = counts.get(visit, 0) + 1
    for visit in sorted(by_visit):
        yield NightBlock(visit=visit, count=counts[visit], data=memoryview(by_visit[visit].getvalue()))
