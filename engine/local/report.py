"""``minibroker test --report``: one self-contained HTML page about a filter's run over a night.

The page holds pass counts and evaluation times per visit, a sky map of the matches, for the
first matches their lightcurves and cutouts, and the warnings a reviewer would raise (too many
matches, too slow, faults, columns so often null that they swallow alerts).

Everything is inline so the page opens offline and can be attached to a ticket: plots are SVG
drawn here, cutouts are PNG data URIs from a small encoder (zlib + struct, no imaging library),
styles sit in one ``<style>`` block, and there is no script at all (a Content-Security-Policy
forbids any). Text from the filter or the packets is HTML-escaped.

Null counts come from the trusted engine, not from the filter: pass a :class:`NullCounts` to
``engine.local.localtest.test_filter(report=...)`` and it counts, on each decoded visit, how often the
columns the filter reads are missing.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine import __version__
from engine.alerts.fields import AB_ZERO_POINT_NJY
from engine.alerts.schema import leaf_paths
from engine.config import Config
from engine.errors import ConfigError

if TYPE_CHECKING:
    from engine.decode import VisitBatch
    from engine.local.localtest import TestResult
    from sandbox import CompiledFilter

__all__ = ["Finding", "NullCounts", "encode_png", "findings", "nothing_passed", "write_report"]

#: The service is sized for about this many matches per filter per alert (20 per 10,000).
DESIGN_RATE = 20 / 10_000
#: A read column missing in at least this fraction of the night's alerts gets a warning.
NULL_WARN_FRACTION = 0.5
#: ``Config.budget_s`` is per visit of this many alerts; smaller visits get a scaled budget.
BUDGET_ALERTS = 10_000

# Rubin's colour-blind-friendly band palette for white backgrounds (RTN-045), and one marker
# shape per band so that colour is never the only cue.
BAND_COLOURS = {
    "u": "#1600ea",
    "g": "#31de1f",
    "r": "#b52626",
    "i": "#370201",
    "z": "#ba52ff",
    "y": "#61a2b3",
}
_BAND_MARKERS = {
    "u": "circle",
    "g": "up",
    "r": "down",
    "i": "square",
    "z": "diamond",
    "y": "hexagon",
}
_OTHER_COLOUR = "#777777"
_CUTOUTS = (
    ("cutoutScience", "science"),
    ("cutoutTemplate", "template"),
    ("cutoutDifference", "difference"),
)


# --------------------------------------------------------------------------- null counts


class NullCounts:
    """How often each column a filter reads is missing, accumulated visit by visit.

    A value is missing when it is null, NaN, or inside a null struct; for a lightcurve column
    (``prvDiaSources.psfFlux``) an alert counts as missing when it has no non-null point, since
    then every reduction of it is null. Comparisons with a missing value are False, so a filter
    that requires such a column cannot pass those alerts.

    Attributes
    ----------
    alerts : int
        Alerts counted so far.
    missing : dict[str, int]
        Per dotted column path, the alerts in which it was missing.
    dynamic : bool
        True when the filter reaches columns dynamically, so which it reads is unknown.
    values : dict[str, set]
        Per scalar column path (not lightcurves), up to two distinct non-null values seen: one
        value means the column is constant over the night (``ssObjectId`` 0 when no alert is of a
        known solar-system object), which explains a cut that passes nothing.
    """

    def __init__(self) -> None:
        self.alerts = 0
        self.missing: dict[str, int] = {}
        self.values: dict[str, set[object]] = {}
        self.dynamic = False
        self._paths: dict[int, frozenset[str]] = {}

    def observe(self, visit: VisitBatch, compiled: CompiledFilter) -> None:
        """Count the missing values of ``compiled``'s columns in one decoded visit."""
        sid = visit.schema.schema_id
        if sid not in self._paths:
            self._paths[sid] = frozenset(leaf_paths(visit.schema.arrow))
        reads = compiled.reads(self._paths[sid])
        if reads is None:
            self.dynamic = True
            return
        batch = visit.batch
        for path in sorted(reads):
            top, *rest = path.split(".")
            if top not in batch.schema.names:  # projected away: nothing read it
                continue
            n = int(_missing(batch.column(top), rest).sum())
            self.missing[path] = self.missing.get(path, 0) + n
            seen = self.values.setdefault(path, set())
            if len(seen) < 2:
                seen.update(_distinct(batch.column(top), rest, 2))
        self.alerts += len(visit)

    def fractions(self) -> dict[str, float]:
        """Missing fraction per column path, most-missing first."""
        if not self.alerts:
            return {}
        return dict(
            sorted(
                ((p, n / self.alerts) for p, n in self.missing.items()),
                key=lambda kv: (-kv[1], kv[0]),
            )
        )


def _distinct(column: pa.Array, parts: Sequence[str], most: int) -> set[object]:
    """Up to ``most`` distinct non-null values of a scalar leaf (none for lightcurves)."""
    arr = column
    for part in parts:
        if not pa.types.is_struct(arr.type):
            return set()
        arr = arr.field(part)
    if (
        pa.types.is_nested(arr.type)
        or pa.types.is_binary(arr.type)
        or pa.types.is_large_binary(arr.type)
    ):
        return set()
    return set(pc.unique(arr.drop_null()).slice(0, most).to_pylist())


def _missing(column: pa.Array, parts: Sequence[str]) -> np.ndarray:
    """Per row, whether the leaf at ``parts`` below ``column`` has no usable value."""
    n = len(column)
    arr, rows, ok = column, np.arange(n), np.ones(n, dtype=bool)
    parts = list(parts)
    while True:
        ok &= arr.is_valid().to_numpy(zero_copy_only=False)
        kind = arr.type
        if pa.types.is_list(kind) or pa.types.is_large_list(kind):
            # Step into the points; each remembers its alert, points of null lists are dropped.
            offsets = arr.offsets.to_numpy()
            lengths = np.diff(offsets)
            keep = np.repeat(ok, lengths)
            rows = np.repeat(rows, lengths)[keep]
            arr = arr.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0])).filter(
                pa.array(keep)
            )
            ok = np.ones(len(arr), dtype=bool)
        elif pa.types.is_struct(kind) and parts:
            arr = arr.field(parts.pop(0))  # the struct's own nulls are already in ``ok``
        else:
            break
    if pa.types.is_floating(arr.type):
        ok &= ~np.isnan(arr.fill_null(0).to_numpy(zero_copy_only=False))
    has = np.zeros(n, dtype=bool)
    has[rows[ok]] = True
    return ~has


# --------------------------------------------------------------------------- warnings


