"""Directories of single-alert files, the form alerts take when saved from Kafka.

Each file holds one alert, in one of three forms, told apart by its first bytes:

- a Kafka message body: the Confluent wire header (byte 0, the schema id as 4 big-endian bytes,
  id = major * 100 + minor) and one Avro datum, as Rubin's stream carries it;
- a bare Avro datum (schemaless): its schema is found by decoding with each shipped version,
  newest first, until one reads the whole file exactly (or given by the caller);
- an Avro container file holding one record (or a few), e.g. what fastavro writes.

:func:`read_packets` returns one :class:`~engine.sources.block.NightBlock` per visit (``diaSource.visit``),
visits ascending, files in name order within a visit. Every file of a directory must use the
same schema version: a visit batch has one schema.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.alerts.schema import AlertSchema, available_versions, load_schema, parse_version
from engine.alerts.wire import unframe
from engine.errors import SchemaError, SourceError
from engine.sources.block import NightBlock
from engine.sources.foreign import container_datums, group_by_visit, read_visit, visit_reader

__all__ = ["read_packets"]

_OCF_MAGIC = b"Obj\x01"
# Files beside the alerts that are not alerts (a README, a manifest).
_NOT_ALERTS = (".md", ".txt", ".json", ".csv", ".html", ".yaml", ".yml", ".toml", ".py")


def read_packets(
    directory: str | os.PathLike[str], schema: AlertSchema | None = None
) -> tuple[AlertSchema, list[NightBlock]]:
    """The alerts of a directory of single-alert files (or of one such file), regrouped by visit.

    ``schema`` is the version of bare datums when the caller knows it; otherwise it is found.

    Raises
    ------
    SourceError
        The directory holds no alert files, a file is truncated or corrupt (named, with the
        byte where it ends), or files use different schema versions.
    """
    root = Path(directory)
    if root.is_file():  # one packet on its own
        files = [root]
    else:
        files = sorted(
            p
            for p in root.iterdir()
            if p.is_file()
            and not p.name.startswith(".")
            and not p.name.lower().endswith(_NOT_ALERTS)
        )
    if not files:
        subdirs = sorted(
            p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        hint = (
            f" (it has subdirectories {', '.join(subdirs[:5])}: give one of them)"
            if subdirs
            else ""
        )
        raise SourceError(
            f"{root}: a directory given as a night must hold single-alert files (Kafka message "
            f"bodies, bare Avro datums or Avro container files); it holds none{hint}"
        )
    alerts: list[tuple[Path, AlertSchema, int, bytes]] = []
    for path in files:
        alerts.extend(_read_one(path, schema))
    versions: dict[str, list[Path]] = {}
    for path, s, _, _ in alerts:
        versions.setdefault(s.name, []).append(path)
    if len(versions) > 1:
        mix = ", ".join(
            f"{v} ({len(ps)} file{'s' if len(ps) > 1 else ''}, e.g. {ps[0].name})"
            for v, ps in sorted(versions.items(), key=lambda kv: parse_version(kv[0]))
        )
        raise SourceError(
            f"{root}: its alerts use different schema versions: {mix}; "
            "put each version in a directory of its own"
        )
    if not alerts:
        raise SourceError(f"{root}: its files hold no alerts")
    return alerts[0][1], group_by_visit((visit, datum) for _, _, visit, datum in alerts)


def _read_one(
    path: Path, schema: AlertSchema | None
) -> Iterator[tuple[Path, AlertSchema, int, bytes]]:
    """``(path, schema, visit, datum)`` for each alert in one file."""
    data = path.read_bytes()
    if not data:
        raise SourceError(f"{path}: empty file; an alert packet has at least a few hundred bytes")
    if data[:4] == _OCF_MAGIC:
        found, datums = container_datums(path, data)
        for visit, datum in datums:
            yield path, found, visit, datum
        return
    if len(data) >= 5 and data[0] == 0:
        schema_id, _ = unframe(data, where=str(path))
        try:
            wire_schema = load_schema(schema_id)
        except SchemaError as exc:
            raise SourceError(
                f"{path}: Confluent wire header names schema id {schema_id}, "
                f"not an LSST alert schema the installed lsst-alert-packet ships ({exc})"
            ) from None
        datum = data[5:]
        yield path, wire_schema, _walk(path, datum, wire_schema, offset=5), datum
        return
    candidates = (
        [schema] if schema is not None else [load_schema(v) for v in reversed(available_versions())]
    )
    for candidate in candidates:
        try:
            visit = _walk(path, data, candidate, offset=0)
        except SourceError:
            continue
        yield path, candidate, visit, data
        return
    tried = candidates[0].name if schema is not None else "any shipped version"
    raise SourceError(
        f"{path}: not an alert packet: no Confluent wire header (byte 0 + schema id), no Avro "
        f"container header, and not a bare Avro datum of LSST alert schema {tried} ({len(data)} bytes)"
    )


@functools.cache
def _visit_only(version: str) -> dict[str, Any]:
    return visit_reader(load_schema(version).avro)


def _walk(path: Path, datum: bytes, schema: AlertSchema, *, offset: int) -> int:
    """Walk one datum with fastavro (reading only its visit); it must use exactly its bytes."""
    bio = io.BytesIO(datum)
    try:
        visit = read_visit(bio, schema.avro, _visit_only(schema.name), where=str(path))
    except SourceError:
        raise
    except EOFError:
        raise SourceError(
            f"{path}: truncated: the file ends at byte {offset + len(datum)}, inside its "
            f"LSST alert (schema {schema.name}); save it again"
        ) from None
    except Exception as exc:
        raise SourceError(
            f"{path}: corrupt alert (schema {schema.name}) near byte "
            f"{offset + bio.tell()} ({type(exc).__name__}: {exc})"
        ) from None
    if bio.tell() != len(datum):
        raise SourceError(
            f"{path}: {len(datum) - bio.tell()} bytes follow its alert (schema "
            f"{schema.name}), which ends at byte {offset + bio.tell()}; is it one alert?"
        )
    return visit
