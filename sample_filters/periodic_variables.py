"""Large-amplitude periodic variables: RR Lyrae candidates from a year of forced photometry.

RR Lyrae pulsate with periods of 0.3-1 day and amplitudes of 0.5-1.2 mag in g, so a year of
sparse Rubin visits samples them at random phases: a wide, uncorrelated scatter around a steady
mean, far larger than the photometric errors. Without a period search (a job for a downstream
classifier) they are selected as in SDSS Stripe 82 (Ivezic et al. 2005; Sesar et al. 2007,
2010) by colour and variability amplitude, both measured on the forced photometry of the
science images over the last year (``prvDiaForcedSources.scienceFlux``, per band):

- colour of an A-F star: median g - i between -0.4 and 0.45 (ordinary field stars, G/K/M
  dwarfs, are redder; the blue edge of the halo turn-off is near g - i = 0.4);
- intrinsic rms amplitude above 0.12 mag in both g and r, with at least 5 and 10 points: the
  scatter left after removing the photometric errors, sqrt(std^2 - <err^2>) / median. Ordinary
  variable stars wander by 0.03-0.15 mag rms, RR Lyrae by ~0.12-0.45 mag in g and 0.12-0.3 in r;
- amplitude falling with wavelength, rms in g above rms in i: a pulsation is a change of
  temperature, so RR Lyrae vary ~1.5 times more in g than in i (Sesar et al. 2010), while the
  irregular wandering of ordinary stars is nearly grey;
- a point source (extendedness < 0.2) with at least 20 earlier detections of both signs
  (brighter and fainter than the template: it varies around its template level).

RR Lyrae trace the Galactic halo (Oluseyi et al. 2012; Rubin "Stars, Milky Way & Local
Volume" science case).
"""

MIN_DETECTIONS = 20
MIN_RMS_MAG = 0.12
BLUE, RED = -0.4, 0.45  # g - i colour box


def intrinsic_rms_mag(alerts, band):
    """rms of the year's forced science fluxes in ``band`` beyond the errors, in magnitudes."""
    forced = alerts.prvDiaForcedSources
    flux = forced.scienceFlux.in_band(band)
    err = forced.scienceFluxErr.in_band(band)
    excess = flux.std() ** 2 - (err * err).mean()  # negative (no variability): sqrt gives NaN
    return 1.0857 * sqrt(excess) / flux.median()


def filter(alerts):
    ds = alerts.diaSource
    prv = alerts.prvDiaSources.psfFlux
    science = alerts.prvDiaForcedSources.scienceFlux
    g_i = colour(science.in_band("g").median(), science.in_band("i").median())
    rms_g = intrinsic_rms_mag(alerts, "g")
    return (
        (ds.reliability >= 0.6)
        & (fill(ds.extendedness, 1) < 0.2)
        & (prv.count() >= MIN_DETECTIONS)
        & (prv > 0).any()
        & (prv < 0).any()
        & g_i.between(BLUE, RED)
        & (science.in_band("g").count() >= 5)
        & (science.in_band("r").count() >= 10)
        & (rms_g > MIN_RMS_MAG)
        & (intrinsic_rms_mag(alerts, "r") > MIN_RMS_MAG)
        & (rms_g > intrinsic_rms_mag(alerts, "i"))
    )
