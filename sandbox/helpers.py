"""The helper library filters may call, documented in docs/filters.md.

Every helper is vectorized: it takes and returns columns (or numbers) and never loops over
alerts in Python. Nothing here reaches files, the network, the clock or randomness: a filter is
a deterministic function of the alerts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from sandbox.columns import Column, ListColumn

__all__ = ["Namespace", "exported"]

AB_ZERO_POINT_NJY = 31.4  # m_AB = -2.5 log10(f / nJy) + 31.4


class Namespace:
    """A group of helpers reached by attribute (``sky.cone``); only listed names resolve."""

    def __init__(self, name: str, members: dict[str, Any]):
        self._name = name
        self._members = dict(members)

    def lookup(self, attr: str) -> Any:
        try:
            return self._members[attr]
        except KeyError:
            raise AttributeError(f"{self._name} has no helper {attr!r}; see docs/filters.md") from None

    def __repr__(self) -> str:
        return f"<helpers {self._name}: {', '.join(sorted(self._members))}>"


def isnull(x: Column | ListColumn) -> Column:
    """True where the value (or the whole lightcurve) is null."""
    return x.isnull()


def notnull(x: Column | ListColumn) -> Column:
    """True where the value (or the lightcurve) is present."""
    return x.notnull()


def fill(x: Column, value: Any) -> Column:
    """``x`` with nulls replaced by ``value``: ``fill(alerts.diaSource.extendedness, 0)``."""
    return x.fill(value)


def _unary(fn: Callable[[np.ndarray], np.ndarray], doc: str) -> Callable[[Any], Any]:
    def helper(x: Any) -> Any:
        if isinstance(x, Column):
            with np.errstate(all="ignore"):
                return Column(fn(x._v.astype(np.float64)), x._m)
        return float(fn(np.float64(x)))

    helper.__doc__ = doc
    return helper


sqrt = _unary(np.sqrt, "Square root, element-wise.")
log10 = _unary(np.log10, "Base-10 logarithm, element-wise (null-safe; log of <= 0 is NaN or -inf).")
exp = _unary(np.exp, "Exponential, element-wise.")


def mag_from_flux(flux: Any) -> Any:
    """AB magnitude from a flux in nJy: ``-2.5 log10(flux) + 31.4``; non-positive flux → NaN."""
    if isinstance(flux, Column):
        f = flux._v.astype(np.float64)
        with np.errstate(all="ignore"):
            mag = np.where(f > 0, -2.5 * np.log10(np.where(f > 0, f, 1.0)) + AB_ZERO_POINT_NJY, np.nan)
        return Column(mag, flux._m)
    return -2.5 * math.log10(flux) + AB_ZERO_POINT_NJY if flux > 0 else math.nan


def flux_from_mag(mag: Any) -> Any:
    """Flux in nJy from an AB magnitude."""
    if isinstance(mag, Column):
        return Column(10 ** ((AB_ZERO_POINT_NJY - mag._v.astype(np.float64)) / 2.5), mag._m)
    return 10 ** ((AB_ZERO_POINT_NJY - mag) / 2.5)


def exported() -> dict[str, Any]:
    """The names a filter sees, besides the builtins."""
    return {
        "isnull": isnull,
        "notnull": notnull,
        "fill": fill,
        "sqrt": sqrt,
        "log10": log10,
        "exp": exp,
        "mag_from_flux": mag_from_flux,
        "flux_from_mag": flux_from_mag,
        "pi": math.pi,
        "nan": math.nan,
        "inf": math.inf,
    }
