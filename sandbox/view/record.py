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
from typing import TYPE_CHECKING, Any

from sandbox.view.columns import Column, ListColumn
from sandbox.view.image import Image, parse_fits_image

if TYPE_CHECKING:
    ColumnStore = Any  # sandbox.store, which the views read through but do not import

__all__ = ["AlertRecord", "PUBLIC_ATTRS"]


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
            return tuple(
                AlertRecord(self._store, path, self._row, j)
                for j in range(int(off[self._row]), int(off[self._row + 1]))
            )
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
        return [
            p[len(head) :]
            for p in self._store.kinds
            if p.startswith(head) and p.count(".") == depth
        ]

    def __contains__(self, name: str) -> bool:
        return self._path(name) in self._store.kinds

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __repr__(self) -> str:
        what = self._prefix or "alert"
        return f"<{what} record of row {self._row}>"


# What restricted code may call on each per-alert type (sandbox.namespace merges these).
PUBLIC_ATTRS: dict[type, frozenset[str]] = {AlertRecord: AlertRecord._public, Image: Image._public}
