"""Microlensing candidates: a point source brightening slowly and smoothly after a quiet year.

A lens passing in front of a star magnifies it symmetrically and achromatically over weeks
(Paczyński 1986). Keeps real, positive, point-like detections (extendedness < 0.2) of objects
with at least 3 detections, never detected below the template (no negative difference flux:
not a variable star), rising or falling slowly (|slope| of the magnitude history under
0.2 mag/day: not a flare or fast transient), magnified by more than 0.6 mag over the forced
photometry of the year in the alert's band (ordinary variables wander by tenths of a magnitude)
and first detected between 5 and 150 days ago (a quiet baseline before the event). Cf. the Fink microlensing module and Street et al. 2018.
"""

MAX_SLOPE = 0.2  # mag/day
MIN_AGE_DAYS = 5.0
MAX_AGE_DAYS = 150.0
MIN_MAGNIFICATION_MAG = 0.6


def filter(alerts):
    ds = alerts.diaSource
    flux = alerts.history("psfFlux")
    slope = mag_from_flux(flux.where(flux > 0)).slope()
    forced = alerts.prvDiaForcedSources.scienceFlux.in_band(ds.band)
    magnification = mag_from_flux(forced.min()) - mag_from_flux(forced.max())
    return (
        (ds.reliability >= 0.6)
        & (ds.psfFlux > 0)
        & (fill(ds.extendedness, 1) < 0.2)
        & (flux.count() >= 3)
        & ~(flux < 0).any()
        & (abs(slope) < MAX_SLOPE)
        & (magnification > MIN_MAGNIFICATION_MAG)
        & days_since_first_detection(alerts).between(MIN_AGE_DAYS, MAX_AGE_DAYS)
    )
