"""The helper library filters may call, documented (each with an example) in docs/filters.md.

Every helper is vectorized: it takes and returns columns (or numbers) and never loops over
alerts in Python. Nothing here reaches files, the network, the clock or randomness: a filter is
a deterministic function of the alerts.

Groups:

- nulls and flags: ``isnull``, ``notnull``, ``fill``, ``is_set``, ``any_set``, ``all_set``,
  ``none_set``, ``if_else``;
- maths: ``sqrt``, ``log10``, ``log``, ``exp``, ``minimum``, ``maximum``; trigonometry in
  radians ``sin``, ``cos``, ``tan``, ``asin``, ``acos``, ``atan2``, ``hypot``, and ``radians``,
  ``degrees`` to convert;
- photometry (fluxes in nJy, AB zero point 31.4): ``mag_from_flux``, ``flux_from_mag``,
  ``mag_err``, ``colour``, ``flux_ratio``;
- time and cadence: ``days_since_first_detection``, ``rate_between``, ``thin``
  (:mod:`sandbox.lightcurves`);
- cutouts of the whole visit (:mod:`sandbox.cutouts`): ``cutout_centroid``,
  ``cutout_second_moments``, ``cutout_elongation``, ``cutout_median``;
- sky (the ``sky`` namespace, all angles in degrees): ``sky.separation``, ``sky.cone``,
  ``sky.watchlist``, ``sky.nearest``, ``sky.galactic_latitude``, ``sky.galactic_longitude``,
  ``sky.ecliptic_latitude``, ``sky.ecliptic_longitude``; ``arcsec`` and ``arcmin`` in degrees.

Lightcurve reductions are methods of the columns themselves (:class:`sandbox.view.ListColumn`).

Every helper also takes plain numbers (``None`` for null), as ``filter_alert`` and ``refine``
see them, and then returns a number (``None`` for null): with no column among its arguments a
helper runs its column code on one-alert columns (:func:`_numbers_too`), so the two forms
cannot drift apart.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from engine.alerts.fields import AB_ZERO_POINT_NJY
from sandbox.cutouts import cutout_centroid, cutout_elongation, cutout_median, cutout_second_moments
from sandbox.lightcurves import thin
from sandbox.view.columns import BANDS, AlertsView, Column, ListColumn, _Group, _readonly, memo_of
from sandbox.view.image import Image
from sandbox.view.record import AlertRecord

__all__ = ["Namespace", "exported", "implied_names"]

_MAG_PER_LN = 2.5 / math.log(10)  # d(mag) = 1.0857 d(flux)/flux


class Namespace:
    """A group of helpers reached by attribute (``sky.cone``); only listed names resolve."""

    def __init__(self, name: str, members: dict[str, Any]):
        self._name = name
        self._members = dict(members)

    def lookup(self, attr: str) -> Any:
        try:
            return self._members[attr]
        except KeyError:
            raise AttributeError(
                f"{self._name} has no helper {attr!r}; see docs/filters.md"
            ) from None

    def __repr__(self) -> str:
        return f"<helpers {self._name}: {', '.join(sorted(self._members))}>"


Value = Column | ListColumn | float | int


def _per_visit(key: str, cols: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
    """``compute()`` once per visit when every input is a column of the visit's store (the
    same objects for every filter): a hundred filters asking for the galactic latitude of
    ``ds.ra, ds.dec`` share one result. The result lives in the first column's memo, keyed
    by helper and the other inputs' identity (held, so the identity cannot be reused), and
    dies with the visit. Any other input (a derived column, a number) computes afresh.
    Results must be immutable: read-only arrays, columns, tuples of them."""
    memo = memo_of(cols[0])
    if memo is None or any(memo_of(c) is None for c in cols[1:]):
        return compute()
    mkey = (key, *(id(c) for c in cols[1:]))
    hit = memo.get(mkey)
    if hit is not None and all(a is b for a, b in zip(hit[0], cols[1:], strict=True)):
        return hit[1]
    result = compute()
    memo[mkey] = (cols[1:], result)
    if key in SKY_TRANSFORMS:
        # The trusted side can compute this once for every worker (sandbox.digest).
        recipes = [memo_of(c).get("recipe") for c in cols]  # type: ignore[union-attr]
        learn = memo.get("learn")
        if learn is not None and all(recipes):
            learn(["sky", key, *recipes])
    return result


_PLAIN = (bool, int, float, str)


def _one(x: Any) -> Column:
    """A plain value as a one-alert column; ``None`` is a null."""
    if x is None:
        return Column(np.zeros(1), np.ones(1, bool))
    if isinstance(x, int) and not isinstance(x, bool) and abs(x) >= 2**63:
        raise OverflowError("integer constants must fit in 64 bits")
    return Column(np.asarray([x]))


def _plain(x: Any) -> Any:
    """A one-alert result back as a plain value (``None`` where null)."""
    if isinstance(x, Column):
        if x._m is not None and x._m[0]:
            return None
        v = x._v[0]
        return str(v) if x._v.dtype.kind == "U" else v.item()
    if isinstance(x, tuple):
        return tuple(_plain(v) for v in x)
    return x


def _numbers_too(values: int | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Let a column helper take plain numbers, as the per-alert form has them.

    When none of the first ``values`` arguments (all, by default) is a column and all are
    numbers, strings, booleans or None, each becomes a one-alert column, the column code runs,
    and its one-alert result comes back as a number (None where null). One implementation for
    both forms: ``sky.galactic_latitude(ra, dec)`` in ``filter_alert`` is exactly the value the
    vectorized form computes for that alert, nulls and NaN included.
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def helper(*args: Any, **kwargs: Any) -> Any:
            k = len(args) if values is None else min(values, len(args))
            head = args[:k]
            if head and all(a is None or isinstance(a, _PLAIN) for a in head):
                return _plain(fn(*(_one(a) for a in head), *args[k:], **kwargs))
            return fn(*args, **kwargs)

        return helper

    return wrap


# --- nulls and flags ----------------------------------------------------------------------------


def isnull(x: Any) -> Any:
    """True where the value, the whole lightcurve or the whole record is null.

    ``isnull(alerts.diaObject)`` is True for solar-system alerts (they have no diaObject);
    ``isnull(alerts.prvDiaSources)`` for alerts with no history. In the per-alert form a value
    is null when it is None (``isnull(alert["diaObject"])``); NaN is a value, not a null.
    """
    if isinstance(x, Column | ListColumn):
        return x.isnull()
    if type(x) is _Group:
        mask = _record_null(x)
        return Column(np.zeros(len(x._store), bool) if mask is None else mask.copy())
    if x is None or isinstance(x, (*_PLAIN, tuple, list, AlertRecord, Image)):
        return x is None
    raise TypeError(
        f"isnull() takes a column, a record such as alerts.diaObject, or a value, "
        f"not {type(x).__name__}"
    )


def notnull(x: Any) -> Any:
    """True where the value, the lightcurve or the record is present (see :func:`isnull`)."""
    out = isnull(x)
    return ~out if isinstance(out, Column) else not out


def _record_null(group: _Group) -> np.ndarray | None:
    """Null mask of the record (struct) or list a group of columns stands for (trusted side)."""
    store, prefix = group._store, group._prefix
    if "." in prefix:
        raise TypeError(
            f"isnull() takes a column or a whole top-level record such as alerts.diaObject, "
            f"not {prefix!r}; test one of its fields instead"
        )
    if store.kinds.get(prefix) == "list":
        return store.list_offsets(prefix)[1]
    return store.struct_null(prefix)


def fill(x: Any, value: Any) -> Any:
    """``x`` with nulls replaced by ``value``: ``fill(alerts.diaSource.extendedness, 0)``;
    on a plain value, ``value`` if it is None."""
    if isinstance(x, Column):
        return x.fill(value)
    if x is None or isinstance(x, _PLAIN):
        return value if x is None else x
    raise TypeError(f"fill() takes a column or a number, not {type(x).__name__}")


def _flag(flag: Any, null: bool) -> np.ndarray | bool:
    if isinstance(flag, Column):
        v = flag._v if flag._v.dtype == bool else flag._v.astype(bool)
        return v if flag._m is None else np.where(flag._m, null, v)
    if isinstance(flag, bool):
        return flag
    raise TypeError(f"flags are boolean columns (or True/False), not {type(flag).__name__}")


def _flags(flags: tuple[Any, ...], null: bool) -> list[np.ndarray | bool]:
    if not flags:
        raise TypeError("give at least one flag column")
    return [_flag(f, null) for f in flags]


def _length(*xs: Any) -> int:
    for x in xs:
        if isinstance(x, Column | ListColumn):
            return len(x)
    raise TypeError("at least one argument must be a column")


@_numbers_too()
def is_set(flag: Column, *, null: bool = False) -> Column:
    """True where ``flag`` is True; a null flag counts as ``null`` (not set, by default).

    ``is_set(alerts.diaSource.pixelFlags_saturatedCenter, null=True)`` treats unknown as set.
    """
    return Column(np.asarray(_flag(flag, null), bool))


@_numbers_too()
def any_set(*flags: Column, null: bool = False) -> Column:
    """True where at least one flag is True; null flags count as ``null`` (False by default)."""
    n = _length(*flags)
    out = np.zeros(n, bool)
    for f in _flags(flags, null):
        out |= f
    return Column(out)


@_numbers_too()
def all_set(*flags: Column, null: bool = False) -> Column:
    """True where every flag is True; null flags count as ``null`` (False by default)."""
    n = _length(*flags)
    out = np.ones(n, bool)
    for f in _flags(flags, null):
        out &= f
    return Column(out)


@_numbers_too()
def none_set(*flags: Column, null: bool = False) -> Column:
    """True where no flag is True. A null flag counts as ``null``: with ``null=True`` an alert
    whose flag is unknown is rejected (the strict quality cut)."""
    return ~any_set(*flags, null=null)


@_numbers_too()
def if_else(condition: Column, then: Any, otherwise: Any) -> Column:
    """Per alert, ``then`` where ``condition`` is True, else ``otherwise`` (a null condition
    counts as False). Both may be columns or numbers: ``if_else(band == 'u', 0.5, 0.2)``."""
    if not isinstance(condition, Column):
        raise TypeError("if_else needs a condition column, e.g. alerts.diaSource.band == 'g'")
    n = len(condition)
    cond = condition._flags()
    tv, tm = _values(then, n)
    ov, om = _values(otherwise, n)
    mask = None
    if tm is not None or om is not None:
        mask = np.where(
            cond, np.zeros(n, bool) if tm is None else tm, np.zeros(n, bool) if om is None else om
        )
    return Column(np.where(cond, tv, ov), mask)


def _values(x: Any, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(x, Column):
        if len(x) != n:
            raise ValueError(f"columns of different lengths ({n} and {len(x)}) cannot be combined")
        return x._v, x._m
    if isinstance(x, bool | int | float | str):
        return np.full(n, x), None
    raise TypeError(f"expected a column or a number, got {type(x).__name__}")


# --- maths ----------------------------------------------------------------------------------


def _map(x: Any, fn: Callable[[np.ndarray], np.ndarray]) -> Any:
    """Apply an element-wise float function to a column, a lightcurve or a number."""
    if isinstance(x, Column):

        def compute() -> Column:
            with np.errstate(all="ignore"):
                return Column(fn(x._v.astype(np.float64, copy=False)), x._m)

        # Only the helpers' own functions are keys (a bounded set), never a caller's.
        return _per_visit(fn.__name__, (x,), compute) if fn in _MAPPED else compute()
    if isinstance(x, ListColumn):
        return x._with(_map(x._items, fn))
    if isinstance(x, bool | int | float):
        with np.errstate(all="ignore"):
            return float(fn(np.asarray(x, dtype=np.float64)))
    if x is None:  # a null in the per-alert form
        return None
    raise TypeError(f"expected a column or a number, got {type(x).__name__}")


def _unary(fn: Callable[[np.ndarray], np.ndarray], name: str, doc: str) -> Callable[[Any], Any]:
    def helper(x: Any) -> Any:
        return _map(x, fn)

    helper.__name__ = helper.__qualname__ = name
    helper.__doc__ = doc
    return helper


def _mag(f: np.ndarray) -> np.ndarray:
    return np.where(f > 0, -2.5 * np.log10(np.where(f > 0, f, 1.0)) + AB_ZERO_POINT_NJY, np.nan)


def _flux(m: np.ndarray) -> np.ndarray:
    return 10 ** ((AB_ZERO_POINT_NJY - m) / 2.5)


_MAPPED = frozenset(
    {
        np.sqrt,
        np.log10,
        np.log,
        np.exp,
        _mag,
        _flux,
        np.sin,
        np.cos,
        np.tan,
        np.arcsin,
        np.arccos,
        np.radians,
        np.degrees,
    }
)

sqrt = _unary(np.sqrt, "sqrt", "Square root, element-wise.")
log10 = _unary(np.log10, "log10", "Base-10 logarithm, element-wise (log of <= 0 is NaN or -inf).")
log = _unary(np.log, "log", "Natural logarithm, element-wise.")
exp = _unary(np.exp, "exp", "Exponential, element-wise.")
# Trigonometry in radians, as in Python's math module; radians()/degrees() convert the
# catalogue's degrees. Out of domain (asin(2)) is NaN, never an error, in both forms.
sin = _unary(np.sin, "sin", "Sine of an angle in radians, element-wise.")
cos = _unary(np.cos, "cos", "Cosine of an angle in radians, element-wise.")
tan = _unary(np.tan, "tan", "Tangent of an angle in radians, element-wise.")
asin = _unary(np.arcsin, "asin", "Arcsine in radians [-pi/2, pi/2]; NaN outside [-1, 1].")
acos = _unary(np.arccos, "acos", "Arccosine in radians [0, pi]; NaN outside [-1, 1].")
radians = _unary(np.radians, "radians", "Degrees to radians, element-wise.")
degrees = _unary(np.degrees, "degrees", "Radians to degrees, element-wise.")


def _binary(a: Any, b: Any, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Any:
    """``fn`` element-wise on two operands: columns, lightcurves (point by point; a per-alert
    column is repeated for every point) or numbers; a null on either side gives null."""
    lc = a if isinstance(a, ListColumn) else b if isinstance(b, ListColumn) else None
    if lc is not None:

        def items(x: Any) -> Any:
            if isinstance(x, ListColumn):
                if not lc._same_shape(x):
                    raise ValueError(
                        "lightcurves of different shapes cannot be combined point by point"
                    )
                return x._items
            if isinstance(x, Column):
                if len(x) != len(lc):
                    raise ValueError(
                        f"a column of {len(x)} values cannot be combined with a "
                        f"lightcurve of {len(lc)} alerts"
                    )
                return lc._per_point(x)
            return x

        return lc._with(_binary(items(a), items(b), fn))
    n = _length(a, b)
    av, am = _values(a, n)
    bv, bm = _values(b, n)
    mask = am if bm is None else bm if am is None else am | bm
    with np.errstate(all="ignore"):
        return Column(fn(av, bv), mask)


@_numbers_too()
def minimum(a: Any, b: Any) -> Any:
    """The smaller of two columns (or a column and a number), alert by alert."""
    return _binary(a, b, np.minimum)


@_numbers_too()
def maximum(a: Any, b: Any) -> Any:
    """The larger of two columns (or a column and a number), alert by alert."""
    return _binary(a, b, np.maximum)


def _float_pair(
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def apply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return fn(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))

    return apply


_ATAN2 = _float_pair(np.arctan2)
_HYPOT = _float_pair(np.hypot)


@_numbers_too()
def atan2(y: Any, x: Any) -> Any:
    """The angle in radians (-pi, pi] of the point (x, y), element-wise; ``atan2(0, 0)`` is 0."""
    return _binary(y, x, _ATAN2)


@_numbers_too()
def hypot(a: Any, b: Any) -> Any:
    """``sqrt(a**2 + b**2)`` element-wise, without overflow for large values."""
    return _binary(a, b, _HYPOT)


# --- photometry -------------------------------------------------------------------------------


def mag_from_flux(flux: Any) -> Any:
    """AB magnitude from a flux in nJy: ``-2.5 log10(flux) + 31.4``; non-positive flux → NaN
    (which fails every comparison). Works on columns, lightcurves and numbers."""
    return _map(flux, _mag)


def flux_from_mag(mag: Any) -> Any:
    """Flux in nJy from an AB magnitude: ``10 ** ((31.4 - mag) / 2.5)``."""
    return _map(mag, _flux)


@_numbers_too()
def mag_err(flux: Any, flux_err: Any) -> Any:
    """Magnitude uncertainty from a flux and its error: ``1.0857 * |flux_err / flux|``."""
    return abs(flux_err / flux) * _MAG_PER_LN


@_numbers_too()
def colour(flux_a: Any, flux_b: Any) -> Any:
    """The colour ``m_a - m_b`` from two fluxes in nJy, e.g.
    ``colour(alerts.diaObject.g_psfFluxMean, alerts.diaObject.r_psfFluxMean)`` is g - r."""
    return mag_from_flux(flux_a) - mag_from_flux(flux_b)


@_numbers_too()
def flux_ratio(flux_a: Any, flux_b: Any) -> Any:
    """``flux_a / flux_b``, null where ``flux_b`` is zero or either is null."""
    if isinstance(flux_a, Column) or isinstance(flux_b, Column):
        n = _length(flux_a, flux_b)
        av, am = _values(flux_a, n)
        bv, bm = _values(flux_b, n)
        bad = bv == 0
        for m in (am, bm):
            if m is not None:
                bad = bad | m
        with np.errstate(all="ignore"):
            out = av.astype(np.float64) / np.where(bad, 1.0, bv)
        return Column(out, bad)
    return flux_a / flux_b


# --- time -----------------------------------------------------------------------------------


def days_since_first_detection(alerts: AlertsView | AlertRecord) -> Any:
    """Days between the current source and the earliest detection of the object (previous
    sources included): 0 for a first detection. Uses ``midpointMjdTai`` of the history, because
    ``diaObject.firstDiaSourceMjdTai`` is often null in real alerts.

    Takes the alerts view (a column) or, in the per-alert form, one alert (a number; None when
    the current source has no time)."""
    if type(alerts) is AlertRecord and alerts.get("diaSource") is not None:
        now = alerts["diaSource"]["midpointMjdTai"]
        prv = alerts.get("prvDiaSources", ())
        times = [t for t in (p["midpointMjdTai"] for p in prv) if t is not None and t == t]
        if now is None:
            return None
        if now != now:  # a NaN time: as in the column form, no age unless others exist
            return math.nan if times else None
        return now - min([*times, now])
    if not isinstance(alerts, AlertsView):
        raise TypeError(
            "days_since_first_detection takes the alerts view (or one alert): "
            "days_since_first_detection(alerts)"
        )
    t = alerts.history("midpointMjdTai")
    now = alerts._store.get("diaSource.midpointMjdTai")
    assert isinstance(now, Column)
    return now - t.min()


@_numbers_too(4)
def rate_between(
    value_now: Any, time_now: Any, value_then: Any, time_then: Any, *, equal_times: str = "null"
) -> Any:
    """``(value_now - value_then) / (time_now - time_then)`` per alert; null where anything is
    null. With magnitudes and MJDs this is mag/day (negative: brightening).

    Two detections at the same time have no rate: null by default (``equal_times="null"``), so
    a cut such as ``rate < -0.5`` never passes on a duplicate. ``equal_times="inf"`` gives
    ``+inf``/``-inf`` by the sign of the change instead (null when nothing changed), as some
    published filters compute it.
    """
    if equal_times not in ("null", "inf"):
        raise ValueError('equal_times is "null" or "inf"')
    num = value_now - value_then
    den = time_now - time_then
    if not isinstance(num, Column) or not isinstance(den, Column):
        raise TypeError("rate_between works on columns (or, per alert, on numbers)")
    nv = num._v.astype(np.float64, copy=False)
    dv = den._v.astype(np.float64, copy=False)
    same = dv == 0
    null = same if equal_times == "null" else same & (nv == 0)
    for m in (num._m, den._m):
        if m is not None:
            null = null | m
    with np.errstate(all="ignore"):
        out = nv / np.where(same, 1.0, dv)
        if equal_times == "inf":
            out = np.where(same, np.sign(nv) * np.inf, out)
    return Column(np.where(null, 0.0, out), null)


# --- sky geometry ------------------------------------------------------------------------------

ARCSEC = 1.0 / 3600.0
ARCMIN = 1.0 / 60.0

# ICRS → Galactic rotation (Hipparcos, ESA 1997 vol. 1 §1.5.3): rows are the Galactic axes.
_ICRS_TO_GAL = np.array(
    [
        [-0.0548755604162154, -0.8734370902348850, -0.4838350155487132],
        [+0.4941094278755837, -0.4448296299600112, +0.7469822444972189],
        [-0.8676661490190047, -0.1980763734312015, +0.4559837761750669],
    ]
)
_OBLIQUITY_J2000 = math.radians(23.4392911)  # mean obliquity of the ecliptic at J2000 (IAU 1980)


def _angles(*xs: Any) -> tuple[list[np.ndarray], np.ndarray | None, int]:
    """Float64 radians of columns/numbers broadcast to the alert count, and the joint null mask."""
    n = _length(*xs)
    out, mask = [], None
    for x in xs:
        if isinstance(x, Column):
            if len(x) != n:
                raise ValueError(
                    f"columns of different lengths ({n} and {len(x)}) cannot be combined"
                )
            if x._m is not None:
                mask = x._m if mask is None else mask | x._m
            out.append(_per_visit("radians", (x,), functools.partial(_radians_of, x)))
        elif isinstance(x, bool | int | float):
            out.append(np.radians(np.float64(x)))
        else:
            raise TypeError(
                f"sky helpers take columns or numbers in degrees, not {type(x).__name__}"
            )
    return out, mask, n


def _radians_of(x: Column) -> np.ndarray:
    return _readonly(np.radians(x._v.astype(np.float64, copy=False)))


def _haversine(ra1: np.ndarray, dec1: np.ndarray, ra2: np.ndarray, dec2: np.ndarray) -> np.ndarray:
    """Great-circle distance in radians; haversine form, accurate at arcsecond separations."""
    s = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return 2 * np.arcsin(np.sqrt(np.clip(s, 0.0, 1.0)))


@_numbers_too(4)
def separation(ra1: Any, dec1: Any, ra2: Any, dec2: Any) -> Column:
    """Angular separation in degrees between (ra1, dec1) and (ra2, dec2), all in degrees."""
    (a1, d1, a2, d2), mask, n = _angles(ra1, dec1, ra2, dec2)
    return Column(np.broadcast_to(np.degrees(_haversine(a1, d1, a2, d2)), (n,)).copy(), mask)


@_numbers_too(5)
def cone(ra: Any, dec: Any, ra0: float, dec0: float, radius: float) -> Column:
    """True where (ra, dec) is within ``radius`` degrees of (ra0, dec0)."""
    sep = separation(ra, dec, ra0, dec0)
    return sep <= radius


class Targets:
    """A watchlist prepared for matching: sorted by declination (trusted side; opaque to filters)."""

    __slots__ = ("_ra", "_dec", "_order", "_sdec")
    _public: frozenset[str] = frozenset()

    def __init__(self, targets: Any):
        arr = _target_array(targets)
        self._ra = np.radians(arr[:, 0])
        self._dec = np.radians(arr[:, 1])
        self._order = np.argsort(self._dec, kind="stable")
        self._sdec = self._dec[self._order]

    def __len__(self) -> int:
        return len(self._ra)

    def __repr__(self) -> str:
        return f"<watchlist of {len(self)} targets>"

    def match(self, ra: np.ndarray, dec: np.ndarray, radius: float) -> np.ndarray:
        """Index (into the original list) of the nearest target within ``radius`` radians of
        each position, -1 where none.

        Targets are sorted by declination; each position only meets the targets in its
        declination band [dec - r, dec + r], found with two binary searches. The candidate
        pairs are expanded with repeat/cumsum, measured at once, and the nearest per position
        kept with one lexsort: no loop over alerts, no tree, O((n + m) log m + pairs).
        """
        n = len(ra)
        best = np.full(n, -1, dtype=np.int64)
        if n == 0 or len(self) == 0:
            return best
        lo = np.searchsorted(self._sdec, dec - radius, side="left")
        hi = np.searchsorted(self._sdec, dec + radius, side="right")
        counts = (hi - lo).astype(np.int64)
        # Bound memory when bands are crowded (huge radius, targets along one declination).
        chunk_pairs = 2_000_000
        starts = np.concatenate(([0], np.cumsum(counts)))
        a0 = 0
        while a0 < n:
            a1 = int(np.searchsorted(starts, starts[a0] + chunk_pairs, side="right")) - 1
            a1 = min(max(a1, a0 + 1), n)
            self._match_chunk(ra, dec, radius, lo, counts, a0, a1, best)
            a0 = a1
        return best

    def _match_chunk(
        self,
        ra: np.ndarray,
        dec: np.ndarray,
        radius: float,
        lo: np.ndarray,
        counts: np.ndarray,
        a0: int,
        a1: int,
        best: np.ndarray,
    ) -> None:
        c = counts[a0:a1]
        total = int(c.sum())
        if total == 0:
            return
        alert = np.repeat(np.arange(a0, a1), c)
        first = np.repeat(np.cumsum(c) - c, c)
        pos = lo[alert] + (np.arange(total) - first)
        target = self._order[pos]
        sep = _haversine(ra[alert], dec[alert], self._ra[target], self._dec[target])
        hit = sep <= radius
        if not hit.any():
            return
        alert, target, sep = alert[hit], target[hit], sep[hit]
        order = np.lexsort((sep, alert))
        alert, target = alert[order], target[order]
        keep = np.ones(len(alert), bool)
        keep[1:] = alert[1:] != alert[:-1]
        best[alert[keep]] = target[keep]


def _target_array(targets: Any) -> np.ndarray:
    if isinstance(targets, Targets):
        return np.degrees(np.stack([targets._ra, targets._dec], axis=1))
    if not isinstance(targets, list | tuple):
        raise TypeError("a watchlist is a list of (ra, dec) pairs in degrees")
    try:
        arr = np.asarray(targets, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError("a watchlist is a list of (ra, dec) pairs of numbers in degrees") from None
    if arr.size == 0:
        return np.zeros((0, 2))
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError("a watchlist is a list of (ra, dec) pairs in degrees")
    if not np.isfinite(arr).all() or (np.abs(arr[:, 1]) > 90).any():
        raise ValueError("watchlist positions must be finite, with -90 <= dec <= 90")
    return arr


def _match(ra: Any, dec: Any, targets: Any, radius: float) -> tuple[np.ndarray, np.ndarray | None]:
    if not isinstance(radius, int | float) or isinstance(radius, bool) or radius < 0:
        raise TypeError("radius is a non-negative number of degrees, e.g. 2 * arcsec")
    t = targets if isinstance(targets, Targets) else Targets(targets)
    (a, d), mask, n = _angles(ra, dec)
    a, d = np.broadcast_to(a, (n,)), np.broadcast_to(d, (n,))
    best = t.match(a, d, math.radians(radius))
    if mask is not None:
        best = np.where(mask, -1, best)
    return best, mask


@_numbers_too(2)
def watchlist(ra: Any, dec: Any, targets: Any, radius: float) -> Column:
    """True where (ra, dec) lies within ``radius`` degrees of any target of the list
    ``[(ra, dec), ...]`` (degrees). Thousands of targets cost about as much as one cone."""
    best, _ = _match(ra, dec, targets, radius)
    return Column(best >= 0)


@_numbers_too(2)
def nearest(ra: Any, dec: Any, targets: Any, radius: float) -> Column:
    """Index in the list of the nearest target within ``radius`` degrees; null where none."""
    best, _ = _match(ra, dec, targets, radius)
    return Column(np.where(best < 0, 0, best), best < 0)


def _unit(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def _galactic(ra: Any, dec: Any) -> tuple[Column, Column]:
    """Galactic (l, b) columns; once per visit for the store's own ra, dec."""
    return _per_visit("galactic", (ra, dec), lambda: _galactic_impl(ra, dec))


