"""Cadence thinning of lightcurves: ``thin(lc, min_gap)``, a helper filters may call.

"Keep a point only if it is at least ``min_gap`` days after the last kept one" is how some
brokers count detections (AMPEL's detection-count cut: two detections an hour apart are one
epoch). The rule is sequential (whether a point is kept depends on the last kept point, which
depends on the points before), so it is not a plain reduction. It runs as a segmented scan:
one vectorized step per point *position* in the longest lightcurve of the visit, all alerts at
once (step ``s`` decides the ``s``-th point, in time order, of every alert that has one). The
cost is the total number of points plus a few numpy calls per step, bounded by the longest
list, never by the number of alerts; alerts are ordered by list length so each step touches
only those still going.

The per-alert form runs the same scan on its one lightcurve, so both forms keep the same points.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sandbox.view.columns import Column, ListColumn
from sandbox.view.record import AlertRecord

__all__ = ["thin", "thin_mask"]


def thin_mask(
    times: np.ndarray, offsets: np.ndarray, min_gap: float, *, time_sorted: bool = False
) -> np.ndarray:
    """Which points to keep: per list (``offsets`` delimit them in the flat ``times``), in time
    order, the earliest point and then each point at least ``min_gap`` after the last kept one.
    Points with a NaN time take no part (never kept). Equal times keep the first in list order.
    ``time_sorted`` says each list is already in non-decreasing time order (no NaN)."""
    total = int(offsets[-1]) if len(offsets) else 0
    kept = np.zeros(total, bool)
    if total == 0:
        return kept
    lengths = np.diff(offsets)
    ids = np.repeat(np.arange(len(lengths)), lengths)
    ok = ~np.isnan(times)
    if time_sorted:
        cand = np.flatnonzero(ok)
    else:
        order = np.lexsort((times, ids))  # stable: equal times stay in list order
        cand = order[ok[order]]
    if not len(cand):
        return kept
    ct = times[cand]
    counts = np.bincount(ids[cand], minlength=len(lengths))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    by_len = np.argsort(-counts, kind="stable")  # the alerts still going form a prefix
    desc = counts[by_len]
    first = starts[by_len]
    # going[s]: how many alerts have more than s points (a prefix of by_len).
    going = np.searchsorted(-desc, -np.arange(int(desc[0])), side="left").tolist()
    take = np.zeros(len(cand), bool)
    take[first[: going[0]]] = True  # the earliest point of every list
    last = ct[first[: going[0]]]
    for s, k in enumerate(going[1:], start=1):
        idx = first[:k] + s
        t = ct[idx]
        keep = t >= last[:k] + min_gap
        take[idx] = keep
        np.copyto(last[:k], t, where=keep)
    kept[cand[take]] = True
    return kept


def _gap(min_gap: Any) -> float:
    if (
        isinstance(min_gap, bool)
        or not isinstance(min_gap, int | float)
        or not math.isfinite(min_gap)
        or min_gap < 0
    ):
        raise ValueError("thin(lightcurve, min_gap) takes a gap in days: a finite number >= 0")
    return float(min_gap)


def thin(lc: Any, min_gap: float) -> Any:
    """The lightcurve keeping, per alert and in time order, its earliest point and then each
    point at least ``min_gap`` days after the last kept one.

    Only times decide: a point whose time is null takes no part; a kept point whose value is
    null stays null (reductions skip it). A null list stays null, an empty one empty. On a
    lightcurve column (``thin(alerts.history("psfFlux"), 0.5).count()``) the result is a
    lightcurve of the same shape; in the per-alert form, on a tuple of points
    (``alert["prvDiaSources"]``) or of times, it is the tuple of the kept ones, in their order.
    """
    gap = _gap(min_gap)
    if isinstance(lc, ListColumn):
        return lc._memoized(("thin", gap), lambda: _thin_column(lc, gap))
    if lc is None:
        return None
    if isinstance(lc, tuple | list):
        times = np.array([_time_of(p) for p in lc], dtype=np.float64)
        keep = thin_mask(times, np.array([0, len(times)]), gap)
        return tuple(p for p, k in zip(lc, keep.tolist(), strict=True) if k)
    raise TypeError(
        "thin() takes a lightcurve (alerts.prvDiaSources.psfFlux, alerts.history(...)) "
        "or, per alert, a tuple of points or times"
    )


def _time_of(point: Any) -> float:
    if type(point) is AlertRecord:
        point = point.get("midpointMjdTai")
    if point is None:
        return math.nan
    if isinstance(point, bool) or not isinstance(point, int | float):
        raise TypeError("thin() takes lightcurve points (records with midpointMjdTai) or times")
    return float(point)


def _thin_column(lc: ListColumn, gap: float) -> ListColumn:
    t = lc._time_values()
    if t is None:
        raise ValueError(
            "thin() needs the times of this lightcurve (a prvDiaSources, "
            "prvDiaForcedSources or history field)"
        )
    t = t.astype(np.float64, copy=False)
    assert lc._info is not None
    keep = thin_mask(t, lc._off, gap, time_sorted=lc._info.time_sorted())
    m = lc._items._m
    return lc._with(Column(lc._items._v, ~keep if m is None else ~keep | m))
