"""Per-alert example (a port of one-alert-at-a-time code): bright, red, reliable detections.

Written as ``filter_alert(alert)``, which sees one alert nested like the packet. It works, but
the vectorized ``filter(alerts)`` form of the same test is tens of times faster
(docs/filters.md, "How much faster"). Keeps reliable (>= 0.8) detections brighter than
magnitude 20 in a red band (i, z or y).
"""


def filter_alert(alert):
    ds = alert["diaSource"]
    if ds["reliability"] < 0.8 or ds["band"] not in ("i", "z", "y"):
        return False
    flux = ds["psfFlux"]
    return flux is not None and flux > 0 and mag_from_flux(flux) < 20.0
