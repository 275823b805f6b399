"""Large-amplitude periodic variables (RR Lyrae-like pulsators).

A pulsating star varies around its template level, so its history has detections both
brighter (positive difference flux) and fainter (negative) than the template. Keeps
point-like (extendedness < 0.2) objects with at least 20 previous detections of both signs
whose peak-to-peak amplitude in the alert's band, from the forced photometry of the last
year, exceeds 0.35 mag (ordinary variable stars wander by 0.03-0.15 mag rms). RR Lyrae trace the
Galactic halo (Oluseyi et al. 2012; Rubin "Stars, Milky Way & Local Volume" science case).
"""

MIN_DETECTIONS = 20
MIN_AMPLITUDE_MAG = 0.35


def filter(alerts):
    ds = alerts.diaSource
    prv = alerts.prvDiaSources.psfFlux
    forced = alerts.prvDiaForcedSources.scienceFlux.in_band(ds.band)
    amplitude = mag_from_flux(forced.min()) - mag_from_flux(forced.max())
    return (
        (ds.reliability >= 0.6)
        & (fill(ds.extendedness, 1) < 0.2)
        & (prv.count() >= MIN_DETECTIONS)
        & (prv > 0).any()
        & (prv < 0).any()
        & (amplitude > MIN_AMPLITUDE_MAG)
    )
