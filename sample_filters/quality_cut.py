"""Quality cut: real, clean, significant detections only.

Keeps alerts whose real/bogus score is high (diaSource.reliability >= 0.6), whose detection is
significant (snr >= 5) and which carry none of the pixel flags that mark the usual artefacts
of image subtraction: bad or edge pixels, a cosmic ray or saturation at the centre, a satellite
streak, or a dipole (a misaligned star). A flag that is null (not measured) counts as set here:
an unknown quality is not a good quality. This is the first cut of almost every broker filter
(cf. ALeRCE/Fink "real" selections, and Rubin's reliability score, DMTN-102).
"""

BAD_FLAGS = (
    "pixelFlags_bad",
    "pixelFlags_edge",
    "pixelFlags_crCenter",
    "pixelFlags_saturatedCenter",
    "pixelFlags_streakCenter",
    "pixelFlags_suspectCenter",
    "pixelFlags_interpolatedCenter",
    "psfFlux_flag",
    "centroid_flag",
    "glint_trail",
)


def filter(alerts):
    ds = alerts.diaSource
    flags = [ds[name] for name in BAD_FLAGS]
    return (
        (ds.reliability >= 0.6)
        & (ds.snr >= 5)
        & none_set(*flags, null=True)
        & none_set(ds.isDipole)
    )
