"""M-dwarf flares: a red, point-like star, quiet for a year, suddenly much brighter.

The star is red. Its colours come from the year of forced photometry on the science images
(``prvDiaForcedSources.scienceFlux``, the median per band, which earlier flares do not move):
g - i > 1.5, or r - i > 0.7, or r - z > 1.0 (a band never observed gives a null colour, which
fails its test, so the three combine with |; ordinary stars are far bluer). The diaObject's
per-band means are not used: they average only the detections, i.e. the flares themselves,
and are null in the bands where the star never flared.

It is point-like (extendedness < 0.2) and was quiet: at most 5 earlier detections, and
today's difference flux stands out from the year of forced photometry in the alert's band
by more than 5 times that lightcurve's scatter (a variable star's alert is a 1.5-3 sigma
excursion of its usual wandering; a flare is a sudden jump from a flat lightcurve). The flare
is hot, so the jump is large in u and g and only a few percent of the star in z and y,
which is why no cut is made on the fractional brightening. Stellar flares are the most
common fast Galactic transients in Rubin (Hilton et al. 2010; LSST Science Book §6.10).
"""

MIN_JUMP_SIGMA = 5.0
MAX_PREVIOUS = 5


def filter(alerts):
    ds = alerts.diaSource
    science = alerts.prvDiaForcedSources.scienceFlux
    quiet = {b: science.in_band(b).median() for b in ("g", "r", "i", "z")}
    # A null colour (band never observed) compares False, so the three tests combine with |.
    red = (
        (colour(quiet["g"], quiet["i"]) > 1.5)
        | (colour(quiet["r"], quiet["i"]) > 0.7)
        | (colour(quiet["r"], quiet["z"]) > 1.0)
    )
    forced = alerts.prvDiaForcedSources.psfFlux.in_band(ds.band)
    jump = (ds.psfFlux - forced.median()) / forced.std()
    return (
        (ds.reliability >= 0.6)
        & (ds.psfFlux > 0)
        & (fill(ds.extendedness, 1) < 0.2)
        & red
        & (forced.count() >= 5)
        & (jump > MIN_JUMP_SIGMA)
        & (alerts.prvDiaSources.psfFlux.count() <= MAX_PREVIOUS)
    )