@dataclass(frozen=True)
class Finding:
    """One warning shown on the report.

    Attributes
    ----------
    kind : str
        ``"nothing"`` (no alert passed), ``"matches"`` (above the design rate), ``"cap"``
        (above the per-visit cap), ``"slow"``, ``"fault"`` or ``"nulls"``.
    message : str
        What was seen, where, and what to do about it (plain text).
    """

    kind: str
    message: str


def findings(result: TestResult, config: Config | None = None) -> list[Finding]:
    """The warnings a reviewer would raise about a filter's run over a night.

    Parameters
    ----------
    result : TestResult
        What ``test_filter`` returned.
    config : Config, optional
        Supplies the match cap and the time budget; the defaults when omitted.

    Returns
    -------
    list of Finding
        At most one finding per kind and faulty message, most serious first.
    """
    config = config or Config()
    visits = result.report.visits
    out: list[Finding] = []

    def passed(v: Any) -> int:
        return sum(v.passed.values())

    nothing = nothing_passed(result)
    if nothing is not None:
        out.append(nothing)

    faults: dict[str, list[int]] = {}
    for v in visits:
        for message in v.faults.values():
            faults.setdefault(message, []).append(v.visit)
    for message, where in faults.items():
        out.append(
            Finding(
                "fault",
                f"the filter failed in {_count(len(where), 'visit')} "
                f"({_some(where)}): {message}; those visits deliver nothing",
            )
        )

    cap = config.max_matches_per_visit
    capped = [v for v in visits if passed(v) > cap]
    if capped:
        worst = max(capped, key=passed)
        out.append(
            Finding(
                "cap",
                f"{_count(len(capped), 'visit')} passed more than the cap of {cap} matches "
                f"per visit (visit {worst.visit}: {passed(worst)}); the service delivers only "
                f"the {cap} most reliable of each and counts the rest as withheld, so tighten the cuts",
            )
        )

    busy = [v for v in visits if v.alerts and passed(v) > DESIGN_RATE * v.alerts]
    if busy:
        worst = max(busy, key=lambda v: passed(v) / v.alerts)
        rate = passed(worst) / worst.alerts * 10_000
        out.append(
            Finding(
                "matches",
                f"{_count(len(busy), 'visit')} of {len(visits)} passed more than the "
                f"service's design figure of ~20 matches per 10,000 alerts (visit {worst.visit}: "
                f"{passed(worst)} of {worst.alerts}, {rate:,.0f} per 10,000); a filter this "
                f"loose floods its subscribers: add cuts on S/N, reliability or history",
            )
        )

    def budget(v: Any) -> float:
        return config.budget_s * v.alerts / BUDGET_ALERTS

    # The first visit pays one-off warm-up (imports, first-call setup: ~25 ms here), which on a
    # small sample night alone can exceed the scaled budget; judge it only when it is all we have.
    judged = visits[1:] if len(visits) > 1 else visits
    slow = [v for v in judged if v.alerts and v.evaluate_s > budget(v)]
    if slow:
        worst = max(slow, key=lambda v: v.evaluate_s / budget(v))
        out.append(
            Finding(
                "slow",
                f"{_count(len(slow), 'visit')} of {len(judged)} took longer to evaluate than the budget of "
                f"{config.budget_s:g} s per {BUDGET_ALERTS:,} alerts (visit {worst.visit}: "
                f"{worst.evaluate_s * 1000:.1f} ms for {worst.alerts} alerts, budget "
                f"{budget(worst) * 1000:.1f} ms); in the service an overrunning filter is "
                f"stopped and the visit counts as a fault: vectorize loops, reduce lightcurves once",
            )
        )

    if isinstance(result.nulls, NullCounts):
        # Columns of one record or list missing equally often share a cause (a null diaObject,
        # no history): one finding names them all.
        causes: dict[tuple[str, int], list[str]] = {}
        for path, frac in result.nulls.fractions().items():
            if frac >= NULL_WARN_FRACTION:
                causes.setdefault((path.split(".")[0], result.nulls.missing[path]), []).append(path)
        for (_, n), paths in causes.items():
            what = paths[0] if len(paths) == 1 else _brace(paths)
            out.append(
                Finding(
                    "nulls",
                    f"{what} {'is' if len(paths) == 1 else 'are'} missing in "
                    f"{n / result.nulls.alerts:.0%} of the night's alerts ({n:,} of "
                    f"{result.nulls.alerts:,}); a comparison with a null is False, so a cut "
                    f"that needs a value rejects all of those alerts. Fine if you meant it "
                    f"(e.g. isnull(...)); otherwise use fill() or guard with notnull()",
                )
            )
    return out


def nothing_passed(result: TestResult) -> Finding | None:
    """A finding when the filter ran without fault yet passed no alert, naming the columns it
    reads whose values explain it: never null (a null test on them is always False), always
    null (every comparison with them is False), or one value all night."""
    rep = result.report
    if not rep.visits or any(sum(v.passed.values()) for v in rep.visits):
        return None
    if all(v.faults for v in rep.visits):
        return None  # the faults say why
    msg = f"the filter passed none of the night's {rep.alerts:,} alerts"
    nulls = result.nulls
    if not isinstance(nulls, NullCounts) or not nulls.alerts:
        return Finding(
            "nothing",
            msg + "; loosen its cuts one at a time to find the one that rejects everything",
        )
    null_tested = _null_tested(result.filter.source)
    reasons = []
    for path in sorted(nulls.missing):
        seen = nulls.values.get(path, set())
        one = f" and always {next(iter(seen))!r}" if len(seen) == 1 else ""
        if nulls.missing[path] == 0 and path.rsplit(".", 1)[-1] in null_tested:
            reasons.append(
                f"{path} is never null{one} (isnull() on it is always False"
                + (
                    "; ssObjectId is 0, not null, when no solar-system object is associated"
                    if path.endswith("ssObjectId")
                    else ""
                )
                + ")"
            )
        elif nulls.missing[path] == nulls.alerts:
            reasons.append(f"{path} is always null (every comparison with it is False)")
        elif len(seen) == 1:
            reasons.append(f"{path} is always {next(iter(seen))!r} where not null")
    if not reasons:
        return Finding(
            "nothing",
            msg + "; no column it reads is always null, never null or constant "
            "here, so loosen its cuts one at a time to find the one that rejects everything",
        )
    return Finding("nothing", f"{msg}; of the columns it reads, " + "; ".join(reasons))


