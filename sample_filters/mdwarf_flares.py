"""M-dwarf flares: a red, point-like star suddenly much brighter than its quiescent level.

The star is red (from the diaObject per-band science-flux means: g - i > 1.5, or r - i > 0.7,
or r - z > 1.0 when g was never measured; ordinary stars are far bluer) and point-like
(extendedness < 0.2). The flare is hot, so the difference flux is a large fraction of the
quiescent flux in the alert's band (psfFlux / templateFlux > 0.05), and the object has been
quiet most of the year (at most 5 previous detections). Stellar flares are the most common
fast Galactic transients in Rubin (Hilton et al. 2010; LSST Science Book §6.10).
"""

MIN_FLARE_RATIO = 0.05


def filter(alerts):
    ds, obj = alerts.diaSource, alerts.diaObject
    # A null colour (band never measured) compares False, so the three tests combine with |.
    red = (
        (colour(obj.g_scienceFluxMean, obj.i_scienceFluxMean) > 1.5)
        | (colour(obj.r_scienceFluxMean, obj.i_scienceFluxMean) > 0.7)
        | (colour(obj.r_scienceFluxMean, obj.z_scienceFluxMean) > 1.0)
    )
    return (
        (ds.reliability >= 0.6)
        & (ds.psfFlux > 0)
        & (fill(ds.extendedness, 1) < 0.2)
        & red
        & (flux_ratio(ds.psfFlux, ds.templateFlux) > MIN_FLARE_RATIO)
        & (alerts.prvDiaSources.psfFlux.count() <= 5)
    )
