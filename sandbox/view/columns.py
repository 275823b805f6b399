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
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.alerts.fields import BANDS

if TYPE_CHECKING:
    # The trusted store (sandbox.store) builds these views and they read through it; the views
    # do not import it, not even for types: the dependency points one way only.
    ColumnStore = Any
    _ListInfo = Any

__all__ = ["AlertsView", "BANDS", "Column", "ListColumn", "as_column"]


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _trusted_column(values: np.ndarray, mask: np.ndarray | None) -> Column:
    """A column from arrays the trusted side built as a column's own (``mask`` None or with a
    null, as :class:`Column` keeps it): unlike the constructor, no scan of the mask, which for
    a lightcurve handed to a worker is hundreds of kilobytes read for nothing."""
    col = Column.__new__(Column)
    col._v = _readonly(values)
    col._m = None if mask is None else _readonly(mask)
    return col


def _store_owned(col: Column) -> Column:
    """Mark a column the store hands out to every filter of the visit: it gets a memo of
    derived results (helpers' outputs keyed by helper and, for two-column helpers, the other
    store column). Only the store's own columns carry one, so the memos are bounded by the
    schema and live exactly as long as the visit's store."""
    col._memo = {}
    return col


def memo_of(col: Any) -> dict[Any, Any] | None:
    """The per-visit memo of a store column, or None for any other value (trusted side)."""
    if type(col) is not Column:
        return None
    try:
        return col._memo
    except AttributeError:
        return None


