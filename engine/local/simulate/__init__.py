"""Sample nights: realistic Rubin-like visits with known populations (see :mod:`.builder` for
the populations and how each is drawn, :mod:`.populations` for their lightcurves).
"""

from engine.local.simulate.builder import (
    POPULATIONS,
    NightSummary,
    simulate_night,
    truth,
    truth_path,
)

__all__ = ["POPULATIONS", "NightSummary", "simulate_night", "truth", "truth_path"]