def _null_tested(source: str) -> set[str]:
    """Names inside ``isnull(...)``/``notnull(...)`` calls or before ``.isnull()``/``.notnull()``
    (the source passed the policy already; it is only parsed, never run, here)."""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("isnull", "notnull"):
            inner: list[ast.AST] = list(node.args)
        elif isinstance(func, ast.Attribute) and func.attr in ("isnull", "notnull"):
            inner = [func.value]
        else:
            continue
        for arg in inner:
            for sub in ast.walk(arg):
                if isinstance(sub, ast.Attribute):
                    names.add(sub.attr)
                elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    names.add(sub.value.rsplit(".", 1)[-1])
    return names


def _brace(paths: Sequence[str]) -> str:
    """``a.{b, c}`` for paths sharing their first part (all do here)."""
    head = paths[0].split(".")[0]
    return f"{head}.{{{', '.join(p.split('.', 1)[-1] for p in sorted(paths))}}}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _some(items: Sequence[int], limit: int = 3) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


# --------------------------------------------------------------------------- PNG cutouts


def encode_png(pixels: np.ndarray) -> bytes:
    """Encode a 2-D ``uint8`` array as an 8-bit greyscale PNG (row 0 at the top).

    Parameters
    ----------
    pixels : numpy.ndarray
        Shape ``(rows, columns)``, dtype ``uint8``.

    Returns
    -------
    bytes
        A complete PNG file: signature, IHDR, one zlib-compressed IDAT, IEND.
    """
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError(f"encode_png takes a 2-D uint8 array, got {pixels.ndim}-D {pixels.dtype}")
    height, width = pixels.shape
    # Every scanline starts with its filter type; 0 (None) is enough for 30x30 cutouts.
    raw = np.hstack([np.zeros((height, 1), np.uint8), pixels]).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit, greyscale, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def _stretch(image: np.ndarray, softening: float = 8.0) -> np.ndarray:
    """Map pixel values to 0..255 with an asinh stretch between zscale-like limits.

    The floor sits a little below the sky (median - 2 robust sigma) so noise stays visible but
    dark; the ceiling is the 99.5th percentile so one hot pixel cannot wash the source out.
    """
    finite = image[np.isfinite(image)]
    if not finite.size:
        return np.zeros(image.shape, np.uint8)
    median = float(np.median(finite))
    sigma = 1.4826 * float(np.median(np.abs(finite - median)))
    lo = max(median - 2 * sigma, float(finite.min()))
    hi = float(np.percentile(finite, 99.5))
    if hi <= lo:
        hi = lo + 1.0
    with np.errstate(invalid="ignore"):
        x = np.clip((image - lo) / (hi - lo), 0.0, 1.0)
    x = np.nan_to_num(x, nan=0.0)
    y = np.arcsinh(softening * x) / np.arcsinh(softening)
    return np.round(y * 255).astype(np.uint8)


def _fits_image(data: bytes, label: str) -> np.ndarray:
    """The first 2-D image of a FITS cutout, with astropy (trusted code: the sandbox keeps its
    own small reader so that filters never reach astropy)."""
    import warnings

    from astropy.io import fits

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # header cards astropy would fix up are fine here
            with fits.open(io.BytesIO(data), memmap=False) as hdus:
                for hdu in hdus:
                    if hdu.data is not None and hdu.data.ndim == 2:
                        return np.asarray(hdu.data, dtype=np.float64)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{label}: not a readable FITS file ({exc})") from None
    raise ValueError(f"{label}: no 2-D image in this FITS file")


def _cutout_html(data: bytes | None, label: str) -> str:
    if not data:
        return f'<figure class="cutout-fig"><div class="no-cutout">no {label} cutout</div><figcaption>{label}</figcaption></figure>'
    try:
        image = _fits_image(bytes(data), label)
    except ValueError as exc:
        return f'<figure class="cutout-fig"><div class="no-cutout">{_e(exc)}</div><figcaption>{label}</figcaption></figure>'
    rows, cols = image.shape
    # FITS puts row 0 at the bottom; flip so the picture looks as in ds9.
    png = encode_png(_stretch(image)[::-1])
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return (
        f'<figure class="cutout-fig"><img class="cutout" data-kind="{label}" data-rows="{rows}" '
        f'data-cols="{cols}" src="{uri}" alt="{label} cutout, {rows}x{cols} pixels" '
        f'width="132" height="{round(132 * rows / cols)}">'
        f'<figcaption>{label} <span class="dim">{rows}×{cols}</span></figcaption></figure>'
    )


# --------------------------------------------------------------------------- SVG helpers


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _nice_step(span: float, target: int) -> float:
    raw = span / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _ticks(lo: float, hi: float, target: int = 5) -> tuple[list[float], float]:
    """Round tick values within ``[lo, hi]`` (either order) and their step."""
    lo, hi = min(lo, hi), max(lo, hi)
    step = _nice_step(hi - lo, target) if hi > lo else 1.0
    first = math.ceil(lo / step - 1e-9) * step
    count = int(math.floor((hi - first) / step + 1e-9)) + 1
    return [first + i * step for i in range(max(count, 0))], step


def _fmt(value: float, step: float, *, group: bool = True) -> str:
    """A tick label with as many decimals as the step needs (``group``: thousands separators)."""
    power = math.floor(math.log10(step) + 1e-9)
    decimals = max(0, -power + (1 if round(step / 10**power, 3) == 2.5 else 0))
    text = f"{value:{',' if group else ''}.{decimals}f}"
    return "0" if text.strip("-0.,") == "" else text


def _pad(lo: float, hi: float, frac: float = 0.06, minimum: float = 1.0) -> tuple[float, float]:
    if hi - lo <= 0:
        return lo - minimum / 2, hi + minimum / 2
    d = (hi - lo) * frac
    return lo - d, hi + d


@dataclass(frozen=True)
class _Frame:
    """A plot box: data limits ``x0..x1``, ``y0..y1`` mapped onto pixels (y data grows upwards)."""

    x0: float
    x1: float
    y0: float
    y1: float
    left: float
    top: float
    width: float
    height: float

    def x(self, v: float) -> float:
        return self.left + (v - self.x0) / (self.x1 - self.x0) * self.width

    def y(self, v: float) -> float:
        return self.top + self.height - (v - self.y0) / (self.y1 - self.y0) * self.height


