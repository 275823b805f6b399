"""Facts about alert fields that several stages share: which diaSource fields every delivered
match carries, and the photometric system fluxes are in.

Plain constants with no imports, so the sandbox's helper library can use the same numbers.
"""

from __future__ import annotations

__all__ = ["AB_ZERO_POINT_NJY", "BANDS", "HEADLINE_FIELDS"]

# The diaSource fields every match entry carries besides its ids (decoded whatever filters read).
HEADLINE_FIELDS = (
    "diaObjectId",
    "ssObjectId",
    "ra",
    "dec",
    "band",
    "midpointMjdTai",
    "snr",
    "reliability",
)

# Fluxes are in nJy: m_AB = -2.5 log10(f / nJy) + 31.4.
AB_ZERO_POINT_NJY = 31.4

# The six LSST bands, bluest first.
BANDS = ("u", "g", "r", "i", "z", "y")
