"""Two-stage example: bright clean detections whose difference image is a positive point source.

Stage one (vectorized, every alert): a quality cut and snr > 20. Stage two (``refine``, only
the survivors, with the cutouts): the difference cutout's centre must hold a positive peak
(the central pixel is at least half the brightest pixel of the central 5x5 box) and no pixel in
the stamp may be more negative than minus half that peak, which rejects dipoles and
subtraction residuals that the flags missed (cf. the cutout checks of ZTF's "braai").
"""


def filter(alerts):
    ds = alerts.diaSource
    return (ds.snr > 20) & (ds.reliability >= 0.6) & none_set(ds.isDipole, ds.pixelFlags_bad)


def refine(alert):
    img = alert["cutoutDifference"]
    if img is None:
        return False
    centre, peak = img.centre(), img.box(2).max()
    return centre > 0 and centre >= 0.5 * peak and img.min() > -0.5 * peak
