"""Supernova candidates: young, hosted, brightening-or-fading transients off the Galactic plane.

Keeps real, positive detections that sit on a galaxy (extendedness >= 0.3 means the source
looks extended: host light in the template) with at least 2 previous detections, a history
from 5 to 120 days long (a supernova lasts months; an AGN or a variable star has been seen
for years), away from the Galactic plane (|b| > 10 deg) and not a known asteroid. The classic
"SN-like" selection of ALeRCE/Fink/ANTARES, and the input of photometric classifiers
(e.g. SuperNNova, Möller & de Boissière 2020).
"""

MIN_AGE_DAYS = 5.0
MAX_AGE_DAYS = 120.0


def filter(alerts):
    ds = alerts.diaSource
    age = days_since_first_detection(alerts)
    n_prev = alerts.prvDiaSources.psfFlux.where(alerts.prvDiaSources.psfFlux > 0).count()
    return (
        (ds.reliability >= 0.6)
        & (ds.psfFlux > 0)
        & (fill(ds.extendedness, 0) >= 0.3)
        & (n_prev >= 2)
        & age.between(MIN_AGE_DAYS, MAX_AGE_DAYS)
        & (abs(sky.galactic_latitude(ds.ra, ds.dec)) > 10)
        & isnull(alerts.ssSource.ssObjectId)
        & ~ds.isDipole
    )
