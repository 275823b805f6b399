"""Pixel statistics of cutouts: NaN treatment and intensity moments (trusted side).

:class:`sandbox.view.Image` calls these on its private array and hands filters plain floats
or tuples of floats only.

NaN pixels (masked or off-chip in Rubin cutouts) are treated as the filter asks:

- ``nan="ignore"`` (the default): left out, as if the pixel were not there;
- ``nan="zero"``: counted as 0.0;
- ``nan="propagate"``: any NaN pixel makes the result NaN (strict: "I do not trust this cutout").

Moments are those of the light above ``threshold`` (default 0: the positive pixels of a
difference image); with rows ``r`` and columns ``c`` counted from 0 and weights
``w = pixel - threshold`` where the pixel is above the threshold (0 elsewhere):

- centroid ``(r0, c0) = (Σ w r, Σ w c) / Σ w``;
- second moments ``Mrr = Σ w (r - r0)² / Σ w``, ``Mcc``, ``Mrc = Σ w (r - r0)(c - c0) / Σ w``;
- elongation ``sqrt(λ1 / λ2)`` with ``λ1 ≥ λ2`` the eigenvalues of ``[[Mrr, Mrc], [Mrc, Mcc]]``:
  the axis ratio of the light's ellipse, 1 for a round source, large for a trail; ``inf`` when
  the light lies on one line (λ2 = 0).

No weight at all (a blank or all-NaN cutout) gives NaN everywhere.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from numpy.lib.stride_tricks import as_strided

__all__ = [
    "NAN_MODES",
    "centroid",
    "elongation",
    "fits_layout",
    "per_cutout",
    "reduce",
    "second_moments",
    "stack_elongation",
    "stack_moments",
    "stack_reduce",
]

NAN_MODES = ("ignore", "zero", "propagate")


def _mode(nan: object) -> str:
    if nan not in NAN_MODES:
        raise ValueError(
            'nan= is "ignore" (skip NaN pixels), "zero" (count them as 0) or "propagate" (NaN result)'
        )
    return str(nan)


def reduce(
    a: np.ndarray,
    fn: Callable[..., np.ndarray],
    nanfn: Callable[..., np.ndarray],
    nan: object = "ignore",
) -> float:
    """One pixel statistic under a NaN treatment: ``fn`` on all pixels, ``nanfn`` skipping NaN."""
    return float(stack_reduce(a[None], fn, nanfn, nan)[0])


def _threshold(threshold: object) -> float:
    if (
        not isinstance(threshold, int | float)
        or isinstance(threshold, bool)
        or math.isnan(threshold)
    ):
        raise TypeError("threshold is a number (a pixel value)")
    return float(threshold)


def stack_moments(
    a: np.ndarray, threshold: float = 0.0, nan: object = "ignore"
) -> tuple[np.ndarray, ...]:
    """(r0, c0, Mrr, Mcc, Mrc) of each image of a stack ``(n, rows, cols)``: five arrays of n.

    The one implementation behind ``Image.centroid`` (a stack of one) and the column helpers
    (every cutout of a visit at once)."""
    mode, thr = _mode(nan), _threshold(threshold)
    nans = np.isnan(a)
    vals = np.where(nans, 0.0 if mode == "zero" else -np.inf, a)
    with np.errstate(all="ignore"):
        w = np.where(vals > thr, vals - thr, 0.0)
        rows = np.arange(a.shape[1], dtype=np.float64)
        cols = np.arange(a.shape[2], dtype=np.float64)
        wr, wc = w.sum(axis=2), w.sum(axis=1)  # light per row, per column
        total = wr.sum(axis=1)
        bad = ~((total > 0) & np.isfinite(total))
        if mode == "propagate":
            bad |= nans.any(axis=(1, 2))
        total = np.where(bad, 1.0, total)
        r0 = wr @ rows / total
        c0 = wc @ cols / total
        # Central moments from sums about the centroid (not E[x²] - E[x]²: no cancellation).
        dr = rows[None, :] - r0[:, None]
        dc = cols[None, :] - c0[:, None]
        mrr = np.einsum("nr,nr->n", wr, dr * dr) / total
        mcc = np.einsum("nc,nc->n", wc, dc * dc) / total
        mrc = np.einsum("nrc,nr,nc->n", w, dr, dc) / total
    out = tuple(np.where(bad, np.nan, x) for x in (r0, c0, mrr, mcc, mrc))
    return out


def stack_elongation(mrr: np.ndarray, mcc: np.ndarray, mrc: np.ndarray) -> np.ndarray:
    """Axis ratio sqrt(λ1/λ2) of each second-moment ellipse (≥ 1; inf for a line; NaN in, NaN out)."""
    with np.errstate(all="ignore"):
        half_trace = (mrr + mcc) / 2
        root = np.hypot((mrr - mcc) / 2, mrc)
        big, small = half_trace + root, np.maximum(half_trace - root, 0.0)
        ratio = np.sqrt(big / np.where(small > 0, small, 1.0))
        out = np.where(small <= 1e-12 * big, np.inf, ratio)
        out = np.where(big <= 0, 1.0, out)  # all the light in one pixel: round by convention
    return np.where(np.isnan(mrr), np.nan, out)


def stack_reduce(
    a: np.ndarray,
    fn: Callable[..., np.ndarray],
    nanfn: Callable[..., np.ndarray],
    nan: object = "ignore",
) -> np.ndarray:
    """One pixel statistic of each image of a stack under a NaN treatment."""
    mode = _mode(nan)
    with np.errstate(all="ignore"):
        if mode == "zero":
            return np.asarray(
                fn(np.nan_to_num(a, nan=0.0, posinf=np.inf, neginf=-np.inf), axis=(1, 2)),
                np.float64,
            )
        if mode == "propagate":
            return np.asarray(fn(a, axis=(1, 2)), np.float64)
        finite = np.isfinite(a).any(axis=(1, 2))
        safe = np.where(finite[:, None, None], a, 0.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN images: handled below
            return np.where(finite, np.asarray(nanfn(safe, axis=(1, 2)), np.float64), np.nan)


def centroid(a: np.ndarray, threshold: float = 0.0, nan: object = "ignore") -> tuple[float, float]:
    """Light-weighted (row, column) of the pixels above ``threshold``."""
    r0, c0, *_ = stack_moments(a[None], threshold, nan)
    return float(r0[0]), float(c0[0])


def second_moments(
    a: np.ndarray, threshold: float = 0.0, nan: object = "ignore"
) -> tuple[float, float, float]:
    """(Mrr, Mcc, Mrc) about the centroid, in pixels²."""
    _, _, mrr, mcc, mrc = stack_moments(a[None], threshold, nan)
    return float(mrr[0]), float(mcc[0]), float(mrc[0])


def elongation(a: np.ndarray, threshold: float = 0.0, nan: object = "ignore") -> float:
    """Axis ratio sqrt(λ1/λ2) of the second-moment ellipse (≥ 1; inf for a line)."""
    _, _, mrr, mcc, mrc = stack_moments(a[None], threshold, nan)
    return float(stack_elongation(mrr, mcc, mrc)[0])


# --- every cutout of a visit at once (the column form) ------------------------------------------

_BLOCK = 2880
_CARD = 80
_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}
_STRUCTURAL = ("BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "BSCALE", "BZERO")


@dataclass(frozen=True)
class _Layout:
    """Where the image of one FITS file sits: every cutout with the same header keywords in
    the same order and the same structural cards has its pixels at the same place."""

    data_start: int
    shape: tuple[int, int]
    dtype: str
    scale: float
    zero: float
    keywords: bytes  # the 8-byte keyword of every card before the data
    cards: tuple[tuple[int, bytes], ...]  # (offset, 80 bytes) of each structural card

    @property
    def data_end(self) -> int:
        return self.data_start + np.dtype(self.dtype).itemsize * self.shape[0] * self.shape[1]


def fits_layout(data: bytes) -> _Layout:
    """The first 2-D image HDU of a FITS file, as :func:`sandbox.view.parse_fits_image` finds it."""
    pos = 0
    while pos < len(data):
        header: dict[str, str] = {}
        cards: list[tuple[int, bytes]] = []
        done = False
        while not done:
            block = data[pos : pos + _BLOCK]
            if len(block) < _BLOCK:
                raise ValueError("cutout: truncated FITS header")
            for k in range(0, _BLOCK, _CARD):
                card = block[k : k + _CARD]
                key = card[:8].decode("ascii", "replace").strip()
                if key == "END":
                    done = True
                    break
                if card[8:10] == b"= ":
                    header[key] = card[10:].decode("ascii", "replace").split("/", 1)[0].strip()
                    if key in _STRUCTURAL:
                        cards.append((pos + k, bytes(card)))
            pos += _BLOCK
        bitpix = int(header.get("BITPIX", "8"))
        naxis = int(header.get("NAXIS", "0"))
        dims = [int(header.get(f"NAXIS{i}", "0")) for i in range(1, naxis + 1)]
        nbytes = abs(bitpix) // 8 * (int(np.prod(dims)) if dims else 0)
        if naxis == 2 and nbytes:
            if bitpix not in _DTYPES:
                raise ValueError(f"cutout: unsupported FITS BITPIX {bitpix}")
            keywords = b"".join(data[k : k + 8] for k in range(0, pos, _CARD))
            return _Layout(
                pos,
                (dims[1], dims[0]),
                _DTYPES[bitpix],
                float(header.get("BSCALE", "1")),
                float(header.get("BZERO", "0")),
                keywords,
                tuple(cards),
            )
        pos += -(-nbytes // _BLOCK) * _BLOCK
    raise ValueError("cutout: no 2-D image in this FITS file")


def _windows(raw: np.ndarray, shape: tuple[int, ...], strides: tuple[int, ...]) -> np.ndarray:
    """A read-only view with one window of ``shape`` (byte ``strides``) per start position in
    ``raw``; only starts whose window fits inside ``raw`` exist."""
    extent = 1 + sum((n - 1) * st for n, st in zip(shape, strides, strict=True))
    count = max(len(raw) - extent + 1, 0)
    return as_strided(raw, (count, *shape), (1, *strides), writeable=False)


def per_cutout(
    arr: pa.Array,
    stat: Callable[[np.ndarray], tuple[np.ndarray, ...]],
    k: int,
    half: int | None = None,
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """``stat`` on every cutout of a binary column, as stacks: ``k`` float arrays (one value
    per alert) and the null mask (no cutout).

    Cutouts are grouped by layout: the first unprocessed cutout's header is read (Python, once
    per layout), every cutout whose keywords and structural cards are byte-for-byte the same
    is matched with one vectorized comparison, and their pixels are gathered into one
    ``(m, rows, cols)`` stack. The loop runs once per distinct layout (a handful of cutout
    sizes per visit), never once per alert. ``half`` keeps the central (2*half+1)² square, as
    ``Image.box(half)``.
    """
    n = len(arr)
    out = tuple(np.full(n, np.nan) for _ in range(k))
    null = np.asarray(arr.is_null()) if arr.null_count else np.zeros(n, bool)
    if n == 0:
        return out, null
    if not (pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)):
        raise TypeError("cutout helpers take a cutout column such as 'cutoutDifference'")
    otype = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
    bufs = arr.buffers()
    off = np.frombuffer(bufs[1], otype, n + 1, arr.offset * np.dtype(otype).itemsize).astype(
        np.int64
    )
    raw = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    lengths = np.diff(off)
    todo = ~null & (lengths > 0)
    null = null | (lengths == 0)
    while todo.any():
        first = int(np.flatnonzero(todo)[0])
        lay = fits_layout(raw[off[first] : off[first + 1]].tobytes())
        rows = np.flatnonzero(todo)
        rows = rows[lengths[rows] >= lay.data_end]
        # Read-only strided windows on the byte buffer, one per possible start; indexing them
        # with the cutouts' offsets copies only what is compared or measured.
        ncards = lay.data_start // _CARD
        keys = _windows(raw, (ncards, 8), (_CARD, 1))[off[rows]]  # (m, cards, 8)
        same = (keys == np.frombuffer(lay.keywords, np.uint8).reshape(-1, 8)).all(axis=(1, 2))
        for at, card in lay.cards:
            same &= (
                _windows(raw, (_CARD,), (1,))[off[rows] + at] == np.frombuffer(card, np.uint8)
            ).all(axis=1)
        rows = rows[same]
        if first not in rows:  # pragma: no cover - the template always matches itself
            raise ValueError("cutout: inconsistent FITS header")
        # Only the central (2*half+1)² square is gathered and converted, as Image.box(half).
        (nr, nc), size = lay.shape, np.dtype(lay.dtype).itemsize
        r0 = c0 = 0
        if half is not None:
            r0, c0 = max(nr // 2 - half, 0), max(nc // 2 - half, 0)
            nr, nc = min(nr // 2 + half + 1, nr) - r0, min(nc // 2 + half + 1, nc) - c0
        start = lay.data_start + (r0 * lay.shape[1] + c0) * size
        pix = _windows(raw, (nr, nc * size), (lay.shape[1] * size, 1))[off[rows] + start]
        stack = np.ascontiguousarray(pix).view(lay.dtype).astype(np.float64)
        if (lay.scale, lay.zero) != (1.0, 0.0):
            stack = stack * lay.scale + lay.zero
        for dst, values in zip(out, stat(stack), strict=True):
            dst[rows] = values
        todo[rows] = False
    return out, null
