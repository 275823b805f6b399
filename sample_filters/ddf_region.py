"""Deep Drilling Fields: every real alert inside one of Rubin's six DDF pointings.

The DDFs (COSMOS, XMM-LSS, ECDFS, ELAIS-S1 and the two halves of the Euclid Deep Field South)
are observed many times a night; their alerts feed dense-cadence studies. Keeps alerts with
reliability >= 0.6 within 1.75 deg (the LSSTCam field radius) of a field centre
(positions from the Rubin cadence notes, PSTN-052).
"""

DDF_CENTRES = (
    ("COSMOS", 150.10, 2.18),
    ("XMM-LSS", 35.57, -4.82),
    ("ECDFS", 52.98, -28.12),
    ("ELAIS-S1", 9.45, -44.02),
    ("EDFS_a", 58.90, -49.32),
    ("EDFS_b", 63.60, -47.60),
)
RADIUS_DEG = 1.75


def filter(alerts):
    ds = alerts.diaSource
    inside = sky.watchlist(ds.ra, ds.dec, [(ra, dec) for _, ra, dec in DDF_CENTRES], RADIUS_DEG)
    return inside & (ds.reliability >= 0.6)
