"""Watchlist: alerts within 1.5 arcsec of any target of a catalogue.

Replace TARGETS with your own list of (ra, dec) pairs in degrees: thousands of targets cost
about as much as one cone (the targets are sorted by declination and matched in one
vectorized pass). Typical uses: known AGN or blazars, a galaxy catalogue for host matching,
X-ray or neutrino counterparts (cf. Fink "xmatch", ANTARES watch lists). The default list holds
a few well-known variables and transient hosts for illustration.
"""

RADIUS = 1.5 * arcsec
TARGETS = [
    (187.27791667, 2.05238889),  # 3C 273
    (83.63308333, 22.01450000),  # Crab pulsar
    (10.68470833, 41.26875000),  # M31 nucleus
    (201.36506288, -43.01911267),  # Centaurus A nucleus
    (148.88821936, 69.06529514),  # M81 nucleus
    (56.75000000, 24.11666667),  # Pleiades (Alcyone)
]


def filter(alerts):
    ds = alerts.diaSource
    return sky.watchlist(ds.ra, ds.dec, TARGETS, RADIUS) & (ds.reliability >= 0.5)
