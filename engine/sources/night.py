"""Sample-night files: Avro Object Container Files with one block per visit.

A night is a standard Avro OCF (any Avro tool reads it) with two conventions that let the engine
read it at the speed of the stream instead of record by record:

- each visit's alerts form one OCF block, written in time order, uncompressed (``null`` codec);
- the header metadata ``minibroker.visits`` lists the visit ids of the blocks, in order.

Reading maps the file and hands out each block's bytes where they lie, so the decoder walks
the datums in place.

:func:`open_night` is the one door for every form a scientist has alerts in: a minibroker night,
an Avro container file written by any other tool (:mod:`engine.sources.foreign`), or a directory of
single-alert files (:mod:`engine.sources.packets`). The last two are regrouped by ``diaSource.visit``,
which is slower; a one-line :class:`~engine.errors.MinibrokerWarning` says so.
"""

from __future__ import annotations

import json
import mmap
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

import fastavro

from engine.alerts.schema import AlertSchema, load_schema
from engine.errors import MinibrokerWarning, SchemaError, SourceError
from engine.sources.block import NightBlock
from engine.sources.foreign import container_blocks
from engine.sources.packets import read_packets

__all__ = [
    "Night",
    "NightBlock",
    "NightForm",
    "NightWriter",
    "night_info",
    "open_night",
    "read_night",
]

_MAGIC = b"Obj\x01"
_VISITS_KEY = "minibroker.visits"
_SCHEMA_KEY = "minibroker.schema_version"


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
        # The header's schema JSON is written from an ordered copy: fastavro's parsed schemas
        # order some keys by set iteration, which changes with the process's hash seed.
        self._writer = fastavro.write.Writer(
            self._fo,
            _ordered(self.schema.avro),
            codec="null",
            sync_interval=2**62,
            metadata=metadata,
            sync_marker=self._sync or b"",
        )
        return self

    def write_visit(self, visit: int, alerts: Iterable[dict[str, Any]]) -> None:
        """Append one visit's alerts (dicts in the schema's shape) as one block."""
        expected = (
            self._visits[len(self._written)] if len(self._written) < len(self._visits) else None
        )
        if visit != expected:
            raise SourceError(
                f"visit {visit} written out of the declared order (expected {expected})"
            )
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


def _ordered(t: Any) -> Any:
    """``t`` with every mapping's keys sorted (lists keep their order), fastavro's private
    bookkeeping keys dropped."""
    if isinstance(t, dict):
        return {k: _ordered(t[k]) for k in sorted(t) if not k.startswith("__")}
    if isinstance(t, list):
        return [_ordered(x) for x in t]
    return t


class _Truncated(Exception):
    """The buffer ended inside what was being read."""


