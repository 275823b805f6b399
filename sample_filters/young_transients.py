"""Young extragalactic transients: new sources, first detected less than 5 days ago.

Selects real (reliability >= 0.6), brightening (positive difference flux) detections of
objects whose whole history (previous diaSources plus this one) spans under 5 days, away from
the Galactic plane (|b| > 15 deg, where most new point sources are stellar) and not known
solar-system objects.

"New" must mean a new source, not the first 5-sigma excursion of a known star: an ordinary
variable star is in the template at its quiescent brightness, so its difference flux is a
modest fraction of the template flux at its position (a 0.1-0.5 mag wobble is 10-60%). A young
transient sits on nothing or on a galaxy and soon outshines the light under it, so we require
the new light to exceed the template flux at the position (psfFlux > templateFlux: the
position has at least doubled in brightness, more than 0.75 mag). The price: an infant
supernova still fainter than the bright galaxy nucleus under it is not selected; finding those
needs the template cutout (a galaxy is extended, a star is not).

Young transients are the targets of rapid spectroscopy: infant supernovae, kilonovae and fast
blue optical transients (e.g. the Fink "early SN Ia" and ALeRCE "fast transient" streams;
Bellm 2019, ZTF alert stream).
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
        & (ds.psfFlux > ds.templateFlux)
        & (days_since_first_detection(alerts) < MAX_AGE_DAYS)
        & (abs(b) > MIN_GAL_LAT)
        & not_sso
        & ~ds.isDipole
    )
