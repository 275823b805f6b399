"""Alert schemas: every version ``lsst-alert-packet`` ships, and its Arrow equivalent.

The Avro → Arrow mapping is fixed here, once, so every decoder (fastavro reference, the fast
decoder) and every consumer of a visit batch agrees on it:

=====================  ==========================================================
Avro                   Arrow
=====================  ==========================================================
record                 struct (a ``["null", record]`` union makes the struct nullable)
array                  list
``["null", T]``        T, nullable
long / int             int64 / int32
float / double         float32 / float64
boolean                bool
string                 string (utf8)
bytes                  large_binary (a 40,000-alert visit's cutouts pass 2 GiB)
long timestamp-micros  timestamp[us, tz=UTC]
=====================  ==========================================================

Top-level alert fields become the columns of a visit's ``pyarrow.RecordBatch``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from engine.errors import SchemaError

__all__ = [
    "AlertSchema",
    "AvroType",
    "DEFAULT_VERSION",
    "available_versions",
    "leaf_paths",
    "load_schema",
    "parse_avro",
    "parse_version",
    "project_schema",
]

DEFAULT_VERSION = "11.1"

_PRIMITIVES: dict[str, pa.DataType] = {
    "long": pa.int64(),
    "int": pa.int32(),
    "float": pa.float32(),
    "double": pa.float64(),
    "boolean": pa.bool_(),
    "string": pa.string(),
    "bytes": pa.large_binary(),
}


@dataclass(frozen=True)
class AlertSchema:
    """One alert schema version: its Avro definition and its Arrow equivalent.

    Attributes
    ----------
    version : tuple[int, int]
        ``(major, minor)``, e.g. ``(11, 1)``.
    schema_id : int
        The Confluent wire-header id Rubin uses for it: ``major * 100 + minor``.
    avro : dict
        The fastavro-parsed schema (named types resolved), usable by fastavro readers.
    arrow : pyarrow.Schema
        The schema of a visit's record batch.
    """

    version: tuple[int, int]
    schema_id: int
    avro: dict[str, Any]
    arrow: pa.Schema

    @functools.cached_property
    def tree(self) -> AvroType:
        """The schema as one resolved tree (see :func:`parse_avro`), walked once per version."""
        return parse_avro(self.avro)

    @property
    def name(self) -> str:
        """``"11.1"``-style version string."""
        return f"{self.version[0]}.{self.version[1]}"


def parse_version(version: str | int | tuple[int, int]) -> tuple[int, int]:
    """Return ``(major, minor)`` for ``"11.1"``, ``"v11_1"``, ``(11, 1)`` or a wire id ``1101``."""
    if isinstance(version, tuple):
        return int(version[0]), int(version[1])
    if isinstance(version, int):
        return divmod(version, 100)
    text = str(version).strip().lstrip("v").replace("_", ".")
    major, _, minor = text.partition(".")
    if not (major.isdigit() and (minor or "0").isdigit()):
        raise SchemaError(
            f"schema version {version!r} is not of the form MAJOR.MINOR (e.g. 11.1); "
            f"available: {', '.join(available_versions())}"
        )
    return int(major), int(minor or 0)


def available_versions() -> list[str]:
    """Every alert schema version that the installed ``lsst-alert-packet`` ships, oldest first."""
    import lsst.alert.packet as packet

    root = packet.get_schema_root()
    found = []
    for major in os.listdir(root):
        if not major.isdigit():
            continue
        for minor in os.listdir(os.path.join(root, major)):
            if minor.isdigit() and _alert_file(int(major), int(minor)):
                found.append((int(major), int(minor)))
    return [f"{a}.{b}" for a, b in sorted(found)]


def _alert_file(major: int, minor: int) -> str | None:
    import lsst.alert.packet as packet

    path = os.path.join(packet.get_schema_root(), str(major), str(minor))
    name = f"lsst.v{major}_{minor}.alert.avsc"
    full = os.path.join(path, name)
    return full if os.path.exists(full) else None


@functools.cache
def _load(major: int, minor: int) -> AlertSchema:
    import lsst.alert.packet as packet

    path = _alert_file(major, minor)
    if path is None:
        raise SchemaError(
            f"alert schema {major}.{minor} is not shipped by the installed lsst-alert-packet; "
            f"available: {', '.join(available_versions())} (upgrade lsst-alert-packet for newer ones)"
        )
    avro = packet.Schema.from_file(path).definition
    return AlertSchema(
        version=(major, minor),
        schema_id=major * 100 + minor,
        avro=avro,
        arrow=arrow_schema(avro),
    )


def load_schema(version: str | int | tuple[int, int] = DEFAULT_VERSION) -> AlertSchema:
    """Load one alert schema version (cached): ``"11.1"``, ``(11, 1)`` or wire id ``1101``."""
    return _load(*parse_version(version))


_PRIMITIVE_KINDS = {"long", "int", "float", "double", "boolean", "string", "bytes"}


# ---------------------------------------------------------------------------------------------
# The one walk of an Avro schema: a small resolved tree (named types become shared nodes).
# The Arrow mapping, the fast decoder's generator and the simulator all read this tree.


@dataclass(eq=False)
class AvroType:
    """One resolved Avro type. ``null`` positions live on the *use* (field or items), not here."""

    kind: str  # record, array, long, int, float, double, boolean, string, bytes, timestamp
    name: str = ""
    fields: list[tuple[str, AvroType, int | None]] = field(default_factory=list)
    items: AvroType | None = None
    items_null: int | None = None  # union index of "null" for the items, if they are nullable

    def min_size(self) -> int:
        """Fewest bytes one value of this type takes (used to bound array block counts)."""
        if self.kind == "record":
            return sum(1 if n is not None else t.min_size() for _, t, n in self.fields)
        return {"float": 4, "double": 8}.get(self.kind, 1)


def parse_avro(avro: Any) -> AvroType:
    """Resolve a (fastavro-parsed) alert schema into an :class:`AvroType` tree."""
    named: dict[str, AvroType] = {}
    typ, null = _parse(avro, named, "")
    if null is not None or typ.kind != "record":
        raise SchemaError("the alert schema must be a (non-nullable) record")
    return typ


def _parse(avro: Any, named: dict[str, AvroType], ns: str) -> tuple[AvroType, int | None]:
    if isinstance(avro, list):
        others = [t for t in avro if t != "null"]
        if len(avro) != 2 or len(others) != 1:
            raise SchemaError(f"unions other than [null, T] are not supported: {avro!r}")
        typ, inner_null = _parse(others[0], named, ns)
        if inner_null is not None:
            raise SchemaError("nested unions are not supported")
        return typ, avro.index("null")
    if isinstance(avro, str):
        if avro in _PRIMITIVE_KINDS:
            return AvroType(avro), None
        for candidate in (avro, f"{ns}.{avro}"):
            if candidate in named:
                return named[candidate], None
        raise SchemaError(f"unknown Avro type {avro!r}")
    kind = avro["type"]
    if kind == "record":
        name = avro["name"]
        if "." not in name and avro.get("namespace"):
            name = f"{avro['namespace']}.{name}"
        node = AvroType("record", name=name)
        named[name] = node  # before the fields: they may refer to it
        inner_ns = name.rpartition(".")[0]
        for f in avro["fields"]:
            typ, null = _parse(f["type"], named, inner_ns)
            node.fields.append((f["name"], typ, null))
        return node, None
    if kind == "array":
        node = AvroType("array")
        node.items, node.items_null = _parse(avro["items"], named, ns)
        return node, None
    if kind == "long" and avro.get("logicalType") == "timestamp-micros":
        return AvroType("timestamp"), None
    if isinstance(kind, str) and kind in _PRIMITIVE_KINDS:
        return AvroType(kind), None
    if isinstance(kind, (dict, list)):
        return _parse(kind, named, ns)
    raise SchemaError(f"Avro type {kind!r} is not supported")


def arrow_schema(avro: dict[str, Any]) -> pa.Schema:
    """Map a parsed Avro alert record to the Arrow schema of a visit batch (see module doc)."""
    return pa.schema([_arrow_field(name, typ, null) for name, typ, null in parse_avro(avro).fields])


def _arrow_field(name: str, typ: AvroType, null: int | None) -> pa.Field:
    # Arrow's nullability mirrors Avro's exactly: a non-nullable child of a null struct is fine.
    return pa.field(name, _arrow_type(typ), nullable=null is not None)


def _arrow_type(typ: AvroType) -> pa.DataType:
    if typ.kind == "record":
        return pa.struct([_arrow_field(name, child, null) for name, child, null in typ.fields])
    if typ.kind == "array":
        assert typ.items is not None
        return pa.list_(pa.field("item", _arrow_type(typ.items)))
    if typ.kind == "timestamp":
        return pa.timestamp("us", tz="UTC")
    return _PRIMITIVES[typ.kind]


def leaf_paths(schema: pa.Schema) -> list[str]:
    """Dotted paths of every scalar leaf: ``diaSource.snr``, ``prvDiaSources.psfFlux``, ..."""
    out: list[str] = []

    def walk(prefix: str, typ: pa.DataType) -> None:
        if pa.types.is_struct(typ):
            for child in typ:
                walk(f"{prefix}.{child.name}", child.type)
        elif pa.types.is_list(typ):
            walk(prefix, typ.value_type)
        else:
            out.append(prefix)

    for f in schema:
        walk(f.name, f.type)
    return out


def project_schema(schema: pa.Schema, columns: Iterable[str] | None) -> pa.Schema:
    """Keep only the given dotted paths (``diaSource.snr``, ``prvDiaSources.psfFlux``, or whole
    top-level columns such as ``cutoutScience``) of a visit schema; ``None`` keeps everything."""
    if columns is None:
        return schema
    wanted = _by_head(columns)
    return pa.schema([_prune(f, wanted[f.name]) for f in schema if f.name in wanted])


def _by_head(paths: Iterable[str]) -> dict[str, set[str] | None]:
    """Group dotted paths by their first part; None means the whole of that part is wanted."""
    out: dict[str, set[str] | None] = {}
    for path in paths:
        head, _, rest = path.partition(".")
        if not rest:
            out[head] = None
        elif out.get(head, set()) is not None:
            out.setdefault(head, set()).add(rest)  # type: ignore[union-attr]
    return out


def _prune(f: pa.Field, keep: set[str] | None) -> pa.Field:
    if keep is None:
        return f
    typ = f.type
    if pa.types.is_list(typ):
        return f.with_type(pa.list_(_prune(typ.value_field, keep)))
    if not pa.types.is_struct(typ):
        return f
    children = _by_head(keep)
    return f.with_type(pa.struct([_prune(c, children[c.name]) for c in typ if c.name in children]))
