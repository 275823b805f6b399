"""Derived columns of a visit, computed once on the trusted side and handed to every worker.

In one process, a hundred filters asking for ``alerts.history("psfFlux").max()`` compute it once:
the column store memoizes it. Each user's worker has its own store, so without help a thousand
users would compute it a thousand times, and on a visit of 10,000 alerts the lightcurve work
(concatenating histories, reductions, band selections) is most of what a typical filter costs.

So a worker's store records a **recipe** for each lightcurve result its filters derived (a small
JSON list, see below), and sends them to the pool after the visit. From the next visit on the pool
computes each recipe once, on its own store over the visit batch (trusted code over trusted data:
the same methods the worker would run), writes each result into a sealed memfd of its own, and
hands every user's worker the results of that user's recipes, which its store installs in place
of computing them. The answers are the same objects the worker would have built.

Recipes::

    ["col", path]                  the store column (a lightcurve field, or any column)
    ["history", name]              the store's history(name)
    [L, op]                        op in SHIPPABLE_OPS on lightcurve recipe L
    [L, "in_band", "r"]            L.in_band("r")
    [L, "in_band", ["col", path]]  L.in_band(that store column)
    ["sky", "galactic", C1, C2]    galactic (l, b) of two store columns (also "ecliptic")

What a worker reports is untrusted: the pool keeps a recipe only if it parses, if every column
it reads (its lightcurve's times and bands included) is one the user's filters may read anyway,
and within a number per user; a recipe that fails to compute is dropped for good. A user's
recipes are forgotten when their filters change.
"""

from __future__ import annotations

import fcntl
import json
import mmap
import os
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa

from sandbox.helpers import SKY_TRANSFORMS
from sandbox.store import SHIPPABLE_OPS, ColumnStore, _ListInfo
from sandbox.view.columns import (
    BANDS,
    Column,
    ListColumn,
    _Segments,
    _store_owned,
    _trusted_column,
)

__all__ = ["Digest", "install"]

MAX_RECIPES = 64  # per user
# Time-ordered results: they read the lightcurve's midpointMjdTai too.
TIMED_OPS = frozenset({"first", "last", "rate", "slope", "times"})
_ALIGN = 64


def _prefix(recipe: Any) -> str | None:
    """The lightcurve a store-list recipe stands on: ``history`` or the list column's prefix."""
    if not isinstance(recipe, list) or len(recipe) != 2 or not isinstance(recipe[1], str):
        return None
    if recipe[0] == "history":
        return "history"
    if recipe[0] == "col":
        return recipe[1].rsplit(".", 1)[0]
    return None


def needs(recipe: Any, depth: int = 0) -> tuple[str, set[str]] | None:
    """``(kind, columns)`` of a well-formed recipe, and every column path computing it reads;
    None when it is not a recipe. Kinds: ``"path"`` (a store column, list or not), ``"list"``
    (a lightcurve), ``"column"`` (a per-alert result), ``"sky"`` (two per-alert columns)."""
    if depth > 4 or not isinstance(recipe, list) or not 2 <= len(recipe) <= 4:
        return None
    if recipe[0] == "col" and len(recipe) == 2 and isinstance(recipe[1], str):
        return "path", {recipe[1]}
    if recipe[0] == "history" and len(recipe) == 2 and isinstance(recipe[1], str):
        return "list", {f"diaSource.{recipe[1]}", f"prvDiaSources.{recipe[1]}"}
    if recipe[0] == "sky" and len(recipe) == 4 and recipe[1] in SKY_TRANSFORMS:
        cols = [needs(c, depth + 1) for c in recipe[2:]]
        if all(c is not None and c[0] == "path" for c in cols):
            return "sky", {p for c in cols if c is not None for p in c[1]}
        return None
    if not 2 <= len(recipe) <= 3:
        return None
    inner = needs(recipe[0], depth + 1)
    if inner is None or inner[0] == "column":
        return None
    root = recipe[0]
    while isinstance(root, list) and root and isinstance(root[0], list):
        root = root[0]
    prefix = _prefix(root)
    if prefix is None:
        return None

    def sibling(name: str) -> set[str]:
        if prefix == "history":
            return {f"diaSource.{name}", f"prvDiaSources.{name}"}
        return {f"{prefix}.{name}"}

    paths = set(inner[1])
    if len(recipe) == 2 and recipe[1] in SHIPPABLE_OPS:
        if recipe[1] in TIMED_OPS:
            paths |= sibling("midpointMjdTai")
        return ("list" if recipe[1] == "times" else "column"), paths
    if len(recipe) == 3 and recipe[1] == "in_band":
        band = recipe[2]
        if isinstance(band, str) and band in BANDS:
            return "list", paths | sibling("band")
        other = needs(band, depth + 1)
        if other is not None and other[0] == "path" and band[0] == "col":
            return "list", paths | sibling("band") | other[1]
    return None


