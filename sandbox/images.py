"""Pixel statistics of cutouts: NaN treatment and intensity moments (trusted side).

:class:`sandbox.alert.Image` calls these on its private array and hands filters plain floats
or tuples of floats only.

NaN pixels (masked or off-chip in Rubin cutouts) are treated as the filter asks:

- ``nan="ignore"`` (the default): left out, as if the pixel were not there;
- ``nan="zero"``: counted as 0.0;
- ``nan="propagate"``: any NaN pixel makes the result NaN (strict: "I do not trust this cutout").

Moments are those of the light above ``threshold`` (default 0: the positive pixels of a
difference image); with rows ``r`` and columns ``c`` counted from 0 and weights
``w = pixel - threshold`` where the pixel is above the threshold (0 elsewhere):

- centroid ``(r0, c0) = (Σ w r, Σ w c) / Σ w``;
- second moments ``Mrr = Σ w (r - r0)² / Σ w``, ``Mcc``, ``Mrc = Σ w (r - r0)(c - c0) / Σ w``;
- elongation ``sqrt(λ1 / λ2)`` with ``λ1 ≥ λ2`` the eigenvalues of ``[[Mrr, Mrc], [Mrc, Mcc]]``:
  the axis ratio of the light's ellipse, 1 for a round source, large for a trail; ``inf`` when
  the light lies on one line (λ2 = 0).

No weight at all (a blank or all-NaN cutout) gives NaN everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = ["NAN_MODES", "centroid", "elongation", "reduce", "second_moments"]

NAN_MODES = ("ignore", "zero", "propagate")


def _mode(nan: object) -> str:
    if nan not in NAN_MODES:
        raise ValueError('nan= is "ignore" (skip NaN pixels), "zero" (count them as 0) or "propagate" (NaN result)')
    return str(nan)


def reduce(a: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], nanfn: Callable[[np.ndarray], np.ndarray],
           nan: object = "ignore") -> float:
    """One pixel statistic under a NaN treatment: ``fn`` on all pixels, ``nanfn`` skipping NaN."""
    mode = _mode(nan)
    with np.errstate(all="ignore"):
        if mode == "zero":
            return float(fn(np.nan_to_num(a, nan=0.0, posinf=np.inf, neginf=-np.inf)))
        if mode == "propagate":
            return float(fn(a))
        return float(nanfn(a)) if np.isfinite(a).any() else math.nan


def _weights(a: np.ndarray, threshold: float, nan: object) -> np.ndarray | None:
    """The weights of each pixel, or None when the moments are NaN."""
    mode = _mode(nan)
    if not isinstance(threshold, int | float) or isinstance(threshold, bool) or math.isnan(threshold):
        raise TypeError("threshold is a number (a pixel value)")
    nans = np.isnan(a)
    if mode == "propagate" and nans.any():
        return None
    vals = np.where(nans, 0.0 if mode == "zero" else -np.inf, a)
    with np.errstate(all="ignore"):
        w = np.where(vals > threshold, vals - threshold, 0.0)
    total = float(w.sum())
    if not (total > 0 and math.isfinite(total)):
        return None
    return w


def _moments(a: np.ndarray, threshold: float, nan: object) -> tuple[float, float, float, float, float]:
    w = _weights(a, threshold, nan)
    if w is None:
        return (math.nan,) * 5
    total = w.sum()
    rows = np.arange(a.shape[0], dtype=np.float64)[:, None]
    cols = np.arange(a.shape[1], dtype=np.float64)[None, :]
    r0 = float((w * rows).sum() / total)
    c0 = float((w * cols).sum() / total)
    dr, dc = rows - r0, cols - c0
    mrr = float((w * dr * dr).sum() / total)
    mcc = float((w * dc * dc).sum() / total)
    mrc = float((w * dr * dc).sum() / total)
    return r0, c0, mrr, mcc, mrc


def centroid(a: np.ndarray, threshold: float = 0.0, nan: object = "ignore") -> tuple[float, float]:
    """Light-weighted (row, column) of the pixels above ``threshold``."""
    r0, c0, *_ = _moments(a, threshold, nan)
    return r0, c0


def second_moments(a: np.ndarray, threshold: float = 0.0, nan: object = "ignore") -> tuple[float, float, float]:
    """(Mrr, Mcc, Mrc) about the centroid, in pixels²."""
    _, _, mrr, mcc, mrc = _moments(a, threshold, nan)
    return mrr, mcc, mrc


def elongation(a: np.ndarray, threshold: float = 0.0, nan: object = "ignore") -> float:
    """Axis ratio sqrt(λ1/λ2) of the second-moment ellipse (≥ 1; inf for a line)."""
    _, _, mrr, mcc, mrc = _moments(a, threshold, nan)
    if math.isnan(mrr):
        return math.nan
    half_trace = (mrr + mcc) / 2
    root = math.hypot((mrr - mcc) / 2, mrc)
    big, small = half_trace + root, max(half_trace - root, 0.0)
    if big <= 0:  # all the light in one pixel: a point, round by convention
        return 1.0
    return math.inf if small <= 1e-12 * big else math.sqrt(big / small)