def _galactic_impl(ra: Any, dec: Any) -> tuple[Column, Column]:
    (a, d), mask, n = _angles(ra, dec)
    g = _ICRS_TO_GAL @ _unit(np.broadcast_to(a, (n,)), np.broadcast_to(d, (n,)))
    lon = np.degrees(np.arctan2(g[1], g[0])) % 360.0
    lat = np.degrees(np.arcsin(np.clip(g[2], -1.0, 1.0)))
    return Column(lon, mask), Column(lat, mask)


@_numbers_too(2)
def galactic_latitude(ra: Any, dec: Any) -> Column:
    """Galactic latitude b in degrees of ICRS (ra, dec) in degrees."""
    return _galactic(ra, dec)[1]


@_numbers_too(2)
def galactic_longitude(ra: Any, dec: Any) -> Column:
    """Galactic longitude l in degrees [0, 360) of ICRS (ra, dec) in degrees."""
    return _galactic(ra, dec)[0]


def _ecliptic(ra: Any, dec: Any) -> tuple[Column, Column]:
    """Ecliptic (λ, β) columns; once per visit for the store's own ra, dec."""
    return _per_visit("ecliptic", (ra, dec), lambda: _ecliptic_impl(ra, dec))


def _ecliptic_impl(ra: Any, dec: Any) -> tuple[Column, Column]:
    (a, d), mask, n = _angles(ra, dec)
    a, d = np.broadcast_to(a, (n,)), np.broadcast_to(d, (n,))
    ce, se = math.cos(_OBLIQUITY_J2000), math.sin(_OBLIQUITY_J2000)
    lat = np.arcsin(np.clip(np.sin(d) * ce - np.cos(d) * se * np.sin(a), -1.0, 1.0))
    lon = np.arctan2(np.sin(a) * ce + np.tan(d) * se, np.cos(a))
    return Column(np.degrees(lon) % 360.0, mask), Column(np.degrees(lat), mask)