def _axes(
    fr: _Frame,
    xlabel: str,
    ylabel: str,
    *,
    xticks: int = 6,
    yticks: int = 5,
    xlabels: Any = None,
    xlabel_gap: float = 34,
) -> list[str]:
    """Frame, grid, tick labels and axis labels.

    ``xticks=0`` leaves the x ticks to the caller; ``xlabels(value, step)`` gives a tick's text.
    """
    out = [
        f'<rect x="{fr.left:.1f}" y="{fr.top:.1f}" width="{fr.width:.1f}" height="{fr.height:.1f}" class="plotbg"/>'
    ]
    xs, xstep = _ticks(fr.x0, fr.x1, xticks) if xticks else ([], 1.0)
    for v in xs:
        px = fr.x(v)
        out.append(
            f'<line x1="{px:.1f}" y1="{fr.top:.1f}" x2="{px:.1f}" y2="{fr.top + fr.height:.1f}" class="grid"/>'
        )
        text = xlabels(v, xstep) if xlabels else _fmt(v, xstep)
        out.append(
            f'<text x="{px:.1f}" y="{fr.top + fr.height + 15:.1f}" class="tick" text-anchor="middle">{_e(text)}</text>'
        )
    ys, ystep = _ticks(fr.y0, fr.y1, yticks)
    for v in ys:
        py = fr.y(v)
        out.append(
            f'<line x1="{fr.left:.1f}" y1="{py:.1f}" x2="{fr.left + fr.width:.1f}" y2="{py:.1f}" class="grid"/>'
        )
        out.append(
            f'<text x="{fr.left - 6:.1f}" y="{py + 4:.1f}" class="tick" text-anchor="end">{_e(_fmt(v, ystep))}</text>'
        )
    out.append(
        f'<rect x="{fr.left:.1f}" y="{fr.top:.1f}" width="{fr.width:.1f}" height="{fr.height:.1f}" class="frame"/>'
    )
    out.append(
        f'<text x="{fr.left + fr.width / 2:.1f}" y="{fr.top + fr.height + xlabel_gap:.1f}" class="axlabel" text-anchor="middle">{_e(xlabel)}</text>'
    )
    cy = fr.top + fr.height / 2
    out.append(
        f'<text x="14" y="{cy:.1f}" class="axlabel" text-anchor="middle" transform="rotate(-90 14 {cy:.1f})">{_e(ylabel)}</text>'
    )
    return out


def _svg(width: int, height: int, body: Iterable[str], *, cls: str, label: str) -> str:
    return (
        f'<svg class="{cls}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{_e(label)}">'
        f"<title>{_e(label)}</title>" + "".join(body) + "</svg>"
    )


def _marker(
    shape: str, x: float, y: float, r: float, fill: str, stroke: str, extra: str = "", tip: str = ""
) -> str:
    """One marker of ``shape`` centred on (x, y); ``tip`` becomes its hover text."""
    inner = f"<title>{_e(tip)}</title>" if tip else ""
    paint = f'fill="{fill}" stroke="{stroke}"{extra}'
    if shape == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" {paint}>{inner}</circle>'
    if shape == "square":
        s = r * 0.9
        return f'<rect x="{x - s:.1f}" y="{y - s:.1f}" width="{2 * s:.1f}" height="{2 * s:.1f}" {paint}>{inner}</rect>'
    corners = {
        "up": [(0, -1.25), (1.1, 0.7), (-1.1, 0.7)],
        "down": [(0, 1.25), (1.1, -0.7), (-1.1, -0.7)],
        "diamond": [(0, -1.3), (1.0, 0), (0, 1.3), (-1.0, 0)],
        "hexagon": [
            (math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, 7)[:-1] + math.pi / 6
        ],
        "star": [
            (
                (1.5 if k % 2 == 0 else 0.6) * math.sin(k * math.pi / 5),
                -(1.5 if k % 2 == 0 else 0.6) * math.cos(k * math.pi / 5),
            )
            for k in range(10)
        ],
    }[shape]
    pts = " ".join(f"{x + dx * r:.1f},{y + dy * r:.1f}" for dx, dy in corners)
    return f'<polygon points="{pts}" {paint}>{inner}</polygon>'


# --------------------------------------------------------------------------- plots


def _bars_svg(
    visits: Sequence[Any],
    values: Sequence[float],
    *,
    title: str,
    ylabel: str,
    reference: Sequence[float] | None,
    ref_label: str,
    cap: float | None = None,
    unit: str = "",
) -> str:
    """A bar per visit, a dashed per-visit reference (design rate, budget) and an optional cap."""
    width, height = 1000, 250
    top_value = max([*values, *(reference or []), 1e-9])
    if cap is not None and cap <= 1.5 * top_value:
        top_value = max(top_value, cap)
    fr = _Frame(0, len(values), 0, top_value * 1.12, 64, 30, width - 84, height - 100)
    ids = [str(v.visit) for v in visits]
    every = max(1, math.ceil(len(ids) / 24))  # keep visit labels legible on long nights
    body = [f'<text x="{fr.left}" y="18" class="ptitle">{_e(title)}</text>']
    body += _axes(
        fr, "visit", ylabel, xticks=0, xlabel_gap=height - 6 - fr.top - fr.height
    )  # ticks: visit ids
    slot = fr.width / max(len(values), 1)
    for i, (vid, value) in enumerate(zip(ids, values, strict=True)):
        x = fr.x(i) + slot * 0.15
        over = reference is not None and value > reference[i]
        y = fr.y(value)
        body.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" height="{fr.y(0) - y:.1f}" '
            f'class="{"bar over" if over else "bar"}"><title>visit {_e(vid)}: {value:,.{1 if unit else 0}f}{_e(unit)}</title></rect>'
        )
        if i % every == 0:
            lx, ly = fr.x(i + 0.5), fr.top + fr.height + 12
            body.append(
                f'<text x="{lx:.1f}" y="{ly:.1f}" class="tick" text-anchor="end" '
                f'transform="rotate(-35 {lx:.1f} {ly:.1f})">{_e(vid)}</text>'
            )
    if reference is not None:
        steps = " ".join(
            f"M{fr.x(i):.1f},{fr.y(r):.1f} H{fr.x(i + 1):.1f}" for i, r in enumerate(reference)
        )
        body.append(f'<path d="{steps}" class="refline"/>')
        body.append(
            f'<text x="{fr.left + fr.width - 4:.1f}" y="{fr.top - 6:.1f}" class="legend" text-anchor="end">'
            f'<tspan class="refkey">- - -</tspan> {_e(ref_label)}</text>'
        )
    if cap is not None and cap <= fr.y1:
        body.append(
            f'<line x1="{fr.left:.1f}" x2="{fr.left + fr.width:.1f}" y1="{fr.y(cap):.1f}" y2="{fr.y(cap):.1f}" class="capline"/>'
        )
        body.append(
            f'<text x="{fr.left + 6:.1f}" y="{fr.y(cap) - 5:.1f}" class="legend caplabel">cap: {cap:,.0f} per visit</text>'
        )
    return _svg(width, height, body, cls="chart", label=title)


