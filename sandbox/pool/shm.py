"""Shared memory: one visit batch written once, mapped read-only by every worker."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable

import pyarrow as pa

__all__ = ["share_batch"]


def share_batch(batch: pa.RecordBatch, wanted: Callable[[str], bool] = lambda name: True) -> int:
    """Write ``batch`` once as Arrow IPC into a sealed memfd; return a read-only descriptor.

    Only the top-level columns for which ``wanted(name)`` holds are written (a filter can only
    read a column whose every path part its source mentions; cutouts and unused lightcurves
    are most of a visit's bytes). The seals forbid any write, resize or new writable mapping,
    for everyone, for the memfd's life.
    """
    keep = [i for i, f in enumerate(batch.schema) if wanted(f.name)]
    if len(keep) != batch.num_columns:
        batch = batch.select(keep)
    fd = os.memfd_create("minibroker-visit", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        with (
            pa.OSFile(f"/proc/self/fd/{fd}", "wb") as sink,
            pa.ipc.new_file(sink, batch.schema) as writer,
        ):
            writer.write_batch(batch)
        seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(fd)


def leaf_paths(schema: pa.Schema) -> frozenset[str]:
    """Every dotted path a filter can read in ``schema``: fields of structs and of lists of
    structs, down to their values (``diaSource.snr``, ``prvDiaSources.psfFlux``, ``cutoutScience``)."""
    out: set[str] = set()

    def walk(prefix: str, typ: pa.DataType) -> None:
        if pa.types.is_struct(typ):
            for f in typ:
                walk(f"{prefix}.{f.name}", f.type)
        elif pa.types.is_list(typ) and pa.types.is_struct(typ.value_type):
            for f in typ.value_type:
                walk(f"{prefix}.{f.name}", f.type)
        else:
            out.add(prefix)

    for f in schema:
        walk(f.name, f.type)
    return frozenset(out)


def project(batch: pa.RecordBatch, paths: frozenset[str]) -> pa.RecordBatch:
    """``batch`` with only the leaf ``paths`` (see :func:`leaf_paths`), structure and nulls
    kept; structs and lists left without a field are dropped. Zero-copy: the arrays share the
    batch's buffers (the copy happens once, when a projection is written to shared memory)."""
    names, arrays = [], []
    for field, column in zip(batch.schema, batch.columns, strict=True):
        kept = _project(column, field.name, paths)
        if kept is not None:
            names.append(field.name)
            arrays.append(kept)
    if not arrays:  # a filter that reads no column still sees how many alerts there are
        return pa.RecordBatch.from_arrays([pa.nulls(batch.num_rows)], names=[""])
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _project(arr: pa.Array, prefix: str, paths: frozenset[str]) -> pa.Array | None:
    typ = arr.type
    if pa.types.is_struct(typ):
        if arr.offset:  # children are not sliced with their parent: keep it whole
            return arr if any(p.startswith(prefix + ".") for p in paths) else None
        children, fields = [], []
        for i, f in enumerate(typ):
            child = _project(arr.field(i), f"{prefix}.{f.name}", paths)
            if child is not None:
                children.append(child)
                fields.append(pa.field(f.name, child.type, f.nullable))
        if not children:
            return None
        if len(fields) == typ.num_fields:
            return arr
        mask = arr.is_null() if arr.null_count else None
        return pa.StructArray.from_arrays(children, fields=fields, mask=mask)
    if pa.types.is_list(typ) and pa.types.is_struct(typ.value_type):
        values = _project(arr.values, prefix, paths)
        if values is None:
            return None
        if values.type == typ.value_type:
            return arr
        mask = arr.is_null() if arr.null_count else None
        return pa.ListArray.from_arrays(arr.offsets, values, mask=mask)
    return arr if prefix in paths else None