# Two-column sky transforms of the store's own columns, by their per-visit key: computed once
# per visit on the trusted side and handed to workers (sandbox.digest).
SKY_TRANSFORMS: dict[str, Callable[[Any, Any], tuple[Column, Column]]] = {
    "galactic": _galactic,
    "ecliptic": _ecliptic,
}


@_numbers_too(2)
def ecliptic_latitude(ra: Any, dec: Any) -> Column:
    """Ecliptic latitude β in degrees (mean ecliptic and equinox of J2000) of (ra, dec)."""
    return _ecliptic(ra, dec)[1]


@_numbers_too(2)
def ecliptic_longitude(ra: Any, dec: Any) -> Column:
    """Ecliptic longitude λ in degrees [0, 360) (mean ecliptic and equinox of J2000)."""
    return _ecliptic(ra, dec)[0]


sky = Namespace(
    "sky",
    {
        "separation": separation,
        "cone": cone,
        "watchlist": watchlist,
        "nearest": nearest,
        "galactic_latitude": galactic_latitude,
        "galactic_longitude": galactic_longitude,
        "ecliptic_latitude": ecliptic_latitude,
        "ecliptic_longitude": ecliptic_longitude,
    },
)


# --- what the compiler needs to know ---------------------------------------------------------


# One field of each record of the alert packet that is never null inside the record.
_RECORD_IDS = frozenset({"diaObjectId", "ssObjectId", "diaSourceId", "diaForcedSourceId", "id"})