def _resolve(store: ColumnStore, recipe: list[Any]) -> Any:
    """The value of ``recipe`` in ``store``, through the store's own methods (so memoized)."""
    if recipe[0] == "col":
        return store.get(recipe[1])
    if recipe[0] == "history":
        return store.history(recipe[1])
    if recipe[0] == "sky":
        return SKY_TRANSFORMS[recipe[1]](*(_resolve(store, c) for c in recipe[2:]))
    parent = _resolve(store, recipe[0])
    if not isinstance(parent, ListColumn):
        raise TypeError("not a lightcurve")
    if recipe[1] == "in_band":
        band = recipe[2] if isinstance(recipe[2], str) else _resolve(store, recipe[2])
        return parent.in_band(band)
    return getattr(parent, recipe[1])()


def _ancestors(recipe: list[Any]) -> list[list[Any]]:
    """``recipe``'s lightcurve ancestors and band columns, outermost last, then itself."""
    out: list[list[Any]] = []
    if isinstance(recipe[0], list):
        out += _ancestors(recipe[0])
        if len(recipe) == 3 and isinstance(recipe[2], list):
            out += _ancestors(recipe[2])
    out.append(recipe)
    return out


def _arrays(value: Any, parent: Any) -> dict[str, np.ndarray] | None:
    """The arrays that rebuild ``value`` in a worker; None when it is not worth handing over."""
    if isinstance(value, tuple):  # a sky transform: two columns
        out: dict[str, np.ndarray] = {}
        for k, col in enumerate(value):
            out |= {f"{k}{name}": a for name, a in (_arrays(col, None) or {}).items()}
        return out
    if isinstance(value, Column):
        out = {"v": value._v}
        if value._m is not None:
            out["m"] = value._m
        return out
    if isinstance(value, ListColumn):
        if isinstance(parent, ListColumn) and value._items._v is parent._items._v:
            # A band selection: the same points, another null mask.
            return {"m": value._items._m if value._items._m is not None else np.zeros(0, bool)}
        seg = value._seg
        out = {"off": seg.off, "len": seg.lengths, "ne": seg.nonempty, "st": seg.starts}
        out["v"] = value._items._v
        if value._items._m is not None:
            out["m"] = value._items._m
        if value._lm is not None:
            out["lm"] = value._lm
        return out
    return None


def _share(arrays: dict[str, np.ndarray]) -> tuple[int, list[list[Any]]]:
    """Write ``arrays`` into a sealed memfd; its read-only descriptor and their layout."""
    layout: list[list[Any]] = []
    starts: list[int] = []
    pos = 0
    for name, a in arrays.items():
        layout.append([name, a.dtype.str, len(a), pos])
        starts.append(pos)
        pos += -(-a.nbytes // _ALIGN) * _ALIGN
    fd = os.memfd_create("minibroker-derived", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, max(pos, 1))
        if pos:
            with mmap.mmap(fd, pos) as mm:
                for at, a in zip(starts, arrays.values(), strict=True):
                    mm[at : at + a.nbytes] = np.ascontiguousarray(a).tobytes()
        seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC), layout
    finally:
        os.close(fd)


