"""Alert files written by other Avro tools: which LSST schema they use, and their visits.

An Avro container file written by fastavro, the Java tools or a broker's archive holds LSST
alerts in one of ``lsst-alert-packet``'s schemas, but says so in different ways: a full name
(``lsst.v11_1.alert``, which fastavro writes with no separate namespace), a namespace
(``lsst.v11_1`` with name ``alert``), or only its fields (a schema copied under another name).
:func:`identify_schema` accepts all three, and only a schema whose bytes are those of a shipped
version, so every datum is used as it lies, never re-encoded.

:func:`container_datums` walks such a file block by block (any codec fastavro reads) and datum
by datum, reading only ``diaSource.visit`` (fastavro skips the rest: a reader schema of that
one field); :func:`group_by_visit` makes the visits. That is slower than a minibroker night,
whose blocks are visits already, and faster than decoding every alert in full.
"""

from __future__ import annotations

import functools
import io
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import fastavro

from engine.alerts.schema import AlertSchema, available_versions, load_schema
from engine.errors import SourceError
from engine.sources.block import NightBlock

__all__ = [
    "container_blocks",
    "container_datums",
    "group_by_visit",
    "identify_schema",
    "read_visit",
    "visit_reader",
]

_VERSIONED = re.compile(r"(?:^|\.)v(\d+)_(\d+)(?:\.|$)")


def identify_schema(writer: dict[str, Any], *, where: str = "file") -> AlertSchema:
    """The ``lsst-alert-packet`` schema an Avro writer schema is, by name, namespace or fields.

    Raises
    ------
    SourceError
        The schema is not a record, or matches no version the installed package ships.
    """
    if not isinstance(writer, dict) or writer.get("type") != "record":
        raise SourceError(f"{where}: its records are not Avro records, so they are not LSST alerts")
    named = _version_in_name(writer)
    shape = _shape(writer, {})
    if named is not None and named in available_versions() and _shape_of(named) == shape:
        return load_schema(named)  # the common case: only that version is loaded
    same = [v for v in available_versions() if _shape_of(v) == shape]
    if same:
        return load_schema(same[-1])  # equal shapes mean equal bytes: any of them decodes it
    if named is not None:
        raise SourceError(
            f"{where}: its schema is named for LSST alert schema {named} but its fields differ from "
            f"that version's; write it with the unmodified schema from lsst-alert-packet"
        )
    raise SourceError(
        f"{where}: its schema (name {_fullname(writer)!r}) matches none of the LSST alert schemas "
        f"{', '.join(available_versions())} by name, namespace or fields; is it an LSST alert file?"
    )


def _fullname(writer: dict[str, Any]) -> str:
    name = str(writer.get("name", ""))
    namespace = writer.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _version_in_name(writer: dict[str, Any]) -> str | None:
    """``"11.1"`` for ``lsst.v11_1.alert`` or namespace ``lsst.v11_1``; None without one."""
    found = _VERSIONED.search(_fullname(writer))
    return f"{int(found.group(1))}.{int(found.group(2))}" if found else None


def _shape(t: Any, named: dict[str, Any]) -> Any:
    """What decides an Avro schema's bytes, without names, docs or defaults."""
    if isinstance(t, str):
        return named.get(t, named.get(t.rsplit(".", 1)[-1], t))
    if isinstance(t, list):
        return ("union", tuple(_shape(b, named) for b in t))
    kind = t.get("type")
    if kind == "record":
        _name(t, named, ("record", t.get("name")))  # a recursive record refers to itself
        return _name(
            t, named, ("record", tuple((f["name"], _shape(f["type"], named)) for f in t["fields"]))
        )
    if kind == "array":
        return ("array", _shape(t["items"], named))
    if kind == "map":
        return ("map", _shape(t["values"], named))
    if kind == "enum":
        return _name(t, named, ("enum", tuple(t.get("symbols", ()))))
    if kind == "fixed":
        return _name(t, named, ("fixed", t.get("size")))
    return _shape(kind, named)  # {"type": "long", "logicalType": ...} has the bytes of a long


def _name(t: dict[str, Any], named: dict[str, Any], shape: Any) -> Any:
    """Register a named type under its full and its short name (references use either)."""
    name = str(t.get("name"))
    named[name] = named[name.rsplit(".", 1)[-1]] = shape
    if t.get("namespace"):
        named[f"{t['namespace']}.{name}"] = shape
    return shape


@functools.cache
def _shape_of(version: str) -> Any:
    """A shipped version's shape."""
    return _shape(load_schema(version).avro, {})