class Column:
    """One value per alert, with nulls. Supports arithmetic, comparisons, ``&``, ``|``, ``~``."""

    # _memo is set only on the columns a ColumnStore hands out (see _store_owned): derived
    # results of the visit, shared by every filter. Left unset (no cost) on all other columns.
    __slots__ = ("_v", "_m", "_memo")
    _memo: dict[Any, Any]
    # What restricted code may reach on a column (sandbox.namespace reads this).
    _public = frozenset({"isnull", "notnull", "fill", "tolist", "dtype", "isin", "between"})

    def __init__(self, values: np.ndarray, mask: np.ndarray | None = None):
        # _m is True where the value is null; None means no nulls (the common, fast case).
        self._v = _readonly(values)
        self._m = None if mask is None or not mask.any() else _readonly(mask)

    def __len__(self) -> int:
        return len(self._v)

    def __repr__(self) -> str:
        shown = [
            "null" if self._m is not None and self._m[i] else repr(self._v[i].item())
            for i in range(min(5, len(self)))
        ]
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

    def isin(self, values: Any) -> Column:
        """True where the value is one of ``values`` (a list, tuple or set); null gives False.

        ``alerts.diaSource.band.isin(["g", "r"])``
        """
        if not isinstance(values, list | tuple | set | frozenset):
            raise TypeError("isin() takes a list of values, e.g. band.isin(['g', 'r'])")
        wanted = list(values)
        if any(not isinstance(v, bool | int | float | str) for v in wanted):
            raise TypeError("isin() values must be numbers or strings")
        out = np.isin(self._v, np.asarray(wanted)) if wanted else np.zeros(len(self), bool)
        return Column(out if self._m is None else out & ~self._m)

    def between(self, low: Any, high: Any) -> Column:
        """True where ``low <= value <= high`` (bounds may be columns); null gives False."""
        return (self >= low) & (self <= high)

    def tolist(self) -> list[Any]:
        """The values as a Python list, null as None."""
        vals = self._v.tolist()
        if self._m is not None:
            for i in np.flatnonzero(self._m):
                vals[i] = None
        return vals

    # --- operators -------------------------------------------------------------------------
    def _binary(self, other: Any, op: Callable[[Any, Any], Any], *, compare: bool) -> Column:
        t = type(other)
        if self._m is None and (t is float or (t is int and -_INT64_END < other < _INT64_END)):
            # The common case (a cut on a column without nulls), with less bookkeeping;
            # numpy comparisons raise no floating-point warnings.
            if compare:
                return Column(np.asarray(op(self._v, other), dtype=bool))
            with np.errstate(all="ignore"):
                return Column(np.asarray(op(self._v, other)))
        ov, om = _operand(other, len(self))
        out = None
        if compare and self._v.dtype.kind == "U" and (op is operator.eq or op is operator.ne):
            out = _same_strings(self._v, ov)
            if out is not None and op is operator.ne:
                out = ~out
        if out is None:
            with np.errstate(all="ignore"):
                out = op(self._v, ov)
        mask = _or_masks(self._m, om)
        if compare:
            if mask is not None:
                out = out & ~mask  # a comparison with a null is False
            return Column(np.asarray(out, dtype=bool))
        return Column(np.asarray(out), mask)

    def __add__(self, o: Any) -> Column:
        return self._binary(o, operator.add, compare=False)

    def __radd__(self, o: Any) -> Column:
        return self._binary(o, lambda a, b: b + a, compare=False)

    def __sub__(self, o: Any) -> Column:
        return self._binary(o, operator.sub, compare=False)

    def __rsub__(self, o: Any) -> Column:
        return self._binary(o, lambda a, b: b - a, compare=False)

    def __mul__(self, o: Any) -> Column:
        return self._binary(o, operator.mul, compare=False)

    def __rmul__(self, o: Any) -> Column:
        return self._binary(o, lambda a, b: b * a, compare=False)

    def __truediv__(self, o: Any) -> Column:
        return self._binary(o, operator.truediv, compare=False)

    def __rtruediv__(self, o: Any) -> Column:
        return self._binary(o, lambda a, b: b / a, compare=False)

    def __floordiv__(self, o: Any) -> Column:
        return self._binary(o, _floordiv, compare=False)

    def __mod__(self, o: Any) -> Column:
        return self._binary(o, _mod, compare=False)

    def __pow__(self, o: Any) -> Column:
        return self._binary(o, _pow, compare=False)

    def __lt__(self, o: Any) -> Column:
        return self._binary(o, operator.lt, compare=True)

    def __le__(self, o: Any) -> Column:
        return self._binary(o, operator.le, compare=True)

    def __gt__(self, o: Any) -> Column:
        return self._binary(o, operator.gt, compare=True)

    def __ge__(self, o: Any) -> Column:
        return self._binary(o, operator.ge, compare=True)

    def __eq__(self, o: Any) -> Column:  # type: ignore[override]
        return self._binary(o, operator.eq, compare=True)

    def __ne__(self, o: Any) -> Column:  # type: ignore[override]
        return self._binary(o, operator.ne, compare=True)

    __hash__ = None  # type: ignore[assignment]

    def __neg__(self) -> Column:
        return Column(-self._v, self._m)

    def __abs__(self) -> Column:
        return Column(np.abs(self._v), self._m)

    def _flags(self) -> np.ndarray:
        v = self._v if self._v.dtype == bool else self._v.astype(bool)
        return v if self._m is None else v & ~self._m

    def __and__(self, o: Any) -> Column:
        return Column(self._flags() & _flags_of(o, len(self)))

    __rand__ = __and__

    def __or__(self, o: Any) -> Column:
        return Column(self._flags() | _flags_of(o, len(self)))

    __ror__ = __or__

    def __xor__(self, o: Any) -> Column:
        return Column(self._flags() ^ _flags_of(o, len(self)))

    def __invert__(self) -> Column:
        return Column(~self._flags())

    def __bool__(self) -> bool:
        raise TypeError(
            "a column has one value per alert, so it is neither True nor False: combine conditions "
            "with & | ~ (not `and`/`or`/`not`) and wrap each comparison in parentheses"
        )

    def __iter__(self) -> Iterator[Any]:
        return iter(self.tolist())


_INT64_END = 2**63