def _mollweide(ra: np.ndarray, dec: np.ndarray, ra0: float) -> tuple[np.ndarray, np.ndarray]:
    """Mollweide x, y (x in [-2√2, 2√2]), RA increasing to the left around ``ra0``."""
    lam = -np.radians((ra - ra0 + 180.0) % 360.0 - 180.0)
    phi = np.radians(dec)
    theta = phi.copy()
    for _ in range(30):  # Newton on 2θ + sin 2θ = π sin φ; converges in a handful of steps
        denom = 2 + 2 * np.cos(2 * theta)
        safe = denom > 1e-9
        theta = np.where(
            safe,
            theta
            - (2 * theta + np.sin(2 * theta) - np.pi * np.sin(phi)) / np.where(safe, denom, 1),
            theta,
        )
    return 2 * math.sqrt(2) / math.pi * lam * np.cos(theta), math.sqrt(2) * np.sin(theta)


def _wrap(ra: np.ndarray | float, ra0: float) -> Any:
    """RA offset from ``ra0`` in (-180, 180] degrees."""
    return (np.asarray(ra) - ra0 + 180.0) % 360.0 - 180.0


def _fields(
    ra: np.ndarray, dec: np.ndarray, radius: float = 8.0, limit: int = 5
) -> list[np.ndarray]:
    """Group positions into fields: each within ``radius`` degrees of its first point.

    Returns at most ``limit + 1`` groups (more means "scattered"; the caller then maps only).
    """
    left = np.arange(len(ra))
    groups: list[np.ndarray] = []
    while len(left) and len(groups) <= limit:
        a, d = ra[left[0]], dec[left[0]]
        near = (np.abs(dec[left] - d) <= radius) & (
            np.abs(_wrap(ra[left], a)) * math.cos(math.radians(d)) <= radius
        )
        groups.append(left[near])
        left = left[~near]
    return groups


def _sky_svg(
    positions: Sequence[tuple[float, float]], firsts: Sequence[tuple[float, float]]
) -> str:
    """Matches on the sky: a zoomed RA/Dec plot of one field, or an all-sky Mollweide map with a
    zoomed panel per field when the matches fall in a few fields."""
    if not positions:
        return '<p class="empty">No matches, so nothing to map.</p>'
    ra = np.array([p[0] for p in positions], dtype=float)
    dec = np.array([p[1] for p in positions], dtype=float)
    groups = _fields(ra, dec)
    if len(groups) == 1:
        return _zoom_svg(ra, dec, list(enumerate(firsts, 1)), size=560)
    parts = [_mollweide_svg(ra, dec, firsts, numbered=len(groups) > 4)]
    if len(groups) <= 4:
        # Each numbered first match goes to the panel of the field it lies in.
        numbered = list(enumerate(firsts, 1))
        panels = []
        for g in groups:
            a0, d0 = float(ra[g[0]]), float(dec[g[0]])
            mine = [
                (i, (a, d))
                for i, (a, d) in numbered
                if abs(d - d0) <= 8.0
                and abs(float(_wrap(a, a0))) * math.cos(math.radians(d0)) <= 8.0
            ]
            panels.append(_zoom_svg(ra[g], dec[g], mine, size=250))
        parts.append('<div class="panels">' + "".join(panels) + "</div>")
    return "".join(parts)


def _zoom_svg(
    ra: np.ndarray, dec: np.ndarray, firsts: Sequence[tuple[int, tuple[float, float]]], size: int
) -> str:
    """RA/Dec around one field, equal angular scale on both axes, RA increasing to the left."""
    # Centre on the circular mean RA so a field straddling RA 0 stays in one piece.
    ra0 = (
        math.degrees(math.atan2(np.sin(np.radians(ra)).mean(), np.cos(np.radians(ra)).mean())) % 360
    )
    dra = _wrap(ra, ra0)
    dec0 = float((dec.min() + dec.max()) / 2)
    cosd = max(math.cos(math.radians(dec0)), 0.05)
    half = max(float(np.ptp(dra)) * cosd, float(np.ptp(dec)), 0.02) / 2 * 1.15
    mid = float((dra.min() + dra.max()) / 2)
    fr = _Frame(mid + half / cosd, mid - half / cosd, dec0 - half, dec0 + half, 70, 30, size, size)
    ticks = 6 if size > 400 else 4
    body = _axes(
        fr,
        "RA (deg, east left)",
        "Dec (deg)",
        xticks=ticks,
        yticks=ticks,
        xlabels=lambda v, step: _fmt((ra0 + v) % 360, step),
    )
    dots = "".join(
        f'<circle cx="{fr.x(a):.1f}" cy="{fr.y(d):.1f}" r="2.2"/>'
        for a, d in zip(dra, dec, strict=True)
    )
    body.append(f'<g class="sky-points">{dots}</g>')
    for i, (a, d) in firsts:
        x, y = fr.x(float(_wrap(a, ra0))), fr.y(d)
        body.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5.5" class="first"/>'
            f'<text x="{x + 7:.1f}" y="{y - 6:.1f}" class="firstlabel">{i}</text>'
        )
    title = f"{len(ra):,} matches around RA {ra0:.2f}°, Dec {dec0:+.2f}°"
    body.append(f'<text x="{fr.left}" y="18" class="ptitle">{_e(title)}</text>')
    return _svg(size + 90, size + 76, body, cls="skymap zoom", label=title)