def implied_names(names: Iterable[str]) -> frozenset[str]:
    """Column-name tokens a filter reads through helpers without spelling them out.

    The compiler decodes only columns whose every path part the file mentions
    (:meth:`sandbox.compile.CompiledFilter.reads`); lightcurve time order needs
    ``midpointMjdTai``, ``in_band`` needs ``band``, ``history`` reads diaSource and
    prvDiaSources, and ``band_field("psfFluxMean")`` reads ``diaObject.<b>_psfFluxMean``.
    ``isnull(alerts.diaObject)`` needs the record decoded, so a null test reads each record's
    id (one always-present field per record of the alert packet).
    """
    names = frozenset(names)
    extra = {"midpointMjdTai", "band"}
    if names & {"isnull", "notnull"}:
        extra |= _RECORD_IDS
    if any(n.startswith("cutout_") for n in names):  # their default cutout
        extra |= {"cutoutDifference"}
    if names & {"history", "days_since_first_detection"}:
        extra |= {"diaSource", "prvDiaSources"}
    if "band_field" in names:
        extra |= {"diaObject", "diaSource"} | {f"{b}_{s}" for s in names for b in BANDS}
    return frozenset(extra)


def exported() -> dict[str, Any]:
    """The names a filter sees, besides the builtins."""
    return {
        "isnull": isnull,
        "notnull": notnull,
        "fill": fill,
        "is_set": is_set,
        "any_set": any_set,
        "all_set": all_set,
        "none_set": none_set,
        "if_else": if_else,
        "sqrt": sqrt,
        "log10": log10,
        "log": log,
        "exp": exp,
        "minimum": minimum,
        "maximum": maximum,
        "sin": sin,
        "cos": cos,
        "tan": tan,
        "asin": asin,
        "acos": acos,
        "atan2": atan2,
        "hypot": hypot,
        "radians": radians,
        "degrees": degrees,
        "mag_from_flux": mag_from_flux,
        "flux_from_mag": flux_from_mag,
        "mag_err": mag_err,
        "colour": colour,
        "flux_ratio": flux_ratio,
        "days_since_first_detection": days_since_first_detection,
        "rate_between": rate_between,
        "thin": thin,
        "cutout_centroid": cutout_centroid,
        "cutout_second_moments": cutout_second_moments,
        "cutout_elongation": cutout_elongation,
        "cutout_median": cutout_median,
        "sky": sky,
        "arcsec": ARCSEC,
        "arcmin": ARCMIN,
        "BANDS": BANDS,
        "pi": math.pi,
        "nan": math.nan,
        "inf": math.inf,
    }