class Digest:
    """The pool's side: each user's recipes, and per visit their results in shared memory,
    computed in at most ``budget_s`` of the engine's time."""

    def __init__(self, budget_s: float = 0.25) -> None:
        self.budget_s = budget_s
        self._recipes: dict[str, dict[str, list[Any]]] = {}  # user → {key: recipe}
        self._bad: set[str] = set()  # recipes that failed to compute
        self._plans: dict[str, list[tuple[str, list[Any]]]] = {}  # user → what to hand over
        self._store: ColumnStore | None = None
        self._shared: dict[str, tuple[int, list[list[Any]]] | None] = {}  # key → (fd, layout)
        self._encoded: dict[tuple[Any, ...], tuple[list[int], str]] = {}  # (limit, plan) → text

    def learn(
        self, user: str, report: bytes, readable: frozenset[str], available: frozenset[str]
    ) -> None:
        """Keep the recipes of a worker's report (JSON, its size bounded by the wire) that
        ``user``'s filters could compute from the columns ``readable`` (of the batch's columns
        ``available``); ignore anything else (the report is untrusted)."""
        try:
            recipes = json.loads(report)
        except ValueError:
            return
        if not isinstance(recipes, list):
            return
        mine = self._recipes.setdefault(user, {})
        for recipe in recipes:
            if len(mine) >= MAX_RECIPES:
                break
            need = needs(recipe)
            # Every column it reads must be readable; previous sources the batch lacks
            # altogether (a history of the current source alone) read nothing, here as in
            # the worker.
            if need is None or not all(
                p in readable or (p.startswith("prvDiaSources.") and p not in available)
                for p in need[1]
            ):
                continue
            key = json.dumps(recipe)
            if key not in self._bad:
                mine[key] = recipe
                self._plans.pop(user, None)

    def forget(self, user: str) -> None:
        """Drop ``user``'s recipes (their filters changed)."""
        self._recipes.pop(user, None)
        self._plans.pop(user, None)

    def recipes(self, user: str) -> list[list[Any]]:
        """``user``'s recipes (for tests and the curious)."""
        return list(self._recipes.get(user, {}).values())

    def start(self, batch: pa.RecordBatch) -> None:
        """A new visit: compute its results, those most users use first, within the time
        budget (what a worker reports is untrusted: whatever it asks for, the engine spends
        at most ``budget_s`` per visit on everyone's results; the rest, workers compute
        themselves, on their users' own time)."""
        self.finish()
        self._store = ColumnStore(batch)
        users: dict[str, int] = {}
        recipes: dict[str, list[Any]] = {}
        for user in self._recipes:
            plan = self._plans.get(user)
            if plan is None:
                plan = self._plans[user] = self._plan(self._recipes[user].values())
            for key, recipe in plan:
                users[key] = users.get(key, 0) + 1
                recipes[key] = recipe
        started = time.monotonic()
        for key in sorted(users, key=users.__getitem__, reverse=True):
            if time.monotonic() - started > self.budget_s:
                break
            self._result(key, recipes[key])
        self._store = None  # nothing more is computed this visit

    def finish(self) -> None:
        """Release this visit's shared memory."""
        for entry in self._shared.values():
            if entry is not None:
                os.close(entry[0])
        self._shared.clear()
        self._encoded.clear()
        self._store = None

    def entries(self, user: str) -> tuple[list[int], list[list[Any]]]:
        """Descriptors and job entries (``[recipe, descriptor index, layout]``, parents before
        children) of ``user``'s recipes this visit."""
        plan = self._plans.get(user)
        if plan is None:
            plan = self._plans[user] = self._plan(self._recipes.get(user, {}).values())
        fds: list[int] = []
        out: list[list[Any]] = []
        for key, recipe in plan:
            shared = self._result(key, recipe)
            if shared is not None:
                fds.append(shared[0])
                out.append([recipe, len(fds) - 1, shared[1]])
        return fds, out

    def encoded(self, user: str, limit: int) -> tuple[list[int], str]:
        """:meth:`entries`, at most ``limit`` of them, as the job's JSON text: users whose
        filters derive the same results share one encoding per visit (the engine otherwise
        spent ~40 µs per user per visit building and encoding the same lists)."""
        plan = self._plans.get(user)
        if plan is None:
            plan = self._plans[user] = self._plan(self._recipes.get(user, {}).values())
        keys = (limit, *(key for key, _recipe in plan))
        got = self._encoded.get(keys)
        if got is None:
            fds, out = self.entries(user)
            got = self._encoded[keys] = (fds[:limit], json.dumps(out[:limit]))
        return list(got[0]), got[1]

    def _plan(self, recipes: Iterable[list[Any]]) -> list[tuple[str, list[Any]]]:
        """Each recipe with its ancestors first, once each, with its key."""
        out: dict[str, list[Any]] = {}
        for recipe in recipes:
            for step in _ancestors(recipe):
                out.setdefault(json.dumps(step), step)
        return list(out.items())

    def _result(self, key: str, recipe: list[Any]) -> tuple[int, list[list[Any]]] | None:
        if key in self._shared:
            return self._shared[key]
        shared = None
        if self._store is not None and key not in self._bad:
            try:
                value = _resolve(self._store, recipe)
                parent = _resolve(self._store, recipe[0]) if isinstance(recipe[0], list) else None
                arrays = _arrays(value, parent)
                if (
                    recipe[0] == "col"
                    and isinstance(value, Column)
                    and value._m is None
                    and value._v.dtype.kind in "iuf"
                ):
                    arrays = None  # numbers without nulls: the worker's view costs nothing
                if arrays is not None:
                    shared = _share(arrays)
            except Exception:  # noqa: BLE001 - a recipe that cannot be computed is dropped
                self._bad.add(key)
                for mine in self._recipes.values():
                    mine.pop(key, None)
                self._plans.clear()
        self._shared[key] = shared
        return shared