def _read_long(buf: memoryview | bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(buf):
            raise _Truncated
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7


def _read_header(buf: memoryview) -> tuple[dict[str, bytes], bytes, int]:
    """The metadata, sync marker and end of an OCF header; raises _Truncated if it ends early."""
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
            key = bytes(buf[pos : pos + klen]).decode(errors="replace")
            pos += klen
            vlen, pos = _read_long(buf, pos)
            if pos + vlen > len(buf):
                raise _Truncated
            meta[key] = bytes(buf[pos : pos + vlen])
            pos += vlen
    if pos + 16 > len(buf):
        raise _Truncated
    sync = bytes(buf[pos : pos + 16])
    return meta, sync, pos + 16


class NightForm(StrEnum):
    """The forms of alerts on disk that :func:`open_night` reads."""

    MINIBROKER = "minibroker night"  # one block per visit: read where it lies
    CONTAINER = "Avro container file"  # written by any other Avro tool
    PACKETS = "packet directory"  # one alert per file


@dataclass(frozen=True)
class Night:
    """Alerts of a night, whatever form they came in, ready to be read visit by visit.

    Attributes
    ----------
    path : Path
        The file or directory.
    form : NightForm
        Which form the alerts came in.
    schema : AlertSchema
        The schema every block's datums are written in.
    visits : list of int
        The visit ids, in the order :meth:`blocks` yields them.
    """

    path: Path
    form: NightForm
    schema: AlertSchema
    visits: list[int]
    _blocks: list[NightBlock] | None = field(default=None, repr=False)

    def blocks(self) -> Iterator[NightBlock]:
        """Each visit's raw alerts, in order (a minibroker night is read where it lies)."""
        if self._blocks is not None:
            return iter(self._blocks)
        return _read_blocks(self.path, self.visits)


def open_night(path: str | os.PathLike[str], *, schema: AlertSchema | None = None) -> Night:
    """Open alerts in any form a scientist has them (see the module doc).

    ``schema`` is the version of bare Avro datums in a packet directory, when known.

    Raises
    ------
    SourceError
        The path is missing, not an alert file or directory, truncated (the message gives the
        byte where it ends) or corrupt; every message names the path.
    """
    path = Path(path)
    if path.is_dir():
        key = _identity(path, schema)
        if _last_walked and _last_walked[0] == key:
            return _last_walked[1]
        found, blocks = read_packets(path, schema)
        _slow(path, "a directory of single-alert files")
        return _remember(
            key, Night(path, NightForm.PACKETS, found, [b.visit for b in blocks], blocks)
        )
    if _is_packet(path):
        key = _identity(path, schema)
        if _last_walked and _last_walked[0] == key:
            return _last_walked[1]
        found, blocks = read_packets(path, schema)
        return _remember(
            key, Night(path, NightForm.PACKETS, found, [b.visit for b in blocks], blocks)
        )
    meta, codec = _head(path)
    if _VISITS_KEY in meta and _SCHEMA_KEY in meta and codec == "null":
        return Night(
            path,
            NightForm.MINIBROKER,
            load_schema(meta[_SCHEMA_KEY].decode()),
            json.loads(meta[_VISITS_KEY]),
        )
    key = _identity(path, schema)
    if _last_walked and _last_walked[0] == key:
        return _last_walked[1]
    found, blocks = container_blocks(path)
    _slow(
        path,
        "an Avro container file not written by minibroker"
        + (f" ({codec} codec)" if codec != "null" else ""),
    )
    return _remember(
        key, Night(path, NightForm.CONTAINER, found, [b.visit for b in blocks], blocks)
    )


# The last night that had to be walked alert by alert: callers often ask for its visits
# (night_info) and then its blocks (read_night); one walk, one warning. One entry only, so a
# large file is not held after the next is opened.
_last_walked: list[Any] = []


def _identity(path: Path, schema: AlertSchema | None) -> tuple[object, ...]:
    """What makes two opens of ``path`` the same: its place, size and time of change (of every
    file, for a directory) and the schema asked for."""
    entries = sorted(path.iterdir()) if path.is_dir() else [path]
    stats = [(p.name, st.st_size, st.st_mtime_ns) for p in entries for st in [p.stat()]]
    return (str(path.resolve()), tuple(stats), None if schema is None else schema.name)


def _remember(key: tuple[object, ...], night: Night) -> Night:
    _last_walked[:] = [key, night]
    return night


def _slow(path: Path, what: str) -> None:
    warnings.warn(
        MinibrokerWarning(
            f"{path} is {what}: its alerts were walked one by one to group them by visit, which is "
            "slower than a night written by `minibroker simulate`"
        ),
        stacklevel=3,
    )


def _is_packet(path: Path) -> bool:
    """Whether ``path`` is one Kafka message body of a known LSST schema (wire header 0 + id)."""
    try:
        with open(path, "rb") as fo:
            head = fo.read(5)
    except OSError:
        return False  # _head says what is wrong with it
    if len(head) < 5 or head[0] != 0:
        return False
    try:
        load_schema(int.from_bytes(head[1:5], "big"))
    except SchemaError:
        return False
    return True


def _head(path: Path) -> tuple[dict[str, bytes], str]:
    """An OCF's header metadata and codec; a SourceError naming ``path`` if it is not one."""
    try:
        with open(path, "rb") as fo:
            size = os.fstat(fo.fileno()).st_size
            head = fo.read(1 << 20)
    except FileNotFoundError:
        raise SourceError(
            f"{path}: no such night file or directory; make one with "
            f"`minibroker simulate --out {path}`"
        ) from None
    except IsADirectoryError:  # pragma: no cover - handled by open_night
        raise
    except OSError as exc:
        raise SourceError(f"{path}: cannot read it ({exc.strerror})") from None
    if size == 0:
        raise SourceError(f"{path}: empty file; regenerate or copy it again")
    if head[:4] != _MAGIC:
        hint = (
            "give a night from `minibroker simulate`, an Avro container file of LSST alerts, a "
            "directory of alert packets, or one alert packet"
        )
        raise SourceError(f"{path}: not an Avro object container file (bad magic); {hint}")
    try:
        meta, _, _ = _read_header(memoryview(head))
    except _Truncated:
        if size <= len(head):
            raise SourceError(
                f"{path}: truncated: the file ends at byte {size}, inside its Avro header"
            ) from None
        raise SourceError(f"{path}: its Avro header is larger than 1 MiB or corrupt") from None
    return meta, meta.get("avro.codec", b"null").decode(errors="replace")


def night_info(path: str | os.PathLike[str]) -> tuple[AlertSchema, list[int]]:
    """The schema of a night (any form :func:`open_night` reads) and its visit list."""
    night = open_night(path)
    return night.schema, night.visits


def read_night(path: str | os.PathLike[str]) -> Iterator[NightBlock]:
    """Yield the visits of a night (any form :func:`open_night` reads) in order."""
    return open_night(path).blocks()


def _read_blocks(path: Path, visits: list[int]) -> Iterator[NightBlock]:
    """A minibroker night's blocks, mapped where they lie."""
    with open(path, "rb") as fo:
        mm = mmap.mmap(fo.fileno(), 0, access=mmap.ACCESS_READ)
    buf = memoryview(mm)
    size = len(buf)
    _, sync, pos = _read_header(buf)
    index = 0
    while pos < size:
        where = (
            f"block {index} (visit {visits[index]})" if index < len(visits) else f"block {index}"
        )
        try:
            count, pos = _read_long(buf, pos)
            nbytes, pos = _read_long(buf, pos)
        except _Truncated:
            raise SourceError(_truncated(path, size, where)) from None
        if pos + nbytes + 16 > size:
            raise SourceError(_truncated(path, size, where, pos + nbytes + 16))
        data = buf[pos : pos + nbytes]
        pos += nbytes
        if bytes(buf[pos : pos + 16]) != sync:
            raise SourceError(
                f"{path}: {where} is corrupt (sync marker mismatch at byte {pos}); "
                "regenerate or copy the file again"
            )
        pos += 16
        if count == 0:
            continue
        if index >= len(visits):
            raise SourceError(f"{path}: more blocks than the {len(visits)} visits its header lists")
        yield NightBlock(visit=visits[index], count=count, data=data)
        index += 1
    if index < len(visits):
        raise SourceError(
            f"{path}: truncated: the file ends at byte {size} after {index} of the "
            f"{len(visits)} visits its header lists; regenerate or copy it again"
        )


def _truncated(path: Path, size: int, where: str, needed: int | None = None) -> str:
    need = f" (it needs {needed} bytes)" if needed else ""
    return (
        f"{path}: truncated: the file ends at byte {size}, inside {where}{need}; "
        "regenerate or copy it again"
    )
