"""Fast risers: brightening faster than 0.3 mag/day since the previous detection.

Compares the current magnitude with the latest previous detection (any band; hot transients
change colour by a few tenths of a magnitude at most) and keeps alerts rising faster than
0.3 mag/day, from objects first seen within the last 10 days (a star that has been varying
for a year is not a new fast transient). Kilonovae rise ~1 mag/day, fast blue optical
transients ~0.5-1 mag/day, normal supernovae ~0.1 mag/day (Ho et al. 2023; Andreoni et al. 2021).
"""

MIN_RISE = 0.3  # mag/day
MAX_AGE_DAYS = 10.0


def filter(alerts):
    ds = alerts.diaSource
    prv = alerts.prvDiaSources.psfFlux.where(alerts.prvDiaSources.psfFlux > 0)
    mag_now = mag_from_flux(ds.psfFlux)
    mag_then = mag_from_flux(prv.last())
    rate = rate_between(mag_now, ds.midpointMjdTai, mag_then, prv.last_time())
    return (
        (ds.reliability >= 0.6)
        & (ds.psfFlux > 0)
        & (rate < -MIN_RISE)
        & (days_since_first_detection(alerts) < MAX_AGE_DAYS)
    )