def _same_strings(a: np.ndarray, b: Any) -> np.ndarray | None:
    """``a == b`` for a unicode array and a string, or a unicode array of the same width, by
    comparing code points (numpy's unicode comparison is ~10x slower); None when neither."""
    width = a.dtype.itemsize // 4
    if width == 0 or not a.flags.c_contiguous:
        return None
    if isinstance(b, str):
        if len(b) > width:
            return None
        code = np.array(b, dtype=a.dtype).view(np.uint32)
    elif (
        isinstance(b, np.ndarray)
        and b.dtype == a.dtype
        and b.flags.c_contiguous
        and len(b) == len(a)
    ):
        code = b.view(np.uint32)
    else:
        return None
    points = a.view(np.uint32)
    if width == 1:
        return points == code
    return (points.reshape(-1, width) == code.reshape(-1, width)).all(axis=1)


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
            raise ValueError(
                f"columns of different lengths ({n} and {len(other)}) cannot be combined"
            )
        return other._v, other._m
    if isinstance(other, bool | int | float | str) or other is None:
        if other is None:
            return 0, np.ones(n, bool)
        if isinstance(other, int) and not isinstance(other, bool) and abs(other) >= 2**63:
            raise OverflowError("integer constants must fit in 64 bits")
        return other, None
    raise TypeError(
        f"cannot combine a column with {type(other).__name__}; use a number, a string or a column"
    )


