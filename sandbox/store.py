"""Trusted side of the batch view: one visit's Arrow batch → the read-only columns filters see.

:class:`ColumnStore` converts each column a filter asks for once per visit (zero-copy where
Arrow allows), marks every array read-only, and keeps the conversions for every other filter of
the visit. Filters never see the store: they get :class:`sandbox.view.AlertsView` and
:class:`sandbox.view.AlertRecord`, which read through it. Nothing in this module is reachable
from restricted code.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from sandbox.view.columns import (
    BANDS,
    Column,
    ListColumn,
    _or_masks,
    _readonly,
    _Segments,
    _store_owned,
    _trusted_column,
    memo_of,
)

__all__ = ["SHIPPABLE_OPS", "ColumnStore"]

# Lightcurve results (memo keys, each the name of the method that computes it) that the trusted
# side can compute once per visit and hand to every worker whose filters use them.
SHIPPABLE_OPS = frozenset(
    {
        "count",
        "max",
        "min",
        "sum",
        "mean",
        "std",
        "median",
        "n_distinct",
        "any",
        "all",
        "first",
        "last",
        "rate",
        "slope",
        "times",
    }
)
_MAX_LEARNED = 64  # recipes one visit's store records


class _ListInfo:
    """Where the sibling fields of one lightcurve live (trusted side).

    ``prefix`` is a list column (``prvDiaSources``) or ``"history"`` (previous sources plus
    the current one, see :meth:`ColumnStore.history`).
    """

    __slots__ = ("_store", "_prefix")

    def __init__(self, store: ColumnStore, prefix: str):
        self._store = store
        self._prefix = prefix

    def sibling(self, name: str) -> ListColumn:
        if self._prefix == "history":
            return self._store.history(name)
        col = self._store.get(f"{self._prefix}.{name}")
        assert isinstance(col, ListColumn)
        return col

    def time_sorted(self) -> bool:
        return self._store.time_sorted(self._prefix)

    def learn(self, recipe: list[Any], key: Any, value: Any) -> None:
        self._store.learn_derived(recipe, key, value)


# --- from Arrow to columns (trusted side) ---------------------------------------------------


def _leaf_numpy(arr: pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
    """Values and null mask of a flat Arrow array; strings become fixed-width numpy unicode.

    Fixed-width values without nulls are zero-copy views of Arrow's (immutable) buffers."""
    n = len(arr)
    mask = None
    if arr.null_count:
        mask = np.asarray(arr.is_null())
    typ = arr.type
    if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ):
        values = _strings(arr)
        assert len(values) == n
        return values, mask
    if pa.types.is_timestamp(typ):
        values = np.asarray(arr.cast(pa.int64()).fill_null(0).to_numpy())
    elif pa.types.is_boolean(typ):
        values = np.asarray(arr.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
    elif pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
        raise TypeError("cutouts are images, not columns; use the per-alert stage to look at them")
    elif arr.null_count:
        fill = np.nan if pa.types.is_floating(typ) else 0
        values = arr.fill_null(fill).to_numpy()
    else:
        values = arr.to_numpy()
    if values.base is not None or not values.flags.owndata:
        values = values.copy() if values.flags.writeable else values
    assert len(values) == n
    return values, mask


def _strings(arr: pa.Array) -> np.ndarray:
    """A string array as numpy unicode of its longest value's width (nulls as "")."""
    n = len(arr)
    if arr.null_count:
        arr = arr.fill_null("")
    typ = arr.type
    if n and (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
        # ASCII (band letters, reasons, names): straight from the offsets and bytes, each byte
        # widened to one UCS-4 code point; numpy unicode is exactly that, zero-padded.
        otype = np.int32 if pa.types.is_string(typ) else np.int64
        _, obuf, dbuf = arr.buffers()
        off = np.frombuffer(obuf, otype, n + 1, arr.offset * np.dtype(otype).itemsize)
        data = (
            np.frombuffer(dbuf, np.uint8)[off[0] : off[-1]]
            if dbuf is not None
            else np.zeros(0, np.uint8)
        )
        if not len(data):
            return np.zeros(n, dtype="<U1")
        if int(data.max()) < 0x80:
            lengths = np.diff(off)
            width = int(lengths.max())
            if width == 1 and len(data) == n:  # one character each
                codes = _readonly(data.astype(np.uint32))
                return codes.view(np.dtype("U1"))
            codes = np.zeros((n, width), np.uint32)
            starts = np.repeat(off[:-1] - off[0], lengths)
            rows = np.repeat(np.arange(n), lengths)
            codes[rows, np.arange(len(data)) - starts] = data
            return _readonly(codes).view(np.dtype(f"U{width}")).reshape(n)
    # Anything else through a dictionary: repeated values convert once each.
    enc = arr.dictionary_encode()
    words = np.asarray(enc.dictionary.to_pylist(), dtype=str)
    return np.take(words, enc.indices.to_numpy()) if len(words) else np.zeros(n, dtype="<U1")


_SCHEMAS: list[tuple[pa.Schema, _SchemaInfo]] = []


class _SchemaInfo(NamedTuple):
    """What a store needs to know of its batch's schema, worked out once per schema."""

    paths: frozenset[str]  # leaf paths
    groups: frozenset[str]  # their parents
    kinds: Mapping[str, str]  # every path: struct, list, leaf or binary (read-only)
    # Numeric leaves reached through structs only, by their field indices: a column of one
    # with no nulls on the way is a zero-copy view, built without the general conversion's
    # type tests (each a Python call; in a worker whose caches went cold, they added up).
    plain: Mapping[str, tuple[int, ...]]


def _schema_info(schema: pa.Schema) -> _SchemaInfo:
    """The :class:`_SchemaInfo` of ``schema``; the last few schemas' are kept (visits share
    one)."""
    for known, info in _SCHEMAS:
        if known is schema or known.equals(schema):
            return info
    kinds = MappingProxyType(_kinds(schema))
    paths = frozenset(p for p, kind in kinds.items() if kind == "leaf")
    groups = frozenset(p.rsplit(".", 1)[0] for p in paths if "." in p)
    info = _SchemaInfo(paths, groups, kinds, MappingProxyType(_plain(schema)))
    _SCHEMAS.insert(0, (schema, info))
    del _SCHEMAS[4:]
    return info


class ColumnStore:
    """Numpy columns of one visit batch, converted once and shared by every filter that reads
    them (on the trusted side; filters only ever see :class:`AlertsView`)."""

    def __init__(self, batch: pa.RecordBatch):
        self.batch = batch
        self._cache: dict[str, Column | ListColumn] = {}
        self._sorted: dict[str, bool] = {}
        self._aux: dict[str, Any] = {}  # null masks and offsets for the per-alert view
        self._shapes: dict[str, tuple[_Segments, np.ndarray | None]] = {}  # per list column
        self.paths, self.groups, self.kinds, self._plain = _schema_info(batch.schema)
        # What this visit's filters derived that the trusted side could compute once for every
        # worker next time (recipes, see sandbox.digest), in the order first computed.
        self.learned: list[list[Any]] = []
        self._learned_keys: set[str] = set()

    def __len__(self) -> int:
        return self.batch.num_rows

    def get(self, path: str) -> Column | ListColumn:
        """The column at a dotted path, converted on first use."""
        col = self._cache.get(path)
        if col is None:
            col = self._cache[path] = self._convert(path)
            # Numbers without nulls are views of the batch: nothing to hand over.
            plain = isinstance(col, Column) and col._m is None and col._v.dtype.kind in "iuf"
            self._note(col, ["col", path], learn=not plain)
        return col

    def _note(self, col: Column | ListColumn, recipe: list[Any], learn: bool = True) -> None:
        if isinstance(col, ListColumn):
            col._recipe = recipe
        else:
            # Read back by recipe_of and by the helpers' per-visit results on this column
            # (sandbox.helpers._per_visit); a column's memo lives exactly as long as the store.
            col._memo["recipe"] = recipe
            col._memo["learn"] = self._learn
        if learn:
            self._learn(recipe)

    def _learn(self, recipe: list[Any]) -> None:
        key = repr(recipe)
        if key not in self._learned_keys and len(self.learned) < _MAX_LEARNED:
            self._learned_keys.add(key)
            self.learned.append(recipe)

    def recipe_of(self, col: Any) -> list[Any] | None:
        """How the trusted side computes ``col`` again, if it is one of this store's columns."""
        memo = memo_of(col)
        return None if memo is None else memo.get("recipe")

    def learn_derived(self, recipe: list[Any], key: Any, value: Any) -> None:
        """A lightcurve of this store (``recipe``) memoized ``value`` under ``key``: learn how
        to compute it again, when it is one of the results the trusted side can hand over."""
        if isinstance(key, tuple) and len(key) == 2 and key[0] == "in_band":
            band = key[1] if isinstance(key[1], str) else self.recipe_of(key[1])
            if band is None:
                return
            derived = [recipe, "in_band", band]
        elif isinstance(key, str) and key in SHIPPABLE_OPS:
            derived = [recipe, key]
        else:
            return
        if isinstance(value, ListColumn):
            value._recipe = derived
        self._learn(derived)

    def _convert(self, path: str) -> Column | ListColumn:
        where = self._plain.get(path)
        if where is not None:
            arr: pa.Array = self.batch.column(where[0])
            for index in where[1:]:
                if arr.null_count:
                    break
                arr = arr.field(index)
            else:
                if not arr.null_count:
                    return _store_owned(_trusted_column(arr.to_numpy(), None))
        parts = path.split(".")
        if parts[0] not in self.batch.schema.names:
            raise KeyError(path)
        arr = self.batch.column(parts[0])
        parent_null: np.ndarray | None = None
        for i, name in enumerate(parts[1:], start=1):
            if pa.types.is_list(arr.type):
                prefix = ".".join(parts[:i])
                items = _store_owned(self._list_items(arr, ".".join(parts[i:])))
                shape = self._shapes.get(prefix)
                if shape is None:
                    off = _readonly(_offsets(arr))
                    lm = _mask_or(arr, parent_null)
                    shape = self._shapes[prefix] = (
                        _Segments(off),
                        None if lm is None else _readonly(lm),
                    )
                seg, lm = shape
                return ListColumn(seg.off, items, lm, _ListInfo(self, prefix), seg)
            if not pa.types.is_struct(arr.type):
                raise KeyError(path)
            if arr.null_count:
                m = np.asarray(arr.is_null())
                parent_null = m if parent_null is None else parent_null | m
            arr = arr.field(name)  # raises KeyError for an unknown name
        if pa.types.is_list(arr.type):
            raise KeyError(path)
        values, mask = _leaf_numpy(arr)
        return _store_owned(Column(values, _or_masks(mask, parent_null)))

    # --- lightcurve helpers ------------------------------------------------------------------
    def history(self, name: str) -> ListColumn:
        """``prvDiaSources.<name>`` with the current ``diaSource.<name>`` appended to each
        alert's list: the whole detection history, never null (an alert always has its
        current source). Cached like any column."""
        key = f"history.{name}"
        col = self._cache.get(key)
        if col is None:
            col = self._cache[key] = self._history(name)
            self._note(col, ["history", name])
        assert isinstance(col, ListColumn)
        return col

    def _history(self, name: str) -> ListColumn:
        cur_path, prv_path = f"diaSource.{name}", f"prvDiaSources.{name}"
        if cur_path not in self.paths:
            raise KeyError(
                f"no field {name!r} in diaSource; history() takes a diaSource field name"
            )
        cur = self.get(cur_path)
        assert isinstance(cur, Column)
        if prv_path in self.paths:
            prv = self.get(prv_path)
            assert isinstance(prv, ListColumn)
            pv, pm = prv._items._v, prv._items._m
        else:  # the batch was decoded without previous sources
            prv, pv, pm = None, cur._v[:0], None
        seg, is_prv, cur_pos = self._history_shape(prv)
        values = np.empty(seg.total, dtype=np.result_type(pv.dtype, cur._v.dtype))
        values[is_prv] = pv
        values[cur_pos] = cur._v
        mask = None
        if pm is not None or cur._m is not None:
            mask = np.zeros(len(values), bool)
            if pm is not None:
                mask[is_prv] = pm
            if cur._m is not None:
                mask[cur_pos] = cur._m
        items = _store_owned(Column(values, mask))
        return ListColumn(seg.off, items, None, _ListInfo(self, "history"), seg)

    def _history_shape(self, prv: ListColumn | None) -> tuple[_Segments, np.ndarray, np.ndarray]:
        """The history lists' shape, where the previous sources go (a mask) and where the
        current ones go (positions): the same for every field, so computed once."""
        key = "history" if prv is None else f"history.{id(prv._seg)}"
        hit = self._aux.get(key)
        if hit is None or (prv is not None and hit[3] is not prv._seg):
            n = len(self)
            lengths = np.zeros(n, np.int64) if prv is None else prv._seg.lengths
            off = np.zeros(n + 1, np.int64)
            np.cumsum(lengths + 1, out=off[1:])
            cur_pos = _readonly(off[1:] - 1)
            is_prv = np.ones(int(off[-1]), bool)
            is_prv[cur_pos] = False
            seg = _Segments(_readonly(off))
            hit = self._aux[key] = (
                seg,
                _readonly(is_prv),
                cur_pos,
                None if prv is None else prv._seg,
            )
        return hit[0], hit[1], hit[2]

    def time_sorted(self, prefix: str) -> bool:
        """Whether every alert's points of list ``prefix`` are in non-decreasing time order."""
        done = self._sorted.get(prefix)
        if done is None and prefix == "history":
            done = self._sorted[prefix] = self._history_sorted()
        if done is None:
            times = _ListInfo(self, prefix).sibling("midpointMjdTai")
            t = times._items._v.astype(np.float64, copy=False)
            # A null or NaN time anywhere: not sorted (the slower, general path handles it).
            done = times._items._m is None and not np.isnan(t).any()
            if done:
                step = np.diff(t)  # a new array: the steps across two alerts are ignored
                starts = times._off[1:-1]
                step[starts[(starts > 0) & (starts < len(t))] - 1] = 0.0
                done = bool(np.all(step >= 0))
            self._sorted[prefix] = done
        return done

    def _history_sorted(self) -> bool:
        """History lists are previous sources then the current one: in time order when the
        previous sources are and each current source comes no earlier than its alert's last
        previous one (checked per alert, not per point)."""
        times = self.history("midpointMjdTai")
        if times._items._m is not None:
            return False
        if "prvDiaSources.midpointMjdTai" not in self.paths:  # one point per alert
            return not np.isnan(times._items._v.astype(np.float64, copy=False)).any()
        if not self.time_sorted("prvDiaSources"):
            return False
        now = self.get("diaSource.midpointMjdTai")
        prv = self.get("prvDiaSources.midpointMjdTai")
        assert isinstance(now, Column) and isinstance(prv, ListColumn)
        t_now = now._v.astype(np.float64, copy=False)
        if np.isnan(t_now).any():
            return False
        seg = prv._seg
        last = prv._items._v[seg.off[1:][seg.nonempty] - 1]
        return bool(np.all(t_now[seg.nonempty] >= last))

    def band_field(self, name: str, band: Any = None) -> Column:
        """``diaObject.<band>_<name>`` picked per alert, ``band`` defaulting to each alert's
        ``diaSource.band``; null where the band is not one of ugrizy or the value is null."""
        if band is None:
            band = self.get("diaSource.band")
        cols = {}
        for b in BANDS:
            path = f"diaObject.{b}_{name}"
            if path not in self.paths:
                raise KeyError(
                    f"no column {path!r}: band_field() takes a per-band diaObject "
                    "field name without its band prefix, e.g. 'psfFluxMean'"
                )
            cols[b] = self.get(path)
        n = len(self)
        first = cols[BANDS[0]]
        assert isinstance(first, Column)
        out = np.zeros(n, dtype=first._v.dtype)
        missing = np.ones(n, bool)
        for b, col in cols.items():
            assert isinstance(col, Column)
            if isinstance(band, Column):
                sel = band._v == b if band._m is None else (band._v == b) & ~band._m
            elif isinstance(band, str):
                sel = np.full(n, band == b)
            else:
                raise TypeError("band must be a letter such as 'r' or a column of band letters")
            out[sel] = col._v[sel]
            missing[sel] = False if col._m is None else col._m[sel]
        return Column(out, missing)

    # --- the per-alert view (sandbox.view.record) reads through these ------------------------------
    def struct_null(self, path: str) -> np.ndarray | None:
        """Null mask of a top-level struct column, or None if it has no nulls."""
        key = f"null.{path}"
        if key not in self._aux:
            arr = self.batch.column(path)
            self._aux[key] = _readonly(np.asarray(arr.is_null())) if arr.null_count else None
        return self._aux[key]

    def list_offsets(self, path: str) -> tuple[np.ndarray, np.ndarray | None]:
        """Offsets and null mask of a top-level list column."""
        key = f"list.{path}"
        if key not in self._aux:
            arr = self.batch.column(path)
            mask = _mask_or(arr, None)
            self._aux[key] = (_readonly(_offsets(arr)), None if mask is None else _readonly(mask))
        return self._aux[key]

    def binary(self, path: str, row: int) -> bytes | None:
        """The bytes of a binary column (a cutout) in one row, or None."""
        return self.batch.column(path)[row].as_py()

    def _list_items(self, arr: pa.ListArray, rest: str) -> Column:
        child = arr.values
        for name in rest.split("."):
            child = child.field(name)
        values, mask = _leaf_numpy(child)
        start, stop = int(arr.offsets[0].as_py()), int(arr.offsets[-1].as_py()) if len(arr) else 0
        return Column(values[start:stop], None if mask is None else mask[start:stop])


def _offsets(arr: pa.ListArray) -> np.ndarray:
    off = np.asarray(arr.offsets, dtype=np.int64)
    return off - off[0] if len(off) else np.zeros(1, np.int64)


def _mask_or(arr: pa.Array, parent: np.ndarray | None) -> np.ndarray | None:
    m = np.asarray(arr.is_null()) if arr.null_count else None
    return _or_masks(m, parent)


def _plain(schema: pa.Schema) -> dict[str, tuple[int, ...]]:
    """Integer and floating-point leaves reached through structs only, with the field index at
    each level (see :class:`_SchemaInfo`)."""
    out: dict[str, tuple[int, ...]] = {}

    def walk(prefix: str, typ: pa.DataType, where: tuple[int, ...]) -> None:
        if pa.types.is_struct(typ):
            for i, f in enumerate(typ):
                walk(f"{prefix}.{f.name}", f.type, (*where, i))
        elif pa.types.is_integer(typ) or pa.types.is_floating(typ):
            out[prefix] = where

    for i, f in enumerate(schema):
        walk(f.name, f.type, (i,))
    return out


def _kinds(schema: pa.Schema) -> dict[str, str]:
    """Every dotted path of the schema and what it is: struct, list, leaf or binary."""
    out: dict[str, str] = {}

    def walk(prefix: str, typ: pa.DataType) -> None:
        if pa.types.is_struct(typ):
            out[prefix] = "struct"
            for f in typ:
                walk(f"{prefix}.{f.name}", f.type)
        elif pa.types.is_list(typ):
            out[prefix] = "list"
            for f in typ.value_type:
                walk(f"{prefix}.{f.name}", f.type)
        elif (
            pa.types.is_binary(typ) or pa.types.is_large_binary(typ) or pa.types.is_binary_view(typ)
        ):
            out[prefix] = "binary"
        else:
            out[prefix] = "leaf"

    for f in schema:
        walk(f.name, f.type)
    return out