def container_datums(
    path: Path, data: bytes | None = None
) -> tuple[AlertSchema, Iterator[tuple[int, bytes]]]:
    """The LSST schema an Avro container file's writer used, and ``(visit, datum)`` for each of
    its alerts, read lazily (files of cutouts are large: nothing is held but the current block).

    ``data`` is the file's content when the caller has read it already.

    Raises
    ------
    SourceError
        Not a container, not LSST alerts, truncated (with the byte where the file ends) or
        corrupt; the message names ``path``.
    """
    fo: BinaryIO = io.BytesIO(data) if data is not None else open(path, "rb")  # closed below
    size = len(data) if data is not None else os.fstat(fo.fileno()).st_size
    try:
        blocks = fastavro.block_reader(fo)
        writer = blocks.writer_schema
        if not isinstance(writer, dict):
            raise SourceError(
                f"{path}: its records are not Avro records, so they are not LSST alerts"
            )
        schema = identify_schema(writer, where=str(path))
        parsed = fastavro.parse_schema(writer)
        assert isinstance(parsed, dict)  # a record, checked above
        visit_only = visit_reader(parsed)
    except SourceError:
        fo.close()
        raise
    except Exception as exc:  # fastavro raises ValueError, EOFError, ... for a bad header
        pos = fo.tell()
        fo.close()
        raise _unreadable(path, size, pos, exc) from None

    def datums() -> Iterator[tuple[int, bytes]]:
        done = 0
        try:
            for block in blocks:
                bio = block.bytes_  # type: ignore[attr-defined]  # the block's datums, decompressed
                view = bio.getbuffer()
                for _ in range(block.num_records):
                    start = bio.tell()
                    visit = read_visit(bio, parsed, visit_only, where=f"{path}: alert {done}")
                    yield visit, bytes(view[start : bio.tell()])
                    done += 1
                del view
        except SourceError:
            raise
        except Exception as exc:
            raise _unreadable(path, size, fo.tell(), exc, after=done) from None
        finally:
            fo.close()

    return schema, datums()


def visit_reader(writer: dict[str, Any]) -> dict[str, Any]:
    """A reader schema of ``writer`` (parsed) keeping only ``diaSource.visit``: fastavro skips
    every other field, which is several times faster than decoding the alert."""

    def one(t: Any) -> Any:
        if isinstance(t, list):
            return [one(b) for b in t]
        if isinstance(t, dict) and t.get("type") == "record":
            visit = [f for f in t["fields"] if f["name"] == "visit"]
            return {"type": "record", "name": t["name"], "fields": visit}
        return t

    source = [f for f in writer["fields"] if f["name"] == "diaSource"]
    if not source:
        raise SourceError("the alerts have no diaSource; cannot tell their visits")
    pruned = {
        "type": "record",
        "name": writer["name"],
        "fields": [{"name": "diaSource", "type": one(source[0]["type"])}],
    }
    parsed = fastavro.parse_schema(pruned)
    assert isinstance(parsed, dict)
    return parsed


def read_visit(bio: BinaryIO, writer: dict[str, Any], reader: dict[str, Any], *, where: str) -> int:
    """Walk one datum at ``bio``'s position and return its ``diaSource.visit``."""
    record = fastavro.schemaless_reader(bio, writer, reader)
    if not isinstance(record, dict):
        raise SourceError(f"{where}: not an LSST alert")
    return _visit_of(record, where)


def _unreadable(
    path: Path, size: int, pos: int, exc: Exception, *, after: int | None = None
) -> SourceError:
    done = "" if after is None else f" after {after} alerts"
    if isinstance(exc, EOFError) or pos >= size:
        return SourceError(
            f"{path}: truncated: the file ends at byte {size}{done}, inside an Avro block; "
            "copy or download it again"
        )
    if "codec" in str(exc).lower() or "snappy" in str(exc).lower() or "lz4" in str(exc).lower():
        return SourceError(f"{path}: {exc}; install the package fastavro names for that codec")
    return SourceError(f"{path}: not a readable Avro container file{done} ({exc})")


def group_by_visit(datums: Iterable[tuple[int, bytes]]) -> list[NightBlock]:
    """One block per visit, visits ascending, datums in the order given within each."""
    parts: dict[int, list[bytes]] = {}
    for visit, datum in datums:
        parts.setdefault(visit, []).append(datum)
    return [
        NightBlock(visit=v, count=len(parts[v]), data=memoryview(b"".join(parts[v])))
        for v in sorted(parts)
    ]


def _visit_of(record: dict[str, Any], where: str) -> int:
    try:
        return int(record["diaSource"]["visit"])
    except (KeyError, TypeError, ValueError):
        raise SourceError(
            f"{where}: an alert without diaSource.visit; cannot tell its visit"
        ) from None


def container_blocks(path: str | os.PathLike[str]) -> tuple[AlertSchema, list[NightBlock]]:
    """A foreign container file's alerts, one block per visit, in the LSST schema it uses."""
    schema, datums = container_datums(Path(path))
    return schema, group_by_visit(datums)
