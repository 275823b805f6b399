"""Young extragalactic transients: new objects, first detected less than 5 days ago.

Selects real (reliability >= 0.6), brightening (positive difference flux) detections of
objects whose whole history (previous diaSources plus this one) spans under 5 days, away from
the Galactic plane (|b| > 15 deg, where most new point sources are stellar) and not known
solar-system objects. Young transients are the targets of rapid spectroscopy: infant
supernovae, kilonovae and fast blue optical transients (e.g. the Fink "early SN Ia" and
ALeRCE "fast transient" streams; Bellm 2019, ZTF alert stream).
"""

MAX_AGE_DAYS = 5.0
MIN_GAL_LAT = 15.0


def filter(alerts):
    ds = alerts.diaSource
    b = sky.galactic_latitude(ds.ra, ds.dec)
    not_sso = isnull(ds.ssObjectId) | (fill(ds.ssObjectId, 0) == 0)
    return (
        (ds.reliability >= 0.6)
        & (ds.psfFlux > 0)
        & (days_since_first_detection(alerts) < MAX_AGE_DAYS)
        & (abs(b) > MIN_GAL_LAT)
        & not_sso
        & ~ds.isDipole
    )