def _mollweide_svg(
    ra: np.ndarray, dec: np.ndarray, firsts: Sequence[tuple[float, float]], *, numbered: bool
) -> str:
    """All-sky map; ``numbered`` labels the first matches (else the zoomed panels do)."""
    scale, cx, cy = 160.0, 480.0, 250.0
    width, height = 960, 500

    def px(a: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y = _mollweide(np.asarray(a, float), np.asarray(d, float), 180.0)
        return cx + scale * x, cy - scale * y

    body = [
        f'<ellipse cx="{cx}" cy="{cy}" rx="{scale * 2 * math.sqrt(2):.1f}" ry="{scale * math.sqrt(2):.1f}" class="plotbg"/>'
    ]
    grid_dec = np.linspace(-90, 90, 91)
    for meridian in range(0, 360, 30):
        x, y = px(np.full_like(grid_dec, meridian + 1e-6), grid_dec)
        body.append(
            '<polyline class="grid" fill="none" points="'
            + " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(x, y, strict=True))
            + '"/>'
        )
        lx, ly = px(np.array([meridian + 1e-6]), np.array([0.0]))
        body.append(
            f'<text x="{lx[0]:.1f}" y="{ly[0] + 13:.1f}" class="tick" text-anchor="middle">{meridian}°</text>'
        )
    grid_ra = np.linspace(0.001, 359.999, 181)
    for parallel in range(-60, 90, 30):
        x, y = px(grid_ra, np.full_like(grid_ra, parallel))
        body.append(
            '<polyline class="grid" fill="none" points="'
            + " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(x, y, strict=True))
            + '"/>'
        )
        if parallel:
            lx, ly = px(np.array([179.999]), np.array([float(parallel)]))
            body.append(
                f'<text x="{lx[0] + 4:.1f}" y="{ly[0] - 3:.1f}" class="tick">{parallel:+d}°</text>'
            )
    body.append(
        f'<ellipse cx="{cx}" cy="{cy}" rx="{scale * 2 * math.sqrt(2):.1f}" ry="{scale * math.sqrt(2):.1f}" class="frame"/>'
    )
    x, y = px(ra, dec)
    body.append(
        '<g class="sky-points">'
        + "".join(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.5"/>' for a, b in zip(x, y, strict=True))
        + "</g>"
    )
    for i, (a, d) in enumerate(firsts, 1):
        fx, fy = px(np.array([a]), np.array([d]))
        body.append(f'<circle cx="{fx[0]:.1f}" cy="{fy[0]:.1f}" r="5.5" class="first"/>')
        if numbered:
            body.append(
                f'<text x="{fx[0] + 7:.1f}" y="{fy[0] - 6:.1f}" class="firstlabel">{i}</text>'
            )
    return _svg(
        width,
        height,
        body,
        cls="skymap",
        label=f"{len(ra):,} matches, Mollweide projection, RA increasing to the left",
    )


def _points(alert: dict[str, Any], key: str) -> list[tuple[float, float, float | None, str]]:
    out = []
    for p in alert.get(key) or ():
        t, f = p.get("midpointMjdTai"), p.get("psfFlux")
        if t is None or f is None or not math.isfinite(f):
            continue
        out.append((float(t), float(f), p.get("psfFluxErr"), str(p.get("band") or "?")))
    return out


def _lightcurve_svg(alert: dict[str, Any], index: int) -> str:
    """Flux against time per band: detections filled, forced photometry open, the trigger starred.

    Flux, not magnitude: difference-image fluxes are often negative and would have no magnitude.
    """
    ds = alert.get("diaSource") or {}
    detections, forced = _points(alert, "prvDiaSources"), _points(alert, "prvDiaForcedSources")
    trigger = _points({"x": [ds]}, "x")
    every = detections + forced + trigger
    width, height = 560, 270
    if not every:
        return f'<p class="empty lightcurve">alert #{index}: no flux measurements to plot</p>'
    ts = [p[0] for p in every]
    lows = [p[1] - (p[2] or 0) for p in every] + [0.0]
    highs = [p[1] + (p[2] or 0) for p in every] + [0.0]
    x0, x1 = _pad(min(ts), max(ts), 0.05, 2.0)
    y0, y1 = _pad(min(lows), max(highs), 0.08, 1.0)
    y1 += (y1 - y0) * 0.08  # room for the trigger's label
    fr = _Frame(x0, x1, y0, y1, 76, 28, width - 112, height - 78)
    body = _axes(
        fr,
        "time (MJD, TAI)",
        "psfFlux (nJy)",
        xticks=5,
        xlabels=lambda v, step: _fmt(v, step, group=False),
    )  # MJDs are written without commas
    body.append(
        f'<line x1="{fr.left:.1f}" x2="{fr.left + fr.width:.1f}" y1="{fr.y(0):.1f}" y2="{fr.y(0):.1f}" class="zero"/>'
    )
    for kind, pts, filled in (
        ("forced", forced, False),
        ("detection", detections, True),
        ("trigger", trigger, True),
    ):
        for t, f, err, band in pts:
            colour = BAND_COLOURS.get(band, _OTHER_COLOUR)
            x, y = fr.x(t), fr.y(f)
            if err and math.isfinite(err):
                body.append(
                    f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{fr.y(f - err):.1f}" y2="{fr.y(f + err):.1f}" stroke="{colour}" class="errbar"/>'
                )
            tip = f"{kind} {band}: MJD {t:.5f}, {f:,.1f} ± {err or 0:,.1f} nJy"
            if kind == "trigger":
                body.append(
                    _marker(
                        "star",
                        x,
                        y,
                        7.5,
                        colour,
                        "#000",
                        ' stroke-width="1.2" class="trigger"',
                        tip,
                    )
                )
                anchor = "end" if x > fr.left + fr.width * 0.8 else "start"
                dx = -11 if anchor == "end" else 11
                body.append(
                    f'<text x="{x + dx:.1f}" y="{y - 9:.1f}" class="triglabel" text-anchor="{anchor}">trigger ({_e(band)})</text>'
                )
            else:
                shape = _BAND_MARKERS.get(band, "circle")
                body.append(
                    _marker(
                        shape,
                        x,
                        y,
                        3.6,
                        colour if filled else "#fff",
                        colour,
                        ' stroke-width="1.3"',
                        tip,
                    )
                )
    bands = sorted({p[3] for p in every}, key=lambda b: "ugrizy".find(b) if b in "ugrizy" else 9)
    lx = fr.left
    for band in bands:
        colour = BAND_COLOURS.get(band, _OTHER_COLOUR)
        body.append(_marker(_BAND_MARKERS.get(band, "circle"), lx + 4, 14, 3.6, colour, colour))
        body.append(f'<text x="{lx + 11:.1f}" y="18" class="legend">{_e(band)}</text>')
        lx += 30
    body.append(
        f'<text x="{fr.left + fr.width:.1f}" y="18" class="legend" text-anchor="end">filled: detection · '
        f"open: forced photometry · ★ trigger</text>"
    )
    label = f"lightcurve of match {index}: {len(detections)} earlier detections, {len(forced)} forced points"
    return _svg(width, height, body, cls="lightcurve", label=label)


# --------------------------------------------------------------------------- the page


def _decode(body: bytes) -> dict[str, Any]:
    import fastavro

    from engine.alerts.schema import load_schema
    from engine.alerts.wire import unframe

    schema_id, datum = unframe(body)
    schema = load_schema(schema_id)
    record = fastavro.schemaless_reader(io.BytesIO(datum), schema.avro, schema.avro)
    assert isinstance(record, dict)  # an alert is a record
    return record


def _mag(flux: float | None) -> str:
    if flux is None or not flux > 0:
        return "no magnitude (flux ≤ 0)"
    return f"{AB_ZERO_POINT_NJY - 2.5 * math.log10(flux):.2f} mag (AB)"


def _cell(value: object) -> str:
    if isinstance(value, float):
        return _e(f"{value:.5f}")
    return "—" if value is None else _e(value)


def _match_card(i: int, head: dict[str, Any], body: bytes) -> str:
    try:
        alert = _decode(body)
    except Exception as exc:  # noqa: BLE001 - a bad packet should not lose the rest of the page
        return f'<article class="card" id="match-{i}"><h3>#{i}</h3><p class="empty">cannot decode this alert: {_e(exc)}</p></article>'
    ds = alert.get("diaSource") or {}
    facts = (
        f"visit {_e(head.get('visit'))} · band <b>{_e(ds.get('band'))}</b> · RA {_cell(ds.get('ra'))}° "
        f"Dec {_cell(ds.get('dec'))}° · S/N {_cell(ds.get('snr'))} · reliability {_cell(ds.get('reliability'))} · "
        f"{_e(_mag(ds.get('psfFlux')))}"
    )
    cutouts = "".join(_cutout_html(alert.get(key), label) for key, label in _CUTOUTS)
    return (
        f'<article class="card" id="match-{i}"><h3><span class="num">#{i}</span> diaSource '
        f'{_e(alert.get("diaSourceId"))}</h3><p class="facts">{facts}</p>'
        f'<div class="card-body">{_lightcurve_svg(alert, i)}<div class="cutouts">{cutouts}</div></div></article>'
    )


_KIND_TITLES = {
    "fault": "Faults",
    "cap": "Over the match cap",
    "matches": "Too many matches",
    "slow": "Slow",
    "nulls": "Nulls that swallow alerts",
    "nothing": "Nothing passed",
}

_CSS = """
:root{--ink:#1d2330;--dim:#5d6677;--line:#d9dee7;--bg:#f5f7fa;--accent:#0b5cad;--warn:#b35c00;--bad:#b3261e}
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--ink);background:var(--bg)}
header{background:#15202e;color:#eef2f7;padding:24px 32px 20px}
header .kicker{font-size:12px;letter-spacing:.08em;text-transform:uppercase;color:#9fb3c8}
header h1{margin:4px 0 6px;font-size:26px}
header .desc{white-space:pre-wrap;margin:0 0 12px;max-width:900px;color:#dbe4ee}
header dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0;font-size:13px}
header dt{color:#9fb3c8}header dd{margin:0;font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
main{max-width:1160px;margin:0 auto;padding:20px 32px 40px}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px;margin:0 0 8px}
.tile{background:#fff;border:1px solid var(--line);border-radius:8px;padding:10px 14px}
.tile .v{font-size:22px;font-weight:600}.tile .k{color:var(--dim);font-size:12px}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:16px 20px;margin:18px 0}
section h2{margin:0 0 10px;font-size:18px}
.finding{border-left:4px solid var(--warn);background:#fff6ea;padding:8px 12px;margin:8px 0;border-radius:0 6px 6px 0}
.finding.fault,.finding.cap{border-color:var(--bad);background:#fdeeed}
.finding b{display:block;font-size:12px;text-transform:uppercase;letter-spacing:.05em;color:var(--dim)}
.ok{border-left:4px solid #2e7d32;background:#edf7ee;padding:8px 12px;border-radius:0 6px 6px 0}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{color:var(--dim);font-weight:600}th:first-child,td:first-child{text-align:left}
td.l,th.l{text-align:left}
tr.flag td{background:#fff6ea}
.meter{display:inline-block;width:120px;height:8px;background:#e8ecf2;border-radius:4px;vertical-align:middle;margin-right:6px}
.meter i{display:block;height:8px;border-radius:4px;background:var(--accent)}
tr.flag .meter i{background:var(--warn)}
svg{max-width:100%;height:auto;font-family:inherit}
.plotbg{fill:#fbfcfe}.frame{fill:none;stroke:#8a94a6}.grid{stroke:#e3e7ee;stroke-width:1}
.tick{font-size:11px;fill:#5d6677}.axlabel{font-size:12px;fill:#1d2330}.ptitle{font-size:13px;font-weight:600;fill:#1d2330}
.legend{font-size:11px;fill:#5d6677}.bar{fill:#4a7fc1}.bar.over{fill:#d9822b}
.refline{stroke:#b3261e;stroke-width:1.5;stroke-dasharray:5 4;fill:none}.refkey{fill:#b3261e;font-weight:700}
.capline{stroke:#1d2330;stroke-width:1.2}.caplabel{fill:#1d2330}
.zero{stroke:#8a94a6;stroke-dasharray:3 3}.errbar{stroke-width:1.2}
.triglabel{font-size:11px;font-weight:600;fill:#1d2330;paint-order:stroke;stroke:#fff;stroke-width:3px}
.sky-points circle{fill:#4a7fc1;fill-opacity:.55}
.first{fill:none;stroke:#b3261e;stroke-width:1.6}.firstlabel{font-size:11px;font-weight:700;fill:#b3261e}
.cards{display:grid;gap:14px}
.panels{display:flex;flex-wrap:wrap;gap:8px}
.card{border:1px solid var(--line);border-radius:8px;padding:12px 14px}
.card h3{margin:0;font-size:15px;font-family:ui-monospace,Menlo,Consolas,monospace}
.card .num{color:var(--accent);font-family:inherit}
.facts{margin:2px 0 8px;color:var(--dim);font-size:13px}
.card-body{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.cutouts{display:flex;gap:10px}
.cutout-fig{margin:0;text-align:center;font-size:12px}
.cutout{image-rendering:pixelated;border:1px solid #8a94a6;background:#000;display:block}
.no-cutout{width:132px;height:132px;display:flex;align-items:center;justify-content:center;border:1px dashed var(--line);color:var(--dim)}
.dim{color:var(--dim)}.empty{color:var(--dim);font-style:italic}
details summary{cursor:pointer;color:var(--accent);margin:6px 0}
footer{color:var(--dim);font-size:12px;text-align:center;padding:0 0 30px}
"""


def _render(result: TestResult, night: Path | None, config: Config) -> str:
    f, rep = result.filter, result.report
    visits = rep.visits
    passed = [sum(v.passed.values()) for v in visits]
    total = sum(passed)
    eval_s = sum(v.evaluate_s for v in visits)
    warnings = findings(result, config)
    frac = f"{100 * total / rep.alerts:.2f}% of alerts" if rep.alerts else "no alerts"
    per10k = f"{eval_s / rep.alerts * BUDGET_ALERTS * 1000:,.1f} ms" if rep.alerts else "—"
    tiles = [
        (f"{rep.alerts:,}", "alerts"),
        (f"{len(visits):,}", "visits"),
        (f"{total:,}", f"passed ({frac})"),
        (f"{eval_s * 1000:,.1f} ms", "evaluation, whole night"),
        (per10k, "evaluation per 10,000 alerts"),
        (f"{len(warnings)}", "warnings"),
    ]
    meta = [
        ("file", f.filename),
        ("version", f.version),
        ("night", str(night) if night else "—"),
        (
            "generated",
            _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
            + f" by minibroker {__version__}",
        ),
    ]

    out = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        # No script may run and nothing may load from anywhere: the page is data, not an app.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(f.name)} — minibroker filter test report</title><style>{_CSS}</style></head><body>",
        '<header><div class="kicker">minibroker · filter test report</div>',
        f'<h1 id="filter-name">{_e(f.name)}</h1>',
        f'<p class="desc">{_e(f.description.strip()) if f.description.strip() else "<i>(no docstring)</i>"}</p><dl>',
        *(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in meta),
        "</dl></header><main>",
        '<div class="tiles" id="summary">',
        *(
            f'<div class="tile"><div class="v">{_e(v)}</div><div class="k">{_e(k)}</div></div>'
            for v, k in tiles
        ),
        "</div>",
    ]

    out.append('<section id="warnings"><h2>Warnings</h2>')
    if warnings:
        out += [
            f'<div class="finding {_e(w.kind)}"><b>{_e(_KIND_TITLES.get(w.kind, w.kind))}</b>{_e(w.message)}</div>'
            for w in warnings
        ]
    else:
        out.append(
            '<div class="ok">No warnings: the match rate, evaluation time and null rates are within the service\'s design figures.</div>'
        )
    out.append("</section>")

    out.append('<section id="visits"><h2>Per visit</h2>')
    if visits:
        out.append(
            _bars_svg(
                visits,
                passed,
                title="alerts passed per visit",
                ylabel="alerts passed",
                reference=[DESIGN_RATE * v.alerts for v in visits],
                ref_label="design figure: 20 per 10,000 alerts",
                cap=config.max_matches_per_visit,
            )
        )
        out.append(
            _bars_svg(
                visits,
                [v.evaluate_s * 1000 for v in visits],
                title="evaluation time per visit",
                ylabel="evaluation (ms)",
                unit=" ms",
                reference=[config.budget_s * v.alerts / BUDGET_ALERTS * 1000 for v in visits],
                ref_label=f"budget: {config.budget_s:g} s per {BUDGET_ALERTS:,} alerts",
            )
        )
        out.append(
            "<details><summary>table of visits</summary><table><tr><th>visit</th><th>alerts</th><th>passed</th>"
            '<th>decode ms</th><th>evaluate ms</th><th class="l">fault</th></tr>'
        )
        for v, n in zip(visits, passed, strict=True):
            fault = "; ".join(v.faults.values())
            out.append(
                f"<tr><td>{v.visit}</td><td>{v.alerts:,}</td><td>{n:,}</td><td>{v.decode_s * 1000:,.1f}</td>"
                f'<td>{v.evaluate_s * 1000:,.2f}</td><td class="l">{_e(fault)}</td></tr>'
            )
        out.append("</table></details>")
    else:
        out.append('<p class="empty">The night had no visits.</p>')
    out.append("</section>")

    firsts = [
        (ra, dec)
        for ra, dec in ((m.get("ra"), m.get("dec")) for m in result.matches)
        if isinstance(ra, float) and isinstance(dec, float)
    ]
    out.append(
        f'<section id="sky"><h2>Sky map of matches</h2>{_sky_svg(result.positions, firsts)}'
        '<p class="dim">Red rings: the first matches, numbered as below.</p></section>'
    )

    out.append(f'<section id="matches"><h2>First {len(result.matches)} matches</h2>')
    if result.matches:
        cols = list(result.matches[0])
        out.append(
            '<table class="matches"><tr><th>#</th>'
            + "".join(f"<th>{_e(c)}</th>" for c in cols)
            + "</tr>"
        )
        for i, m in enumerate(result.matches, 1):
            out.append(
                f'<tr><td><a href="#match-{i}">{i}</a></td>'
                + "".join(f"<td>{_cell(m.get(c))}</td>" for c in cols)
                + "</tr>"
            )
        out.append('</table><div class="cards">')
        out += [
            _match_card(i, m, p)
            for i, (m, p) in enumerate(zip(result.matches, result.packets, strict=False), 1)
        ]
        out.append("</div>")
    else:
        out.append('<p class="empty">No alert passed the filter.</p>')
    out.append("</section>")

    out.append('<section id="columns"><h2>Columns the filter may read</h2>')
    nulls = result.nulls
    if not isinstance(nulls, NullCounts):
        out.append(
            '<p class="empty">Null counts were not collected (pass <code>report=NullCounts()</code> to test_filter).</p>'
        )
    elif nulls.dynamic:
        out.append(
            '<p class="empty">The filter reaches columns dynamically, so which it reads is unknown.</p>'
        )
    else:
        out.append(
            f'<p class="dim">Every column whose path the filter\'s code names (so possibly a few it does not '
            f"use), and the share of the night's {nulls.alerts:,} alerts in which it is missing: null, NaN "
            "or inside a null record; for lightcurve columns, no point at all. A comparison with a "
            "missing value is False.</p>"
        )
        out.append('<table><tr><th>column</th><th class="l">missing</th><th>alerts</th></tr>')
        for path, share in nulls.fractions().items():
            flag = ' class="flag"' if share >= NULL_WARN_FRACTION else ""
            out.append(
                f'<tr{flag}><td>{_e(path)}</td><td class="l"><span class="meter"><i style="width:{100 * share:.1f}%">'
                f"</i></span>{100 * share:.1f}%</td><td>{nulls.missing[path]:,}</td></tr>"
            )
        out.append("</table>")
    out.append("</section></main>")
    out.append(
        "<footer>Self-contained page: no scripts, no network. Cutouts: asinh stretch, north as in the FITS "
        "file (row 0 at the bottom).</footer></body></html>"
    )
    return "\n".join(out)


def write_report(
    path: str | Path, result: TestResult, *, night: Path | None = None, config: Config | None = None
) -> Path:
    """Write the HTML report of a filter's test run.

    Parameters
    ----------
    path : str or Path
        Where to write the page; missing parent directories are created.
    result : TestResult
        What :func:`engine.local.localtest.test_filter` returned; its ``nulls`` (collected with
        ``test_filter(report=NullCounts())``) feed the null warnings and the columns table.
    night : Path, optional
        The night file the filter ran over, shown in the header.
    config : Config, optional
        The match cap and time budget the warnings compare against; the defaults when omitted.

    Returns
    -------
    Path
        ``path``, written.

    Raises
    ------
    ConfigError
        If the page cannot be written there.
    """
    path = Path(path)
    page = _render(result, night, config or Config())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot write the report to {path}: {exc.strerror}; choose another --report PATH"
        ) from None
    return path