def _segments(arrays: dict[str, np.ndarray]) -> _Segments:
    if "len" in arrays:
        return _Segments(arrays["off"], (arrays["len"], arrays["ne"], arrays["st"]))
    return _Segments(arrays["off"])


def install(store: ColumnStore, recipe: list[Any], arrays: dict[str, np.ndarray]) -> None:
    """Put a result handed over by the pool into a worker's ``store``, where the store's own
    methods find it (trusted side, in the worker, before any filter runs)."""
    if recipe[0] == "col" and "off" not in arrays:
        col = _store_owned(_trusted_column(arrays["v"], arrays.get("m")))
        store._cache[recipe[1]] = col
        store._note(col, recipe, learn=False)
        return
    if recipe[0] in ("col", "history"):
        prefix = _prefix(recipe)
        assert prefix is not None
        if recipe[0] == "history":
            seg = store._aux.get("digest.history")
            if seg is None:
                seg = store._aux["digest.history"] = _segments(arrays)
            lm = None
        else:
            shape = store._shapes.get(prefix)
            if shape is None:
                lm = arrays.get("lm")
                shape = store._shapes[prefix] = (_segments(arrays), lm)
            seg, lm = shape
        items = _store_owned(_trusted_column(arrays["v"], arrays.get("m")))
        lc = ListColumn(seg.off, items, lm, _ListInfo(store, prefix), seg)
        key = recipe[1] if recipe[0] == "col" else f"history.{recipe[1]}"
        store._cache[key] = lc
        store._note(lc, recipe, learn=False)
        return
    if recipe[0] == "sky":
        cols = [_resolve(store, c) for c in recipe[2:]]
        memo = cols[0]._memo
        memo[(recipe[1], *(id(c) for c in cols[1:]))] = (
            tuple(cols[1:]),
            tuple(_trusted_column(arrays[f"{k}v"], arrays.get(f"{k}m")) for k in range(2)),
        )
        return
    parent = _resolve(store, recipe[0])
    assert isinstance(parent, ListColumn)
    if recipe[1] == "in_band":
        mask = arrays["m"]
        selected = parent._with(_trusted_column(parent._items._v, mask if len(mask) else None))
        selected._recipe = recipe
        if isinstance(recipe[2], str):
            parent._memo[("in_band", recipe[2])] = selected
        else:
            band = _resolve(store, recipe[2])
            parent._memo[("in_band", id(band))] = (band, selected)
        return
    if recipe[1] == "times":
        times = parent._with(_trusted_column(arrays["v"], arrays.get("m")))
        times._recipe = recipe
        parent._memo["times"] = times
        return
    parent._memo[recipe[1]] = _trusted_column(arrays["v"], arrays.get("m"))