def _flags_of(other: Any, n: int) -> np.ndarray:
    if isinstance(other, Column):
        if len(other) != n:
            raise ValueError(
                f"columns of different lengths ({n} and {len(other)}) cannot be combined"
            )
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
    Comparisons give a list of booleans, usable with :meth:`where`; a per-alert
    :class:`Column` on the other side is repeated for every point of that alert's list
    (``lc.band == alerts.diaSource.band``).

    Points are kept in packet order; everything that depends on time ("first", "last",
    rates) uses the ``midpointMjdTai`` of the same list, so it is right whatever the order.
    """

    __slots__ = ("_off", "_items", "_lm", "_info", "_memo", "_seg", "_recipe")
    _public = frozenset(
        {
            "isnull",
            "notnull",
            "where",
            "in_band",
            "times",
            "count",
            "max",
            "min",
            "sum",
            "mean",
            "median",
            "std",
            "n_distinct",
            "any",
            "all",
            "first",
            "last",
            "first_time",
            "last_time",
            "rate",
            "slope",
        }
    )

    def __init__(
        self,
        offsets: np.ndarray,
        items: Column,
        list_mask: np.ndarray | None,
        info: _ListInfo | None = None,
        seg: _Segments | None = None,
    ):
        # Index arrays derived from the offsets, shared by every list of the same shape.
        self._seg = seg if seg is not None and seg.off is offsets else _Segments(_readonly(offsets))
        self._off = self._seg.off
        self._items = items
        self._lm = None if list_mask is None or not list_mask.any() else _readonly(list_mask)
        # Where sibling fields of the same list (times, bands) come from; None for lists built
        # by hand in tests, which then have no time order.
        self._info = info
        # Results of reductions, shared by every filter of the visit: lightcurve columns come
        # from the store's cache, so a hundred filters asking for history("psfFlux").max()
        # compute it once. Safe to share: every result is an immutable, read-only column.
        self._memo: dict[Any, Any] = {}
        # How the trusted side can compute this list again (sandbox.digest): set on the store's
        # lists and what is derived from them; None for every other list.
        self._recipe: list[Any] | None = None

    def _memoized(self, key: Any, compute: Callable[[], Any]) -> Any:
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = compute()
            if self._recipe is not None and self._info is not None:
                self._info.learn(self._recipe, key, hit)
        return hit

    def __len__(self) -> int:
        return len(self._off) - 1

    def __repr__(self) -> str:
        return f"ListColumn[{self._items.dtype}](length {len(self)}, {len(self._items)} values)"

    def _with(self, items: Column) -> ListColumn:
        return ListColumn(self._off, items, self._lm, self._info, self._seg)

    def _same_shape(self, other: ListColumn) -> bool:
        return other._seg is self._seg or np.array_equal(other._off, self._off)

    def isnull(self) -> Column:
        """True where the whole list is null (no history), as opposed to empty."""
        return Column(np.zeros(len(self), bool) if self._lm is None else self._lm.copy())

    def notnull(self) -> Column:
        """True where the list is present (possibly empty)."""
        return ~self.isnull()

    def where(self, condition: ListColumn) -> ListColumn:
        """Keep only the points where ``condition`` (a list of booleans) is True."""
        if not isinstance(condition, ListColumn) or not self._same_shape(condition):
            raise ValueError(
                "where() needs a condition on the same lightcurve, e.g. lc.band == 'r'"
            )
        keep = condition._items._flags()
        mask = keep.copy() if self._items._m is None else keep & ~self._items._m
        return self._with(Column(self._items._v, ~mask))

    def in_band(self, band: Any) -> ListColumn:
        """Keep only the points taken in ``band``: a letter (``"r"``) or a per-alert column
        (``alerts.diaSource.band``: the current source's band, alert by alert)."""
        if isinstance(band, str):
            return self._memoized(
                ("in_band", band), lambda: self.where(self._sibling("band") == band)
            )
        key = ("in_band", id(band))
        hit = self._memo.get(key)
        if hit is None or hit[0] is not band:
            hit = self._memo[key] = (band, self.where(self._sibling("band") == band))
            if self._recipe is not None and self._info is not None:
                self._info.learn(self._recipe, ("in_band", band), hit[1])
        return hit[1]

    def times(self) -> ListColumn:
        """The ``midpointMjdTai`` of each kept point (null where this list's value is null)."""
        return self._memoized("times", self._times_impl)

    def _times_impl(self) -> ListColumn:
        t = self._sibling("midpointMjdTai")._items
        return self._with(Column(t._v, _or_masks(t._m, self._items._m)))

    def _sibling(self, name: str) -> ListColumn:
        if self._info is None:
            raise ValueError(f"this lightcurve has no {name!r} field alongside it")
        sib = self._info.sibling(name)
        if not self._same_shape(sib):  # pragma: no cover - same list by design
            raise ValueError(f"{name!r} does not line up with this lightcurve")
        return sib

    # Element-wise operators act on every point and keep the list shape.
    def _elementwise(self, other: Any, method: str) -> ListColumn:
        if isinstance(other, ListColumn):
            if not self._same_shape(other):
                raise ValueError(
                    "lightcurves of different shapes cannot be combined point by point"
                )
            other = other._items
        elif isinstance(other, Column):
            if len(other) != len(self):
                raise ValueError(
                    f"a column of {len(other)} values cannot be combined with a "
                    f"lightcurve of {len(self)} alerts"
                )
            other = self._per_point(other)
        return self._with(getattr(self._items, method)(other))

    def _per_point(self, col: Column) -> Column:
        """A per-alert column repeated for every point of that alert's list."""
        lengths = self._seg.lengths
        return Column(
            np.repeat(col._v, lengths), None if col._m is None else np.repeat(col._m, lengths)
        )

    def __add__(self, o: Any) -> ListColumn:
        return self._elementwise(o, "__add__")

    def __radd__(self, o: Any) -> ListColumn:
        return self._elementwise(o, "__radd__")

    def __sub__(self, o: Any) -> ListColumn:
        return self._elementwise(o, "__sub__")

    def __rsub__(self, o: Any) -> ListColumn:
        return self._elementwise(o, "__rsub__")

    def __mul__(self, o: Any) -> ListColumn:
        return self._elementwise(o, "__mul__")

    def __rmul__(self, o: Any) -> ListColumn:
        return self._elementwise(o, "__rmul__")

    def __truediv__(self, o: Any) -> ListColumn:
        return self._elementwise(o, "__truediv__")

    def __rtruediv__(self, o: Any) -> ListColumn:
        return self._elementwise(o, "__rtruediv__")

    def __floordiv__(self, o: Any) -> ListColumn:
        return self._elementwise(o, "__floordiv__")

    def __mod__(self, o: Any) -> ListColumn:
        return self._elementwise(o, "__mod__")

    def __pow__(self, o: Any) -> ListColumn:
        return self._elementwise(o, "__pow__")

    def __lt__(self, o: Any) -> ListColumn:
        return self._elementwise(o, "__lt__")

    def __le__(self, o: Any) -> ListColumn:
        return self._elementwise(o, "__le__")

    def __gt__(self, o: Any) -> ListColumn:
        return self._elementwise(o, "__gt__")

    def __ge__(self, o: Any) -> ListColumn:
        return self._elementwise(o, "__ge__")

    def __eq__(self, o: Any) -> ListColumn:  # type: ignore[override]
        return self._elementwise(o, "__eq__")

    def __ne__(self, o: Any) -> ListColumn:  # type: ignore[override]
        return self._elementwise(o, "__ne__")

    def __and__(self, o: Any) -> ListColumn:
        return self._elementwise(o, "__and__")

    def __or__(self, o: Any) -> ListColumn:
        return self._elementwise(o, "__or__")

    def __invert__(self) -> ListColumn:
        return self._with(~self._items)

    def __neg__(self) -> ListColumn:
        return self._with(-self._items)

    def __abs__(self) -> ListColumn:
        return self._with(abs(self._items))

    __hash__ = None  # type: ignore[assignment]

    def __bool__(self) -> bool:
        raise TypeError(
            "a lightcurve column is not True or False; reduce it first, e.g. .count() > 0"
        )

    # --- per-alert reductions ----------------------------------------------------------------
    # All of them work on the flat array of points with the list offsets: ufunc.reduceat over
    # the non-empty lists, binary searches and one lexsort at most; never a Python loop over
    # alerts. Per-point intermediates (validity, float64 values) are memoized per list.
    def _valid(self) -> np.ndarray:
        return self._memoized("valid", self._valid_impl)

    def _valid_impl(self) -> np.ndarray:
        m = self._items._m
        v = self._items._v
        if v.dtype.kind == "f":
            bad = np.isnan(v)  # a NaN measurement is no measurement
            if m is not None:
                bad |= m
            return _readonly(~bad)
        return _readonly(np.ones(len(v), bool) if m is None else ~m)

    def _all_valid(self) -> bool:
        return self._memoized("all_valid", lambda: bool(self._valid().all()))

    def _n_valid(self) -> np.ndarray:
        """Valid points per alert (int64, read-only)."""
        return self._memoized("n_valid", lambda: _readonly(self._seg.count(self._valid())))

    def count(self) -> Column:
        """Number of non-null points per alert (0 for a null list)."""
        return self._memoized("count", lambda: Column(self._n_valid()))

    def _numeric(self, what: str) -> np.ndarray:
        vals = self._items._v
        if vals.dtype.kind not in "fiub":
            raise TypeError(f"cannot take the {what} of a {self._items.dtype} lightcurve field")
        return vals

    def _f64(self, what: str) -> np.ndarray:
        """The values as float64 (no copy when they already are), read-only."""
        hit = self._memo.get("f64")
        if hit is None:
            hit = self._memo["f64"] = _readonly(self._numeric(what).astype(np.float64, copy=False))
        return hit

    def _reduce(self, ufunc: np.ufunc, fill: float, what: str) -> Column:
        vals = self._f64(what)
        work = vals if self._all_valid() else np.where(self._valid(), vals, fill)
        return Column(self._seg.reduce(ufunc, work, fill), self._n_valid() == 0)

    def max(self) -> Column:
        """Largest value per alert; null where there is none."""
        return self._memoized("max", self._max_impl)

    def _max_impl(self) -> Column:
        return self._reduce(np.maximum, -np.inf, "max")

    def min(self) -> Column:
        """Smallest value per alert; null where there is none."""
        return self._memoized("min", self._min_impl)

    def _min_impl(self) -> Column:
        return self._reduce(np.minimum, np.inf, "min")

    def sum(self) -> Column:
        """Sum per alert (0 where there are no points)."""
        return self._memoized("sum", self._sum_impl)

    def _sum_impl(self) -> Column:
        return Column(self._reduce(np.add, 0.0, "sum")._v)

    def mean(self) -> Column:
        """Mean per alert; null where there are no points."""
        return self._memoized("mean", self._mean_impl)

    def _mean_impl(self) -> Column:
        n = self._n_valid()
        with np.errstate(all="ignore"):
            return Column(self.sum()._v / np.maximum(n, 1), n == 0)

    def std(self) -> Column:
        """Population standard deviation per alert; null where there are no points."""
        return self._memoized("std", self._std_impl)

    def _std_impl(self) -> Column:
        n = self._n_valid()
        mean = self.mean()._v
        with np.errstate(all="ignore"):
            dev = self._f64("std") - np.repeat(mean, self._seg.lengths)
            dev *= dev
        if not self._all_valid():
            dev[~self._valid()] = 0.0
        var = self._seg.reduce(np.add, dev, 0.0) / np.maximum(n, 1)
        return Column(np.sqrt(var), n == 0)

    def _sorted_by_value(self) -> tuple[np.ndarray, np.ndarray]:
        """Point order sorted by (alert, validity, value), and the valid count per alert."""
        vals = self._items._v
        valid = self._valid()
        # Invalid points sort after the valid ones of their alert.
        order = np.lexsort((vals, ~valid, self._seg.ids()))
        return order, self._n_valid()

    def median(self) -> Column:
        """Median per alert (mean of the two middle values for an even count); null if none."""
        return self._memoized("median", self._median_impl)

    def _median_impl(self) -> Column:
        vals = self._f64("median")
        order, n = self._sorted_by_value()
        start = self._off[:-1]
        empty = n == 0
        lo = start + np.maximum(n - 1, 0) // 2
        hi = start + np.maximum(n, 1) // 2
        if len(vals) == 0:
            return Column(np.zeros(len(self)), np.ones(len(self), bool))
        lo, hi = np.where(empty, 0, lo), np.where(empty, 0, hi)
        return Column((vals[order[lo]] + vals[order[hi]]) / 2.0, empty)

    def n_distinct(self) -> Column:
        """Number of distinct non-null values per alert (e.g. how many bands were seen)."""
        return self._memoized("n_distinct", self._n_distinct_impl)

    def _n_distinct_impl(self) -> Column:
        vals = self._items._v
        order, n = self._sorted_by_value()
        if len(vals) == 0:
            return Column(np.zeros(len(self), np.int64))
        sv, seg, ok = vals[order], self._seg.ids()[order], self._valid()[order]
        new = np.ones(len(sv), bool)
        new[1:] = (sv[1:] != sv[:-1]) | (seg[1:] != seg[:-1])
        return Column(np.bincount(seg[new & ok], minlength=len(self)).astype(np.int64))

    def any(self) -> Column:
        """True where at least one point is True (null points count as False)."""
        return self._memoized("any", self._any_impl)

    def _any_impl(self) -> Column:
        return self._flags_count() > 0

    def all(self) -> Column:
        """True where every non-null point is True and there is at least one point."""
        return self._memoized("all", self._all_impl)

    def _all_impl(self) -> Column:
        return (self._flags_count() == self.count()) & (self.count() > 0)

    def _flags_count(self) -> Column:
        return Column(self._seg.count(self._items._flags()))

    # --- time order ----------------------------------------------------------------------------
    def _time_values(self) -> np.ndarray | None:
        if self._info is None:
            return None
        t = self._sibling("midpointMjdTai")._items
        return t._v if t._m is None else np.where(t._m, np.nan, t._v)

    def _last_positions(self, valid: np.ndarray, *, latest: bool) -> np.ndarray:
        """Index of each alert's earliest (or latest) valid point by time; -1 where none."""
        seg = self._seg
        if not len(valid) or not valid.any():
            return np.full(len(self), -1, dtype=np.int64)
        if self._info is None or self._info.time_sorted():
            # Packet order is time order (the usual case; a sorted list has no null or NaN
            # time): binary searches among the valid positions suffice.
            vp = np.flatnonzero(valid)
            if latest:
                k = np.searchsorted(vp, seg.off[1:], side="left") - 1
                pos = vp[np.maximum(k, 0)]
                found = (k >= 0) & (pos >= seg.off[:-1])
            else:
                k = np.searchsorted(vp, seg.off[:-1], side="left")
                pos = vp[np.minimum(k, len(vp) - 1)]
                found = (k < len(vp)) & (pos < seg.off[1:])
            return np.where(found, pos, -1)
        t = self._time_values()
        assert t is not None
        valid = valid & ~np.isnan(t)
        out = np.full(len(self), -1, dtype=np.int64)
        nonempty = seg.nonempty
        key = np.where(valid, t, -np.inf if latest else np.inf)
        order = np.lexsort((key, seg.ids()))
        pick = seg.off[1:][nonempty] - 1 if latest else seg.starts
        pos = order[pick]
        seg_has = seg.count(valid)[nonempty] > 0
        out[nonempty] = np.where(seg_has, pos, -1)
        return out

    def _pick(self, pos: np.ndarray, values: Column | None = None) -> Column:
        values = self._items if values is None else values
        missing = pos < 0
        if len(values._v) == 0:
            return Column(np.zeros(len(self), values._v.dtype), np.ones(len(self), bool))
        safe = np.where(missing, 0, pos)
        return Column(values._v[safe], missing)

    def first(self) -> Column:
        """The earliest point per alert by ``midpointMjdTai``; null where there is none."""
        return self._memoized("first", self._first_impl)

    def _first_impl(self) -> Column:
        return self._pick(self._last_positions(self._valid(), latest=False))

    def last(self) -> Column:
        """The latest point per alert by ``midpointMjdTai``; null where there is none."""
        return self._memoized("last", self._last_impl)

    def _last_impl(self) -> Column:
        return self._pick(self._last_positions(self._valid(), latest=True))

    def first_time(self) -> Column:
        """``midpointMjdTai`` of the earliest point per alert; null where there is none."""
        return self.times().first()

    def last_time(self) -> Column:
        """``midpointMjdTai`` of the latest point per alert; null where there is none."""
        return self.times().last()

    def rate(self) -> Column:
        """Change per day between each alert's last two points by time:
        ``(last - previous) / (t_last - t_previous)``; null with fewer than two points.

        On magnitudes this is mag/day (negative: brightening)."""
        return self._memoized("rate", self._rate_impl)

    def _rate_impl(self) -> Column:
        valid = self._valid()
        last = self._last_positions(valid, latest=True)
        before = valid.copy()
        before[last[last >= 0]] = False
        prev = self._last_positions(before, latest=True)
        times = self.times()._items
        dv = self._pick(last) - self._pick(prev)
        dt = self._pick(last, times) - self._pick(prev, times)
        return _nonzero_ratio(dv, dt)

    def slope(self) -> Column:
        """Least-squares slope of value against ``midpointMjdTai`` per alert (per day);
        null with fewer than two points at different times."""
        return self._memoized("slope", self._slope_impl)

    def _slope_impl(self) -> Column:
        y = self._f64("slope")
        t = self._time_values()
        if t is None:
            raise ValueError("slope() needs the times of this lightcurve")
        ok = self._valid() & ~np.isnan(t)
        seg = self._seg
        n = seg.count(ok).astype(np.float64)
        nz = np.maximum(n, 1)
        # Centre times and values per alert first: MJDs near 6e4 squared would swamp the sums.
        tm = np.repeat(seg.reduce(np.add, np.where(ok, t, 0.0), 0.0) / nz, seg.lengths)
        ym = np.repeat(seg.reduce(np.add, np.where(ok, y, 0.0), 0.0) / nz, seg.lengths)
        dt = np.where(ok, t - tm, 0.0)
        dy = np.where(ok, y - ym, 0.0)
        sxx = seg.reduce(np.add, dt * dt, 0.0)
        sxy = seg.reduce(np.add, dt * dy, 0.0)
        bad = (n < 2) | (sxx <= 0)
        with np.errstate(all="ignore"):
            return Column(np.where(bad, 0.0, sxy / np.where(bad, 1.0, sxx)), bad)


def _nonzero_ratio(num: Column, den: Column) -> Column:
    """num / den, null where either is null or den is zero."""
    bad = (den._v == 0) if den._m is None else (den._m | (den._v == 0))
    bad = bad if num._m is None else bad | num._m
    with np.errstate(all="ignore"):
        out = num._v.astype(np.float64) / np.where(bad, 1, den._v)
    return Column(np.where(bad, 0.0, out), bad)


class _Segments:
    """Index arrays derived from the offsets of one list shape, computed once and shared by
    every list of that shape (all fields of ``prvDiaSources``, their ``where``/``in_band``
    results). Trusted side: restricted code cannot reach it."""

    __slots__ = ("off", "lengths", "nonempty", "starts", "dense", "total", "_ids")

    def __init__(
        self, off: np.ndarray, given: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    ):
        """``given``: the lengths, non-empty flags and starts the trusted side computed
        already (handed to a worker with a lightcurve: computing them again touches ~0.3 MB
        per lightcurve)."""
        self.off = off
        if given is None:
            lengths = np.diff(off)
            nonempty = lengths > 0
            given = (lengths, nonempty, off[:-1][nonempty])
        self.lengths, self.nonempty, self.starts = (_readonly(a) for a in given)
        self.dense = len(self.starts) == len(self.lengths)  # no empty list
        self.total = int(off[-1]) if len(off) else 0
        self._ids: np.ndarray | None = None

    def ids(self) -> np.ndarray:
        """Which list each point belongs to."""
        if self._ids is None:
            self._ids = _readonly(np.repeat(np.arange(len(self.lengths)), self.lengths))
        return self._ids

    def reduce(self, ufunc: np.ufunc, per_point: np.ndarray, fill: float) -> np.ndarray:
        """``ufunc`` over each list's points (a new float64 array); ``fill`` for an empty list.
        reduceat only sees the non-empty lists: it misbehaves on empty ones."""
        if len(per_point) != self.total:
            per_point = per_point[: self.total]
        if self.dense and len(self.starts):
            return ufunc.reduceat(per_point, self.starts)
        out = np.full(len(self.lengths), fill, dtype=np.float64)
        if len(self.starts):
            out[self.nonempty] = ufunc.reduceat(per_point, self.starts)
        return out

    def count(self, flags: np.ndarray) -> np.ndarray:
        """Number of True points per list (int64)."""
        total = self.total
        if len(flags) != total:
            flags = flags[:total]
        trues = int(np.count_nonzero(flags))
        if trues == total:
            return self.lengths
        if 4 * (total - trues) <= total:  # few False: subtract them from the lengths
            where = np.searchsorted(self.off, np.flatnonzero(~flags), side="right") - 1
            return self.lengths - np.bincount(where, minlength=len(self.lengths))
        if 4 * trues <= total:  # few True: count them
            where = np.searchsorted(self.off, np.flatnonzero(flags), side="right") - 1
            return np.bincount(where, minlength=len(self.lengths)).astype(np.int64)
        out = np.zeros(len(self.lengths), np.int64)
        if len(self.starts):
            out[self.nonempty] = np.add.reduceat(flags, self.starts, dtype=np.int64)
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

    def history(self, name: str) -> ListColumn:
        """The detection history of each alert for one diaSource field: its
        ``prvDiaSources.<name>`` followed by the current ``diaSource.<name>``.

        ``alerts.history("psfFlux").max()``; times, bands and ``in_band`` work as on any
        lightcurve. Never null: an alert with no previous sources has one point."""
        if not isinstance(name, str):
            raise TypeError("history() takes a diaSource field name such as 'psfFlux'")
        return self._store.history(name)

    def band_field(self, name: str, band: Any = None) -> Column:
        """A per-band diaObject field for each alert's own band:
        ``alerts.band_field("psfFluxMean")`` is ``diaObject.r_psfFluxMean`` for an r-band
        alert, ``g_psfFluxMean`` for a g-band one, and so on; ``band="g"`` (or a column of
        band letters) picks another band."""
        if not isinstance(name, str):
            raise TypeError("band_field() takes a field name such as 'psfFluxMean'")
        return self._store.band_field(name, band)

    def __repr__(self) -> str:
        return f"<alerts: {len(self)} alerts of one visit>"
