"""The columnar, read-only view of a visit that filters receive.

``alerts["diaSource.snr"]`` and ``alerts.diaSource.snr`` give a :class:`Column`: one value per
alert, with explicit nulls. Lightcurve fields such as ``alerts.prvDiaSources.psfFlux`` give a
:class:`ListColumn`: a variable-length list per alert, reduced per alert with ``.max()``,
``.count()`` and friends.

Null rules, chosen so that a filter never passes an alert by accident:

- arithmetic with a null gives null;
- a comparison with a null gives False;
- in ``&``, ``|`` and ``~`` a null flag counts as not set (False);
- a filter's result treats null as False.

Data is never writable: numpy arrays live in private attributes (restricted code cannot name
them) and are flagged read-only; every operation returns a new column.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = ["AlertsView", "Column", "ListColumn", "ColumnStore", "as_column"]


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


class Column:
    """One value per alert, with nulls. Supports arithmetic, comparisons, ``&``, ``|``, ``~``."""

    __slots__ = ("_v", "_m")
    # What restricted code may reach on a column (sandbox.namespace reads this).
    _public = frozenset({"isnull", "notnull", "fill", "tolist", "dtype"})

    def __init__(self, values: np.ndarray, mask: np.ndarray | None = None):
        # _m is True where the value is null; None means no nulls (the common, fast case).
        self._v = _readonly(values)
        self._m = None if mask is None or not mask.any() else _readonly(mask)

    def __len__(self) -> int:
        return len(self._v)

    def __repr__(self) -> str:
        shown = ["null" if self._m is not None and self._m[i] else repr(self._v[i].item()) for i in range(min(5, len(self)))]
        more = ", ..." if len(self) > 5 else ""
        return f"Column[{self.dtype}]([{', '.join(shown)}{more}], length {len(self)})"

    @property
    def dtype(self) -> str:
        """The value type: ``float64``, ``int64``, ``bool``, ``str`` ..."""
        return "str" if self._v.dtype.kind == "U" else str(self._v.dtype)

    # --- null handling -------------------------------------------------------------------
    def isnull(self) -> Column:
        """True where the value is null."""
        return Column(np.zeros(len(self), bool) if self._m is None else self._m.copy())

    def notnull(self) -> Column:
        """True where the value is present."""
        return Column(np.ones(len(self), bool) if self._m is None else ~self._m)

    def fill(self, value: Any) -> Column:
        """The column with nulls replaced by ``value``."""
        if self._m is None:
            return self
        out = self._v.copy()
        out[self._m] = value
        return Column(out)

    def tolist(self) -> list[Any]:
        """The values as a Python list, null as None."""
        vals = self._v.tolist()
        if self._m is not None:
            for i in np.flatnonzero(self._m):
                vals[i] = None
        return vals

    # --- operators -------------------------------------------------------------------------
    def _binary(self, other: Any, op: Callable[[Any, Any], Any], *, compare: bool) -> Column:
        ov, om = _operand(other, len(self))
        with np.errstate(all="ignore"):
            out = op(self._v, ov)
        mask = _or_masks(self._m, om)
        if compare:
            if mask is not None:
                out = out & ~mask  # a comparison with a null is False
            return Column(np.asarray(out, dtype=bool))
        return Column(np.asarray(out), mask)

    def __add__(self, o: Any) -> Column: return self._binary(o, operator.add, compare=False)
    def __radd__(self, o: Any) -> Column: return self._binary(o, lambda a, b: b + a, compare=False)
    def __sub__(self, o: Any) -> Column: return self._binary(o, operator.sub, compare=False)
    def __rsub__(self, o: Any) -> Column: return self._binary(o, lambda a, b: b - a, compare=False)
    def __mul__(self, o: Any) -> Column: return self._binary(o, operator.mul, compare=False)
    def __rmul__(self, o: Any) -> Column: return self._binary(o, lambda a, b: b * a, compare=False)
    def __truediv__(self, o: Any) -> Column: return self._binary(o, operator.truediv, compare=False)
    def __rtruediv__(self, o: Any) -> Column: return self._binary(o, lambda a, b: b / a, compare=False)
    def __floordiv__(self, o: Any) -> Column: return self._binary(o, _floordiv, compare=False)
    def __mod__(self, o: Any) -> Column: return self._binary(o, _mod, compare=False)
    def __pow__(self, o: Any) -> Column: return self._binary(o, _pow, compare=False)
    def __lt__(self, o: Any) -> Column: return self._binary(o, operator.lt, compare=True)
    def __le__(self, o: Any) -> Column: return self._binary(o, operator.le, compare=True)
    def __gt__(self, o: Any) -> Column: return self._binary(o, operator.gt, compare=True)
    def __ge__(self, o: Any) -> Column: return self._binary(o, operator.ge, compare=True)
    def __eq__(self, o: Any) -> Column: return self._binary(o, operator.eq, compare=True)  # type: ignore[override]
    def __ne__(self, o: Any) -> Column: return self._binary(o, operator.ne, compare=True)  # type: ignore[override]
    __hash__ = None  # type: ignore[assignment]

    def __neg__(self) -> Column:
        return Column(-self._v, self._m)

    def __abs__(self) -> Column:
        return Column(np.abs(self._v), self._m)

    def _flags(self) -> np.ndarray:
        v = self._v if self._v.dtype == bool else self._v.astype(bool)
        return v if self._m is None else v & ~self._m

    def __and__(self, o: Any) -> Column: return Column(self._flags() & _flags_of(o, len(self)))
    __rand__ = __and__
    def __or__(self, o: Any) -> Column: return Column(self._flags() | _flags_of(o, len(self)))
    __ror__ = __or__
    def __xor__(self, o: Any) -> Column: return Column(self._flags() ^ _flags_of(o, len(self)))
    def __invert__(self) -> Column: return Column(~self._flags())

    def __bool__(self) -> bool:
        raise TypeError(
            "a column has one value per alert, so it is neither True nor False: combine conditions "
            "with & | ~ (not `and`/`or`/`not`) and wrap each comparison in parentheses"
        )

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.tolist())


def _floordiv(a: np.ndarray, b: Any) -> np.ndarray:
    return np.floor_divide(a, b)


def _mod(a: np.ndarray, b: Any) -> np.ndarray:
    return np.mod(a, b)


def _pow(a: np.ndarray, b: Any) -> np.ndarray:
    # Integer powers overflow silently in numpy; astronomy wants floats here.
    return np.power(a.astype(np.float64) if a.dtype.kind in "iu" else a, b)


def _or_masks(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return b
    if b is None:
        return a
    return a | b


def _operand(other: Any, n: int) -> tuple[Any, np.ndarray | None]:
    if isinstance(other, Column):
        if len(other) != n:
            raise ValueError(f"columns of different lengths ({n} and {len(other)}) cannot be combined")
        return other._v, other._m
    if isinstance(other, bool | int | float | str) or other is None:
        if other is None:
            return 0, np.ones(n, bool)
        if isinstance(other, int) and not isinstance(other, bool) and abs(other) >= 2**63:
            raise OverflowError("integer constants must fit in 64 bits")
        return other, None
    raise TypeError(f"cannot combine a column with {type(other).__name__}; use a number, a string or a column")


def _flags_of(other: Any, n: int) -> np.ndarray:
    if isinstance(other, Column):
        if len(other) != n:
            raise ValueError(f"columns of different lengths ({n} and {len(other)}) cannot be combined")
        return other._flags()
    if isinstance(other, bool):
        return np.full(n, other)
    raise TypeError(f"& | ^ combine conditions (columns or True/False), not {type(other).__name__}")


def as_column(values: Any, n: int) -> Column:
    """A column from a Column, a bool/number scalar (repeated ``n`` times)."""
    if isinstance(values, Column):
        return values
    if isinstance(values, bool | int | float):
        return Column(np.full(n, values))
    raise TypeError(f"expected a column or a number, got {type(values).__name__}")


class ListColumn:
    """A list of values per alert (a lightcurve field), reduced per alert.

    ``alerts.prvDiaSources.psfFlux.max()`` is a :class:`Column` with each alert's largest
    previous flux; an alert whose list is null or empty gets null (``count()`` gives 0).
    Comparisons give a list of booleans, usable with :meth:`where`.
    """

    __slots__ = ("_off", "_items", "_lm")
    _public = frozenset({"isnull", "notnull", "where", "count", "max", "min", "sum", "mean",
                         "std", "any", "all", "first", "last"})

    def __init__(self, offsets: np.ndarray, items: Column, list_mask: np.ndarray | None):
        self._off = _readonly(offsets)
        self._items = items
        self._lm = None if list_mask is None or not list_mask.any() else _readonly(list_mask)

    def __len__(self) -> int:
        return len(self._off) - 1

    def __repr__(self) -> str:
        return f"ListColumn[{self._items.dtype}](length {len(self)}, {len(self._items)} values)"

    def _with(self, items: Column) -> ListColumn:
        return ListColumn(self._off, items, self._lm)

    def isnull(self) -> Column:
        """True where the whole list is null (no history), as opposed to empty."""
        return Column(np.zeros(len(self), bool) if self._lm is None else self._lm.copy())

    def notnull(self) -> Column:
        """True where the list is present (possibly empty)."""
        return ~self.isnull()

    def where(self, condition: ListColumn) -> ListColumn:
        """Keep only the points where ``condition`` (a list of booleans) is True."""
        if not isinstance(condition, ListColumn) or not np.array_equal(condition._off, self._off):
            raise ValueError("where() needs a condition on the same lightcurve, e.g. lc.band == 'r'")
        keep = condition._items._flags()
        mask = keep.copy() if self._items._m is None else keep & ~self._items._m
        return self._with(Column(self._items._v, ~mask))

    # Element-wise operators act on every point and keep the list shape.
    def _elementwise(self, other: Any, method: str) -> ListColumn:
        if isinstance(other, ListColumn):
            other = other._items
        return self._with(getattr(self._items, method)(other))

    def __add__(self, o: Any) -> ListColumn: return self._elementwise(o, "__add__")
    def __sub__(self, o: Any) -> ListColumn: return self._elementwise(o, "__sub__")
    def __mul__(self, o: Any) -> ListColumn: return self._elementwise(o, "__mul__")
    def __truediv__(self, o: Any) -> ListColumn: return self._elementwise(o, "__truediv__")
    def __lt__(self, o: Any) -> ListColumn: return self._elementwise(o, "__lt__")
    def __le__(self, o: Any) -> ListColumn: return self._elementwise(o, "__le__")
    def __gt__(self, o: Any) -> ListColumn: return self._elementwise(o, "__gt__")
    def __ge__(self, o: Any) -> ListColumn: return self._elementwise(o, "__ge__")
    def __eq__(self, o: Any) -> ListColumn: return self._elementwise(o, "__eq__")  # type: ignore[override]
    def __ne__(self, o: Any) -> ListColumn: return self._elementwise(o, "__ne__")  # type: ignore[override]
    def __and__(self, o: Any) -> ListColumn: return self._elementwise(o, "__and__")
    def __or__(self, o: Any) -> ListColumn: return self._elementwise(o, "__or__")
    def __invert__(self) -> ListColumn: return self._with(~self._items)
    def __neg__(self) -> ListColumn: return self._with(-self._items)
    def __abs__(self) -> ListColumn: return self._with(abs(self._items))
    __hash__ = None  # type: ignore[assignment]

    def __bool__(self) -> bool:
        raise TypeError("a lightcurve column is not True or False; reduce it first, e.g. .count() > 0")

    # --- per-alert reductions ----------------------------------------------------------------
    def _valid(self) -> np.ndarray:
        m = self._items._m
        return np.ones(len(self._items._v), bool) if m is None else ~m

    def count(self) -> Column:
        """Number of non-null points per alert (0 for a null list)."""
        valid = self._valid().astype(np.int64)
        csum = np.concatenate(([0], np.cumsum(valid)))
        return Column(csum[self._off[1:]] - csum[self._off[:-1]])

    def _reduce(self, ufunc: np.ufunc, fill: float) -> Column:
        vals = self._items._v
        if vals.dtype.kind not in "fiub":
            raise TypeError(f"cannot take min/max/sum of a {self._items.dtype} lightcurve field")
        work = vals.astype(np.float64)
        work = np.where(self._valid(), work, fill)
        n = len(self)
        out = np.full(n, fill, dtype=np.float64)
        counts = self.count()._v
        starts = self._off[:-1]
        nonempty = np.diff(self._off) > 0
        if len(work):
            # reduceat over non-empty segments only: it misbehaves on empty ones.
            red = ufunc.reduceat(work, starts[nonempty]) if nonempty.any() else np.empty(0)
            out[nonempty] = red
        return Column(out, counts == 0)

    def max(self) -> Column:
        """Largest value per alert; null where there is none."""
        return self._reduce(np.maximum, -np.inf)

    def min(self) -> Column:
        """Smallest value per alert; null where there is none."""
        return self._reduce(np.minimum, np.inf)

    def sum(self) -> Column:
        """Sum per alert (0 where there are no points)."""
        col = self._reduce(np.add, 0.0)
        return Column(col._v)

    def mean(self) -> Column:
        """Mean per alert; null where there are no points."""
        n = self.count()._v
        with np.errstate(all="ignore"):
            return Column(self.sum()._v / np.maximum(n, 1), n == 0)

    def std(self) -> Column:
        """Population standard deviation per alert; null where there are no points."""
        n = self.count()._v
        mean = self.mean()._v
        per_point = np.repeat(mean, np.diff(self._off))
        dev = np.where(self._valid(), (self._items._v.astype(np.float64) - per_point) ** 2, 0.0)
        csum = np.concatenate(([0.0], np.cumsum(dev)))
        var = (csum[self._off[1:]] - csum[self._off[:-1]]) / np.maximum(n, 1)
        return Column(np.sqrt(var), n == 0)

    def any(self) -> Column:
        """True where at least one point is True (null points count as False)."""
        return self._flags_count() > 0

    def all(self) -> Column:
        """True where every non-null point is True and there is at least one point."""
        return (self._flags_count() == self.count()) & (self.count() > 0)

    def _flags_count(self) -> Column:
        f = self._items._flags().astype(np.int64)
        csum = np.concatenate(([0], np.cumsum(f)))
        return Column(csum[self._off[1:]] - csum[self._off[:-1]])

    def first(self) -> Column:
        """The first point per alert, in packet order; null where the list is empty."""
        return self._pick(self._off[:-1])

    def last(self) -> Column:
        """The last point per alert, in packet order; null where the list is empty."""
        return self._pick(self._off[1:] - 1)

    def _pick(self, idx: np.ndarray) -> Column:
        empty = np.diff(self._off) == 0
        safe = np.where(empty, 0, idx)
        if len(self._items._v) == 0:
            return Column(np.zeros(len(self), self._items._v.dtype), np.ones(len(self), bool))
        vals = self._items._v[safe]
        mask = empty if self._items._m is None else empty | self._items._m[safe]
        return Column(vals, mask)


# --- from Arrow to columns (trusted side) ---------------------------------------------------


def _leaf_numpy(arr: pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
    """Values and null mask of a flat Arrow array; strings become fixed-width numpy unicode."""
    n = len(arr)
    mask = None
    if arr.null_count:
        mask = np.asarray(arr.is_null())
    typ = arr.type
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        values = np.asarray(arr.fill_null("").to_numpy(zero_copy_only=False).astype(str))
    elif pa.types.is_timestamp(typ):
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


class ColumnStore:
    """Numpy columns of one visit batch, converted once and shared by every filter that reads
    them (on the trusted side; filters only ever see :class:`AlertsView`)."""

    def __init__(self, batch: pa.RecordBatch):
        self.batch = batch
        self._cache: dict[str, Column | ListColumn] = {}
        self.paths = frozenset(_paths(batch.schema))
        self.groups = frozenset(p.rsplit(".", 1)[0] for p in self.paths if "." in p)

    def __len__(self) -> int:
        return self.batch.num_rows

    def get(self, path: str) -> Column | ListColumn:
        """The column at a dotted path, converted on first use."""
        col = self._cache.get(path)
        if col is None:
            col = self._cache[path] = self._convert(path)
        return col

    def _convert(self, path: str) -> Column | ListColumn:
        parts = path.split(".")
        if parts[0] not in self.batch.schema.names:
            raise KeyError(path)
        arr: pa.Array = self.batch.column(parts[0])
        parent_null: np.ndarray | None = None
        for i, name in enumerate(parts[1:], start=1):
            if pa.types.is_list(arr.type):
                items = self._list_items(arr, ".".join(parts[i:]))
                return ListColumn(_offsets(arr), items, _mask_or(arr, parent_null))
            if not pa.types.is_struct(arr.type):
                raise KeyError(path)
            if arr.null_count:
                m = np.asarray(arr.is_null())
                parent_null = m if parent_null is None else parent_null | m
            arr = arr.field(name)  # raises KeyError for an unknown name
        if pa.types.is_list(arr.type):
            raise KeyError(path)
        values, mask = _leaf_numpy(arr)
        return Column(values, _or_masks(mask, parent_null))

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


def _paths(schema: pa.Schema) -> list[str]:
    out = []

    def walk(prefix: str, typ: pa.DataType) -> None:
        if pa.types.is_struct(typ):
            for f in typ:
                walk(f"{prefix}.{f.name}", f.type)
        elif pa.types.is_list(typ):
            walk(prefix, typ.value_type)
        elif not (pa.types.is_binary(typ) or pa.types.is_large_binary(typ)):
            out.append(prefix)

    for f in schema:
        walk(f.name, f.type)
    return out


class _Group:
    """``alerts.diaSource``: the attribute form of a dotted path prefix."""

    __slots__ = ("_store", "_prefix")

    def __init__(self, store: ColumnStore, prefix: str):
        self._store = store
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        return _lookup(self._store, f"{self._prefix}.{name}")

    def __getitem__(self, name: str) -> Any:
        return _lookup(self._store, f"{self._prefix}.{name}")

    def __repr__(self) -> str:
        return f"<{self._prefix}: {', '.join(sorted(p.split('.')[-1] for p in self._store.paths if p.rsplit('.', 1)[0] == self._prefix)[:8])}, ...>"


def _lookup(store: ColumnStore, path: str) -> Any:
    if path in store.paths:
        return store.get(path)
    if path in store.groups:
        return _Group(store, path)
    near = sorted(p for p in store.paths if p.split(".")[-1].lower() == path.split(".")[-1].lower())
    hint = f"; did you mean {near[0]!r}?" if near else "; see the column list in docs/filters.md"
    raise KeyError(f"no column {path!r} in this alert schema{hint}")


class AlertsView:
    """What ``filter(alerts)`` receives: every alert of one visit, column by column.

    ``alerts["diaSource.snr"]`` or ``alerts.diaSource.snr``; ``len(alerts)`` is the alert count.
    """

    __slots__ = ("_store",)

    def __init__(self, store: ColumnStore):
        self._store = store

    def __len__(self) -> int:
        return len(self._store)

    def __getitem__(self, path: str) -> Any:
        if not isinstance(path, str):
            raise TypeError("columns are named by strings such as 'diaSource.snr'")
        return _lookup(self._store, path)

    def __getattr__(self, name: str) -> Any:
        return _lookup(self._store, name)

    def __contains__(self, path: str) -> bool:
        return path in self._store.paths or path in self._store.groups

    def __repr__(self) -> str:
        return f"<alerts: {len(self)} alerts of one visit>"
