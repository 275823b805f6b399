"""Cutouts as filters see them: :class:`Image`, a read-only 2-D array of floats, and the small
FITS reader that makes one from a cutout's bytes (no astropy in workers: Rubin cutouts are
uncompressed FITS, and importing a large library into every worker would cost start-up time
and attack surface).
"""

from __future__ import annotations

import numpy as np

from sandbox import images

__all__ = ["Image", "parse_fits_image"]


class Image:
    """A cutout as a read-only 2-D array of floats (nJy for science/difference images).

    ``img.shape`` is ``(rows, columns)``; ``img.centre()`` the pixel at the centre (where the
    source is); ``img.at(row, col)``; reductions ``max``, ``min``, ``sum``, ``mean``,
    ``median``, ``std`` ignore NaN pixels unless asked otherwise (``nan="zero"`` or
    ``"propagate"``, see :mod:`sandbox.images`); ``centroid``, ``second_moments`` and
    ``elongation`` are the light's moments; ``img.box(half)`` is the central
    ``(2*half+1)``-pixel square as a new Image; ``img.tolist()`` gives nested lists.
    """

    __slots__ = ("_a",)
    _public = frozenset(
        {
            "shape",
            "centre",
            "center",
            "at",
            "max",
            "min",
            "sum",
            "mean",
            "median",
            "std",
            "box",
            "count_above",
            "tolist",
            "centroid",
            "second_moments",
            "elongation",
        }
    )

    def __init__(self, array: np.ndarray):
        a = np.array(array, dtype=np.float64)  # our own copy: nothing else can change it
        a.flags.writeable = False
        self._a = a

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns)."""
        return (int(self._a.shape[0]), int(self._a.shape[1]))

    def centre(self) -> float:
        """The value of the central pixel (row n//2, column m//2)."""
        return float(self._a[self._a.shape[0] // 2, self._a.shape[1] // 2])

    center = centre

    def at(self, row: int, col: int) -> float:
        """The value at (row, col), counted from 0 at the first row and column."""
        if not (isinstance(row, int) and isinstance(col, int)):
            raise TypeError("pixel indices are integers")
        return float(self._a[row, col])

    def max(self, nan: str = "ignore") -> float:
        """Largest pixel value (NaN pixels ignored unless ``nan=`` says otherwise)."""
        return images.reduce(self._a, np.max, np.nanmax, nan)

    def min(self, nan: str = "ignore") -> float:
        """Smallest pixel value (NaN pixels ignored unless ``nan=`` says otherwise)."""
        return images.reduce(self._a, np.min, np.nanmin, nan)

    def sum(self, nan: str = "ignore") -> float:
        """Sum of the pixels (NaN pixels ignored unless ``nan=`` says otherwise)."""
        return images.reduce(self._a, np.sum, np.nansum, nan)

    def mean(self, nan: str = "ignore") -> float:
        """Mean pixel value (NaN pixels ignored unless ``nan=`` says otherwise)."""
        return images.reduce(self._a, np.mean, np.nanmean, nan)

    def median(self, nan: str = "ignore") -> float:
        """Median pixel value: ``nan="ignore"`` (default) skips NaN pixels, ``"zero"`` counts
        them as 0, ``"propagate"`` gives NaN if any pixel is NaN."""
        return images.reduce(self._a, np.median, np.nanmedian, nan)

    def std(self, nan: str = "ignore") -> float:
        """Standard deviation of the pixels (NaN pixels ignored unless ``nan=`` says otherwise)."""
        return images.reduce(self._a, np.std, np.nanstd, nan)

    def centroid(self, threshold: float = 0.0, nan: str = "ignore") -> tuple[float, float]:
        """(row, column) of the light above ``threshold``, weighted by ``pixel - threshold``;
        (NaN, NaN) when no pixel is above it."""
        return images.centroid(self._a, threshold, nan)

    def second_moments(
        self, threshold: float = 0.0, nan: str = "ignore"
    ) -> tuple[float, float, float]:
        """(Mrr, Mcc, Mrc): the light's second moments about its centroid, in pixels²."""
        return images.second_moments(self._a, threshold, nan)

    def elongation(self, threshold: float = 0.0, nan: str = "ignore") -> float:
        """Axis ratio (≥ 1) of the light's second-moment ellipse: ~1 for a point source,
        large for a trail, inf for light on one line; NaN when no pixel is above ``threshold``."""
        return images.elongation(self._a, threshold, nan)

    def count_above(self, threshold: float) -> int:
        """Number of pixels above ``threshold``."""
        with np.errstate(invalid="ignore"):
            return int((self._a > float(threshold)).sum())

    def box(self, half: int) -> Image:
        """The central square of side ``2*half + 1`` pixels (clipped to the image)."""
        if not isinstance(half, int) or half < 0:
            raise ValueError("box(half) takes a non-negative integer")
        r, c = self._a.shape[0] // 2, self._a.shape[1] // 2
        return Image(self._a[max(r - half, 0) : r + half + 1, max(c - half, 0) : c + half + 1])

    def tolist(self) -> list[list[float]]:
        """The pixels as nested lists, row by row."""
        return self._a.tolist()

    def __repr__(self) -> str:
        return f"<Image {self.shape[0]}x{self.shape[1]}>"


def parse_fits_image(data: bytes, name: str = "cutout") -> np.ndarray:
    """The first 2-D image of an uncompressed FITS file, as float64 with BSCALE/BZERO applied.

    Rubin cutouts keep the image in the primary HDU (variance and PSF follow as extensions);
    other writers put an empty primary first, so the first HDU with two axes is taken (the
    header walk is :func:`sandbox.images.fits_layout`, shared with the column-form helpers).
    """
    try:
        lay = images.fits_layout(data)
    except ValueError as exc:
        raise ValueError(str(exc).replace("cutout:", f"{name}:", 1)) from None
    raw = np.frombuffer(
        data, dtype=lay.dtype, count=lay.shape[0] * lay.shape[1], offset=lay.data_start
    )
    img = raw.reshape(lay.shape).astype(np.float64)
    return img * lay.scale + lay.zero if (lay.scale, lay.zero) != (1.0, 0.0) else img
