"""Alert files written by other Avro tools: which LSST schema they use, and their visits.

An Avro container file written by fastavro, the Java tools or a broker's archive holds LSST
alerts in one of ``lsst-alert-packet``'s schemas, but says so in different ways: a full name
(``lsst.v11_1.alert``, which fastavro writes with no separate namespace), a namespace
(``lsst.v11_1`` with name ``alert``), or only its fields (a schema copied under another name).
:func:`identify_schema` accepts all three. :func:`regroup` reads such a file record by record
(any codec fastavro reads) and re-encodes each alert in that schema, grouped by
``diaSource.visit``: slower than a minibroker night, whose blocks are visits already.
"""

from __future__ import annotations

import functools
import io
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import fastavro

from engine.alerts.schema import AlertSchema, available_versions, load_schema
from engine.errors import SchemaError, SourceError
from engine.sources.block import NightBlock

__all__ = ["identify_schema", "read_container", "regroup"]

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
    if named is not None and named in _shapes() and _shapes()[named] == shape:
        return load_schema(named)
    same = [v for v, s in _shapes().items() if s == shape]
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
        return _name(t, named, ("record", tuple((f["name"], _shape(f["type"], named)) for f in t["fields"])))
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
def _shapes() -> dict[str, Any]:
    """Each shipped version's shape, oldest first."""
    return {v: _shape(load_schema(v).avro, {}) for v in available_versions()}


def read_container(path: Path, data: bytes | None = None) -> tuple[AlertSchema, list[dict[str, Any]]]:
    """Every record of an Avro container file and the LSST schema its writer used.

    ``data`` is the file's content when the caller has read it already.
    """
    raw = path.read_bytes() if data is None else data
    bio = io.BytesIO(raw)
    try:
        reader = fastavro.reader(bio)
    except Exception as exc:  # fastavro raises ValueError, EOFError, ... for a bad header
        raise _unreadable(path, len(raw), bio.tell(), exc) from None
    writer = reader.writer_schema
    if not isinstance(writer, dict):
        raise SourceError(f"{path}: its records are not Avro records, so they are not LSST alerts")
    schema = identify_schema(writer, where=str(path))
    records: list[dict[str, Any]] = []
    try:
        for record in reader:
            assert isinstance(record, dict)  # the writer schema is a record
            records.append(record)
    except Exception as exc:
        raise _unreadable(path, len(raw), bio.tell(), exc, after=len(records)) from None
    return schema, records


def _unreadable(path: Path, size: int, pos: int, exc: Exception, *, after: int | None = None) -> SourceError:
    done = "" if after is None else f" after {after} records"
    if isinstance(exc, EOFError) or pos >= size:
        return SourceError(f"{path}: truncated: the file ends at byte {size}{done}, inside an Avro block; "
                           "copy or download it again")
    if "codec" in str(exc).lower() or "snappy" in str(exc).lower() or "lz4" in str(exc).lower():
        return SourceError(f"{path}: {exc}; install the package fastavro names for that codec")
    return SourceError(f"{path}: not a readable Avro container file{done} ({exc})")


def regroup(records: Iterable[tuple[str, dict[str, Any]]], schema: AlertSchema) -> Iterator[NightBlock]:
    """Encode ``(where, record)`` pairs in ``schema`` as one block per visit, visits ascending."""
    by_visit: dict[int, io.BytesIO] = {}
    counts: dict[int, int] = {}
    for where, record in records:
        visit = _visit_of(record, where)
        out = by_visit.setdefault(visit, io.BytesIO())
        try:
            fastavro.schemaless_writer(out, schema.avro, record)
        except Exception as exc:  # a record that does not fit the schema it was identified as
            raise SchemaError(f"{where}: the alert does not fit LSST alert schema {schema.name} ({exc})") from None
        counts[visit] = counts.get(visit, 0) + 1
    for visit in sorted(by_visit):
        yield NightBlock(visit=visit, count=counts[visit], data=memoryview(by_visit[visit].getvalue()))


def _visit_of(record: dict[str, Any], where: str) -> int:
    try:
        return int(record["diaSource"]["visit"])
    except (KeyError, TypeError, ValueError):
        raise SourceError(f"{where}: an alert without diaSource.visit; cannot tell its visit") from None


def container_blocks(path: str | os.PathLike[str]) -> tuple[AlertSchema, list[NightBlock]]:
    """A foreign container file's visits, re-encoded in the LSST schema its writer used."""
    path = Path(path)
    schema, records = read_container(path)
    where = str(path)
    return schema, list(regroup(((f"{where}: record {i}", r) for i, r in enumerate(records)), schema))
