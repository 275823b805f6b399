"""What untrusted code touches: the read-only objects a filter receives and may call.

Everything here is reachable from restricted code, so everything here is part of the attack
surface: each class lists the methods restricted code may call in its ``_public`` set
(:mod:`sandbox.namespace` enforces it), keeps its numpy arrays in private slots and returns new
read-only values only.

- :class:`AlertsView` (``filter(alerts)``), :class:`Column` and :class:`ListColumn`
  (:mod:`sandbox.view.columns`);
- :class:`AlertRecord` (``filter_alert(alert)``, ``refine(alert)``; :mod:`sandbox.view.record`);
- :class:`Image` (cutouts; :mod:`sandbox.view.image`).

The trusted side that builds them from an Arrow batch is :mod:`sandbox.store`.
"""

from sandbox.view.columns import BANDS, AlertsView, Column, ListColumn, as_column
from sandbox.view.image import Image, parse_fits_image
from sandbox.view.record import PUBLIC_ATTRS, AlertRecord

__all__ = [
    "BANDS",
    "PUBLIC_ATTRS",
    "AlertRecord",
    "AlertsView",
    "Column",
    "Image",
    "ListColumn",
    "as_column",
    "parse_fits_image",
]
