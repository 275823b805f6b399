"""The per-alert, read-only view: one alert nested like the packet.

``filter_alert(alert)`` and the second stage ``refine(alert)`` receive an :class:`AlertRecord`::

    alert["diaSource"]["snr"]            # a float (None when null)
    alert["diaObject"]                   # a record, or None for a solar-system alert
    alert["prvDiaSources"]               # a tuple of records, or None (no history)
    alert["cutoutDifference"]            # an Image (a read-only 2-D array), or None

Records are lazy: a field is read from the visit's shared numpy columns (the same ones the
vectorized form uses) only when asked for, so touching three fields of an alert costs three
look-ups, not a conversion of the whole packet. Cutouts are FITS images parsed on first use
(no astropy needed: Rubin cutouts are uncompressed FITS).

Restricted code may index records (``_getitem_``) and iterate them, and call the methods in
each class's ``_public`` set: nothing hands out numpy arrays, bytes or Arrow objects.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from sandbox import images
from sandbox.columns import Column, ColumnStore, ListColumn

__all__ = ["AlertRecord", "Image", "PUBLIC_ATTRS", "parse_fits_image"]


def _scalar(col: Column, i: int) -> Any:
    if col._m is not None and col._m[i]:
        return None
    v = col._v[i]
    return str(v) if col._v.dtype.kind == "U" else v.item()


class AlertRecord:
    """One alert (or one struct inside it, or one lightcurve point), read-only.

    Index with field names: ``alert["diaSource"]["psfFlux"]``. ``get(name, default)``,
    ``keys()`` and ``name in record`` work as on a dict.
    """

    __slots__ = ("_store", "_prefix", "_row", "_item")
    _public = frozenset({"get", "keys"})

    def __init__(self, store: ColumnStore, prefix: str, row: int, item: int | None = None):
        # prefix "" is the alert itself; "diaSource" a struct; "prvDiaSources" a point of
        # that list, then ``item`` is the point's index in the flat array of points.
        self._store = store
        self._prefix = prefix
        self._row = row
        self._item = item

    def _path(self, name: str) -> str:
        return f"{self._prefix}.{name}" if self._prefix else name

    def __getitem__(self, name: str) -> Any:
        if not isinstance(name, str):
            raise TypeError("fields are named by strings, e.g. alert['diaSource']['snr']")
        path = self._path(name)
        kind = self._store.kinds.get(path)
        if kind is None:
            known = ", ".join(sorted(self.keys())[:8])
            raise KeyError(f"no field {path!r} in this alert (fields here include {known}, ...)")
        if self._item is not None:  # a lightcurve point: only leaves below it
            col = self._store.get(path)
            assert isinstance(col, ListColumn)
            return _scalar(col._items, self._item)
        if kind == "leaf":
            col = self._store.get(path)
            assert isinstance(col, Column)
            return _scalar(col, self._row)
        if kind == "struct":
            null = self._store.struct_null(path) if not self._prefix else None
            if null is not None and null[self._row]:
                return None
            return AlertRecord(self._store, path, self._row)
        if kind == "list":
            off, null = self._store.list_offsets(path)
            if null is not None and null[self._row]:
                return None
            return tuple(AlertRecord(self._store, path, self._row, j)
                         for j in range(int(off[self._row]), int(off[self._row + 1])))
        data = self._store.binary(path, self._row)  # a cutout
        return None if data is None else Image(parse_fits_image(data, name))

    def get(self, name: str, default: Any = None) -> Any:
        """The field's value, or ``default`` when it is null or absent."""
        if self._path(name) not in self._store.kinds:
            return default
        value = self[name]
        return default if value is None else value

    def keys(self) -> list[str]:
        """The field names at this level."""
        depth = self._prefix.count(".") + 1 if self._prefix else 0
        head = f"{self._prefix}." if self._prefix else ""
        return [p[len(head):] for p in self._store.kinds
                if p.startswith(head) and p.count(".") == depth]

    def __contains__(self, name: str) -> bool:
        return self._path(name) in self._store.kinds

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __repr__(self) -> str:
        what = self._prefix or "alert"
        return f"<{what} record of row {self._row}>"


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
    _public = frozenset({"shape", "centre", "center", "at", "max", "min", "sum", "mean",
                         "median", "std", "box", "count_above", "tolist",
                         "centroid", "second_moments", "elongation"})

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

    def second_moments(self, threshold: float = 0.0, nan: str = "ignore") -> tuple[float, float, float]:
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
        return Image(self._a[max(r - half, 0): r + half + 1, max(c - half, 0): c + half + 1])

    def tolist(self) -> list[list[float]]:
        """The pixels as nested lists, row by row."""
        return self._a.tolist()

    def __repr__(self) -> str:
        return f"<Image {self.shape[0]}x{self.shape[1]}>"


# What restricted code may call on each per-alert type (sandbox.namespace merges these).
PUBLIC_ATTRS: dict[type, frozenset[str]] = {AlertRecord: AlertRecord._public, Image: Image._public}

_BLOCK = 2880
_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


def parse_fits_image(data: bytes, name: str = "cutout") -> np.ndarray:
    """The first 2-D image of an uncompressed FITS file, as float64 with BSCALE/BZERO applied.

    Rubin cutouts keep the image in the primary HDU (variance and PSF follow as extensions);
    other writers put an empty primary first, so the first HDU with two axes is taken.
    """
    pos = 0
    while pos < len(data):
        header: dict[str, str] = {}
        while True:
            block = data[pos: pos + _BLOCK]
            if len(block) < _BLOCK:
                raise ValueError(f"{name}: truncated FITS header")
            pos += _BLOCK
            done = False
            for k in range(0, _BLOCK, 80):
                card = block[k: k + 80].decode("ascii", "replace")
                key = card[:8].strip()
                if key == "END":
                    done = True
                    break
                if card[8:10] == "= ":
                    header[key] = card[10:].split("/", 1)[0].strip()
            if done:
                break
        bitpix = int(header.get("BITPIX", "8"))
        naxis = int(header.get("NAXIS", "0"))
        dims = [int(header.get(f"NAXIS{i}", "0")) for i in range(1, naxis + 1)]
        nbytes = abs(bitpix) // 8 * (int(np.prod(dims)) if dims else 0)
        if naxis == 2 and nbytes:
            if bitpix not in _DTYPES:
                raise ValueError(f"{name}: unsupported FITS BITPIX {bitpix}")
            raw = np.frombuffer(data, dtype=_DTYPES[bitpix], count=dims[0] * dims[1], offset=pos)
            img = raw.reshape(dims[1], dims[0]).astype(np.float64)
            scale, zero = float(header.get("BSCALE", "1")), float(header.get("BZERO", "0"))
            return img * scale + zero if (scale, zero) != (1.0, 0.0) else img
        pos += -(-nbytes // _BLOCK) * _BLOCK
    raise ValueError(f"{name}: no 2-D image in this FITS file")

