"""Cutout measures for the whole visit: ``cutout_centroid``, ``cutout_second_moments``,
``cutout_elongation``, ``cutout_median`` (helpers filters may call).

Each gives, alert by alert, exactly what the :class:`sandbox.view.Image` method of the same
name gives (the same stack code of :mod:`sandbox.images`), as columns for ``filter(alerts)``
(null where an alert has no cutout) or as numbers for one alert in ``filter_alert``/``refine``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sandbox import images
from sandbox.view.columns import AlertsView, Column
from sandbox.view.record import AlertRecord

__all__ = ["cutout_centroid", "cutout_elongation", "cutout_median", "cutout_second_moments"]

_CUTOUTS = ("cutoutDifference", "cutoutScience", "cutoutTemplate")


def _cutout_values(alerts: Any, name: str, what: str, half: Any, threshold: Any, nan: Any) -> Any:
    """Moments ("moments": r0, c0, Mrr, Mcc, Mrc, elongation) or the median of a cutout: per
    alert from its Image, or for the whole visit as columns (:func:`sandbox.images.per_cutout`)."""
    if name not in _CUTOUTS:
        raise KeyError(f"no cutout {name!r}; the cutouts are {', '.join(_CUTOUTS)}")
    if half is not None and (not isinstance(half, int) or isinstance(half, bool) or half < 0):
        raise ValueError(
            "half is None (the whole cutout) or a non-negative integer, as in img.box(half)"
        )
    k = 6 if what == "moments" else 1
    if type(alerts) is AlertRecord:
        img = alerts.get(name)
        if img is None:
            return (None,) * k
        a = img._a if half is None else img.box(half)._a
        if what == "median":
            return (images.reduce(a, np.median, np.nanmedian, nan),)
        m = images.stack_moments(a[None], threshold, nan)
        return (*(float(x[0]) for x in m), float(images.stack_elongation(*m[2:])[0]))
    if not isinstance(alerts, AlertsView):
        raise TypeError(
            f"cutout helpers take the alerts view (or one alert) and a cutout name, "
            f"e.g. cutout_elongation(alerts, 'cutoutDifference'), not {type(alerts).__name__}"
        )
    store = alerts._store
    if store.kinds.get(name) != "binary":
        raise KeyError(f"the cutout {name!r} is not in this batch")
    key = f"cutout.{what}.{name}.{half!r}.{threshold!r}.{nan!r}"
    hit = store._aux.get(key)
    if hit is None:
        if what == "median":

            def stat(st: np.ndarray) -> tuple[np.ndarray, ...]:
                return (images.stack_reduce(st, np.median, np.nanmedian, nan),)
        else:

            def stat(st: np.ndarray) -> tuple[np.ndarray, ...]:
                m = images.stack_moments(st, threshold, nan)
                return (*m, images.stack_elongation(*m[2:]))

        images.stack_moments(
            np.zeros((1, 1, 1)), threshold, nan
        )  # refuse bad options even on an empty visit
        values, null = images.per_cutout(store.batch.column(name), stat, k, half)
        hit = store._aux[key] = tuple(Column(v, null) for v in values)
    return hit


def cutout_centroid(
    alerts: Any,
    name: str = "cutoutDifference",
    *,
    half: int | None = None,
    threshold: float = 0.0,
    nan: str = "ignore",
) -> tuple[Any, Any]:
    """(row, column) of the light of each alert's cutout, as ``img.centroid()``: two columns
    (null where the alert has no cutout), or two numbers for one alert. ``half`` looks only
    at the central square, as ``img.box(half)``."""
    return _cutout_values(alerts, name, "moments", half, threshold, nan)[:2]


def cutout_second_moments(
    alerts: Any,
    name: str = "cutoutDifference",
    *,
    half: int | None = None,
    threshold: float = 0.0,
    nan: str = "ignore",
) -> tuple[Any, Any, Any]:
    """(Mrr, Mcc, Mrc) of each alert's cutout, as ``img.second_moments()``."""
    return _cutout_values(alerts, name, "moments", half, threshold, nan)[2:5]


def cutout_elongation(
    alerts: Any,
    name: str = "cutoutDifference",
    *,
    half: int | None = None,
    threshold: float = 0.0,
    nan: str = "ignore",
) -> Any:
    """Axis ratio of the light of each alert's cutout, as ``img.elongation()``: ~1 for a point
    source, large for a trail; NaN where no pixel is above ``threshold``, null without cutout."""
    return _cutout_values(alerts, name, "moments", half, threshold, nan)[5]


def cutout_median(
    alerts: Any, name: str = "cutoutDifference", *, half: int | None = None, nan: str = "ignore"
) -> Any:
    """Median pixel of each alert's cutout, as ``img.median(nan=...)``."""
    return _cutout_values(alerts, name, "median", half, 0.0, nan)[0]
