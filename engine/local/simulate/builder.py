"""Realistic sample nights: Rubin-like alert visits with known populations to find.

``simulate_night`` writes a night file (see :mod:`engine.sources.night`) of ``visits`` visits with
``alerts_per_visit`` alerts each, in any alert schema version from 7.0 on, and a *truth*
sidecar ``<out>.truth.json`` that says which population each alert was drawn from. Filters
never see the sidecar (it is not in the alerts); tests and sample-filter authors read it with
:func:`truth` to measure completeness and purity.

Populations
-----------
Every alert belongs to exactly one population. Shares are of a visit's alerts; a visit of at
least 100 alerts holds at least one alert of every population (taken from ``bogus``), so
small test nights still contain each kind. At 10,000 alerts a visit each science population
gives ~20-25 alerts, the design figure for one filter's passes.

==============  ==========  ====================================================================
population      share       signature (what a filter can test)
==============  ==========  ====================================================================
bogus           60%         ``reliability < 0.3`` always. One artefact each: dipole 30%
                            (``isDipole`` and ``dipoleFitAttempted`` true, dipole fields set),
                            cosmic ray 18% (``pixelFlags_cr``, sharper than the PSF,
                            extendedness 0), negative 17% (``isNegative``, psfFlux < 0),
                            saturated star 10% (``pixelFlags_saturated``, bright template),
                            bad pixels 8% (``pixelFlags_bad``/``_interpolated``), edge 9%
                            (``pixelFlags_edge``, ``psfFlux_flag_edge``, x within 12 px of the
                            detector edge), satellite streak 8% (``pixelFlags_streak``, long
                            trail). S/N mostly 5-10. 88% new (no history).
variable        remainder   ordinary variable stars, the junk: point sources with 0.03-0.15 mag
                (29-38%)    irregular (damped-random-walk) variability, a year of history,
                            difference flux of either sign (``isNegative`` for half); colours
                            of high-latitude field stars (G/K dwarfs g-i ~0.9, M dwarfs 1.5-3).
asteroid        10% x       solar system: ``diaObject`` null, ``diaSource.diaObjectId`` 0,
                f(beta)     ``ssObjectId`` set, ``ssSource`` present (its ids match), no
                            history (``prvDiaForcedSources`` null), ``mpc_orbits`` for 80%.
                            85% main belt (trailLength ~0.5"), 15% fast NEOs (trailed 2.5-25").
                            The share falls with ecliptic latitude: x exp(-(beta/15 deg)^2),
                            at least x 0.03.
supernova       0.25%       rises over 14-20 days then fades 0.03 mag/day in r (0.045 g,
                            0.07 u: colour reddens with time); seen 12 d before to 50 d after
                            peak, so nearly all have earlier detections; on a host
                            (templateFlux > 0, extendedness 0.3-0.95).
fast_transient  0.2%        rising 0.6-1.2 mag/day since a ~10-sigma detection 1-2 days ago in
                            the same band; first detected < 6 days ago (2-4 points, more in
                            the deep field); hosted or hostless.
flare           0.2%        a red M dwarf (point source, extendedness < 0.08; forced
                            photometry flat at ~0 for a year, scienceFlux much brighter in
                            z/y than g/u) suddenly much brighter, most in u/g; 1-3 earlier
                            smaller flares in prvDiaSources.
periodic        0.25%       RR Lyrae-like pulsator, period 0.3-1 d, 0.5-1.1 mag in g, 1.5x
                            the usual number of epochs; alerts fire near extremes of light.
agn             0.25%       damped random walk (tau 100-400 d, 0.12-0.3 mag, bluer when
                            brighter) in a galaxy nucleus (extendedness 0.4-1); long history.
microlensing    0.2%        symmetric, achromatic Paczynski bump (tE 15-70 d, u0 0.05-0.5)
                            on a flat baseline covered by a year of forced photometry.
==============  ==========  ====================================================================

Astrophysical (non-bogus) alerts have ``reliability`` 0.3-1 (mostly > 0.8).

The night
---------
- Visits are 34 s apart (30 s exposure, ``midpointMjdTai`` increasing from ``start_mjd``),
  with ids ``YYYYMMDD * 100000 + seq`` (``YYYYMMDD`` the observing day, i.e. the date at
  UTC-12h; ``seq`` counts 34-s slots from 22:00 UTC), as Rubin's.
- Pointings cycle through this list; after ten visits the wide-survey fields move 4 deg east
  per cycle (ECDFS stays). Each covers the LSSTCam focal plane, 189 detectors of
  4072 x 4000 pixels (0.2"), ~9.5 deg^2 (radius ~1.75 deg), rotated per visit.

  ====  =====================  ======  ======  =====================================
  #     field                  RA      Dec     band, target
  ====  =====================  ======  ======  =====================================
  0     wide, near ecliptic    10.0    3.0     r, lowdust
  1     ECDFS deep-drilling    53.13   -28.10  i, ddf_ecdfs (3x the usual history)
  2     wide, near ecliptic    350.0   -5.0    g, lowdust
  3     wide                   15.0    -35.0   z, lowdust
  4     wide, ecliptic         25.0    10.0    y, lowdust
  5     wide                   340.0   -30.0   u, lowdust
  6     wide                   35.0    -10.0   r, lowdust
  7     wide, far south        0.0     -60.0   i, lowdust
  8     wide, ecliptic         45.0    16.0    z, lowdust
  9     wide                   5.0     -20.0   g, lowdust
  ====  =====================  ======  ======  =====================================

- Ids: ``diaSourceId`` and ``diaForcedSourceId`` are ``(day - 59000) << 43 | counter``, the
  counter unique within the night and scrambled by an odd multiplier (most ids > 2**53); a diaObject's id is the ``diaSourceId`` of
  its first detection (so a brand-new object has ``diaObjectId == diaSourceId``); objects
  first seen before the 12-month history window carry older ids, some below 2**53.
- ``prvDiaSources``: every earlier detection (S/N >= 5) within 12 months, or null when
  there is none (most bogus alerts). ``prvDiaForcedSources``: null for solar-system alerts;
  an empty list for a new object (as in real v10 alerts); otherwise forced photometry on
  every earlier epoch since 30 days before the first detection (since a year ago for
  long-lived objects: variables, periodic, AGN, flares, microlensing). All strictly before
  the alert's midpoint.
- ``diaObject`` statistics agree with the lightcurve (``prvDiaSources`` + this diaSource)
  per band: ``Ndata`` count; ``psfFluxMean``/``scienceFluxMean`` inverse-variance weighted
  means with ``MeanErr = 1/sqrt(sum 1/err^2)``; ``Sigma`` standard deviation (ddof=1, null
  below 2 points); ``Min``/``Max``; ``MaxSlope`` the largest flux change per day between
  consecutive points (null below 2); ``ErrMean`` the mean error; ``Chi2`` (v7) about the
  weighted mean; ``fpFlux*`` from ``prvDiaForcedSources``. ``nDiaSources == 1 +
  len(prvDiaSources or [])``. Unlike real v10 alerts, ``firstDiaSourceMjdTai`` and
  ``lastDiaSourceMjdTai`` are filled: the first detection in the lightcurve and this one.
- Cutouts are FITS files of 17,280 bytes (6 blocks of 2880): a 30 x 30 float32 image in nJy
  with a TAN WCS centred on the source, and an ``UNCERT`` variance extension, as in real
  alerts (which add a PSF image). Template = host galaxy or star; difference = the
  difference flux as a PSF (two lobes for dipoles, a line for streaks, sharper for cosmic
  rays); science = template + difference; each with noise. They are ~87% of the file
  (75-90% in real alerts), and the rest, ~8 KB an alert, matches the DESIGN's 79 MB of
  non-cutout data per 10,000-alert visit.
- Fields the simulation does not model are filled by type, with plausible magnitudes, and
  3% nulls where the schema allows them. Flags are false except the populations' own and a
  few percent of interpolated or suspect pixels; 1% of real alerts have all ``pixelFlags*``
  null (not measured).

The same arguments give the same bytes, in any process: the alerts, the header (schema JSON
in a fixed key order, a sync marker derived from the arguments) and the sidecar. Each visit
has its own random stream derived from ``seed``, so the first visits of a longer night equal
a shorter night's.

Times: ``*MjdTai`` fields are MJD in TAI; ``timestamp-micros`` fields (``mpc_orbits``) are Unix
time, converted from TAI with ERFA's leap-second table (TAI - UTC = 37 s). Cutouts are
written by hand (``_card``), not with astropy.io.fits: the headers are cached per visit and
only the WCS cards change, which astropy would rebuild at ~1.6 ms per cutout (50 s per
10,000-alert night); the tests read every cutout back with astropy.io.fits.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.alerts.schema import AlertSchema, AvroType, load_schema
from engine.errors import ConfigError, SourceError
from engine.local.simulate import populations as pops
from engine.progress import Progress
from engine.sources.night import NightWriter

__all__ = ["POPULATIONS", "NightSummary", "simulate_night", "truth", "truth_path"]

#: Population names, in the order of the module docstring's table.
POPULATIONS: tuple[str, ...] = tuple(pops.POPULATIONS)

VISIT_SPACING_S = 34.0
EXPOSURE_S = 30.0
MAX_VISITS = 10_000
MAX_ALERTS_PER_VISIT = 200_000
_CHUNK = 1000  # alerts built at a time: bounds memory for 40k-alert visits
_PIXEL_SCALE = 0.2  # arcsec
_DET_W, _DET_H = 4072, 4000
_STAMP = 30
_PAD = 2880

# (ra, dec, band, target name): the table in the module docstring; index 1 is the deep field
_POINTINGS = [
    (10.0, 3.0, "r", "lowdust"),
    (53.13, -28.10, "i", "ddf_ecdfs"),
    (350.0, -5.0, "g", "lowdust"),
    (15.0, -35.0, "z", "lowdust"),
    (25.0, 10.0, "y", "lowdust"),
    (340.0, -30.0, "u", "lowdust"),
    (35.0, -10.0, "r", "lowdust"),
    (0.0, -60.0, "i", "lowdust"),
    (45.0, 16.0, "z", "lowdust"),
    (5.0, -20.0, "g", "lowdust"),
]
_DDF = 1


@dataclass(frozen=True)
class NightSummary:
    """What :func:`simulate_night` wrote.

    Attributes
    ----------
    path : pathlib.Path
        The night file.
    schema_version : str
        Alert schema version, e.g. ``"11.1"``.
    visits : tuple[int, ...]
        Visit ids, in time order (one block each).
    alerts : int
        Number of alerts written.
    bytes : int
        Size of the night file.
    seconds : float
        Wall-clock time taken.
    populations : dict[str, int]
        Alerts per injected population (see the module docstring), as in the truth sidecar.
    """

    path: Path
    schema_version: str
    visits: tuple[int, ...]
    alerts: int
    bytes: int
    seconds: float
    populations: dict[str, int]


def truth_path(night: str | os.PathLike[str]) -> Path:
    """Where the truth sidecar of a night file lives: ``<night>.truth.json``."""
    p = Path(night)
    return p.with_name(p.name + ".truth.json")


def truth(path: str | os.PathLike[str]) -> dict[int, str]:
    """The population of every alert of a simulated night, by ``diaSourceId``.

    Parameters
    ----------
    path : str or os.PathLike
        The night file (its sidecar ``<path>.truth.json`` is read).

    Returns
    -------
    dict[int, str]
        ``diaSourceId`` -> population name, in file order.

    Raises
    ------
    SourceError
        If the sidecar is missing (only :func:`simulate_night` writes one).
    """
    side = truth_path(path)
    try:
        data = json.loads(side.read_text())
    except FileNotFoundError:
        raise SourceError(
            f"{side}: no truth sidecar; only nights written by `minibroker simulate` have one"
        ) from None
    return {int(k): v for k, v in data["alerts"].items()}


def simulate_night(
    out: str | os.PathLike[str],
    *,
    visits: int = 10,
    alerts_per_visit: int = 1000,
    seed: int = 0,
    schema_version: str = "11.1",
    progress: bool = True,
    start_mjd: float = 61000.0,
) -> NightSummary:
    """Write a realistic sample night and its truth sidecar.

    Parameters
    ----------
    out : str or os.PathLike
        Night file to write (replaced atomically); ``<out>.truth.json`` is written beside it.
    visits : int
        Number of visits (1 to 10,000).
    alerts_per_visit : int
        Alerts in every visit (1 to 200,000).
    seed : int
        Random seed (>= 0); the same arguments give the same alerts and truth.
    schema_version : str
        Alert schema version, ``"7.0"`` or later (``engine.alerts.schema.available_versions()``).
    progress : bool
        Draw a progress bar on stderr.
    start_mjd : float
        Midpoint of the first visit [MJD TAI], between 59500 and 80000.

    Returns
    -------
    NightSummary
        Path, schema version, visit ids, alert count, size, time and population counts.

    Raises
    ------
    ConfigError
        For an argument out of range.
    SchemaError
        For a schema version the installed ``lsst-alert-packet`` does not ship.
    """
    _check(visits, "visits", MAX_VISITS)
    _check(alerts_per_visit, "alerts_per_visit", MAX_ALERTS_PER_VISIT)
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if not 59500.0 <= float(start_mjd) <= 80000.0:
        raise ConfigError(
            f"start_mjd must be an MJD between 59500 and 80000 (Rubin era), got {start_mjd!r}"
        )
    schema = load_schema(schema_version)  # SchemaError names the available versions
    if schema.version < (7, 0):
        raise ConfigError(f"schema {schema.name} is too old to simulate; use 7.0 or later")
    spec = _spec(schema.version)
    plan = _plan(visits, float(start_mjd))
    seeds = np.random.SeedSequence(seed).spawn(visits)
    counts = dict.fromkeys(POPULATIONS, 0)
    labels: dict[str, str] = {}
    out = Path(out)
    bar = _Progress(visits, alerts_per_visit) if progress else None
    t0 = time.perf_counter()
    marker = hashlib.sha256(
        f"minibroker-night:{visits}:{alerts_per_visit}:{seed}:{schema.name}:{start_mjd}".encode()
    ).digest()[:16]
    with NightWriter(out, schema, [v.id for v in plan], sync_marker=marker) as night:
        for v, ss in zip(plan, seeds, strict=True):
            builder = _VisitBuilder(v, alerts_per_visit, spec, np.random.default_rng(ss), bar)
            night.write_visit(v.id, builder.alerts())
            for dsid, name in builder.truth:
                labels[str(dsid)] = name
                counts[name] += 1
            if bar:
                bar.visit_done()
    seconds = time.perf_counter() - t0
    side = truth_path(out)
    tmp = side.with_name(side.name + ".partial")
    args = {
        "visits": visits,
        "alerts_per_visit": alerts_per_visit,
        "seed": int(seed),
        "schema_version": schema.name,
        "start_mjd": float(start_mjd),
    }
    tmp.write_text(json.dumps({"simulate_night": args, "populations": counts, "alerts": labels}))
    os.replace(tmp, side)
    if bar:
        bar.close()
    return NightSummary(
        out,
        schema.name,
        tuple(v.id for v in plan),
        len(labels),
        out.stat().st_size,
        seconds,
        counts,
    )


def _check(value: object, name: str, most: int) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or not 1 <= value <= most:
        raise ConfigError(f"{name} must be an integer from 1 to {most:,}, got {value!r}")


class _Progress:
    """Simulation progress: visits done and the alert rate, drawn by :class:`engine.progress.Progress`."""

    def __init__(self, visits: int, per_visit: int) -> None:
        self.bar = Progress(visits)
        self.done = 0
        self.alerts = 0
        self.t0 = time.perf_counter()

    def add(self, n: int) -> None:
        self.alerts += n
        self.draw()

    def visit_done(self) -> None:
        self.done += 1
        self.draw()

    def draw(self) -> None:
        rate = self.alerts / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.update(self.done, f"{rate:,.0f} alerts/s")

    def close(self) -> None:
        self.bar.close()


# ---------------------------------------------------------------------------------------
# the visit plan


@dataclass(frozen=True)
class _Visit:
    index: int
    id: int
    mjd: float
    ra: float
    dec: float
    band: int
    rotation: float  # deg
    target: str
    reason: str
    ddf: bool
    ecl_beta: float


def _civil(days: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 -> YYYYMMDD integers (Gregorian calendar, ERFA's jd2cal)."""
    import erfa

    d = np.asarray(days, dtype=np.float64)
    year, month, day, _ = erfa.jd2cal(np.full(d.shape, 2440587.5), d)  # JD 2440587.5 = 1970-01-01
    return (year * 10000 + month * 100 + day).astype(np.int64)


def _visit_ids(mjd: np.ndarray) -> np.ndarray:
    """Rubin-style visit ids for exposures at ``mjd``: observing day * 100000 + sequence."""
    mjd = np.asarray(mjd, dtype=np.float64)
    day = np.floor(mjd - 0.5)  # observing day: the date at UTC-12h
    seq = np.maximum(1, np.floor((mjd - day - 0.5 - 10 / 24) * 86400 / VISIT_SPACING_S) + 1)
    return _civil(day - 40587) * 100000 + seq.astype(np.int64)


def _plan(n: int, start: float) -> list[_Visit]:
    mjds = start + np.arange(n) * VISIT_SPACING_S / 86400.0
    ids = _visit_ids(mjds)
    plan = []
    for i in range(n):
        ra, dec, band, target = _POINTINGS[i % len(_POINTINGS)]
        ddf = i % len(_POINTINGS) == _DDF
        if not ddf:
            ra = (ra + 4.0 * (i // len(_POINTINGS))) % 360.0
        _, beta = pops.ecliptic(np.array([ra]), np.array([dec]))
        b1 = pops.BANDS[(pops.BANDS.index(band) + 1) % 6]
        reason = target if ddf else f"pairs_{band}{b1}_33.0"
        plan.append(
            _Visit(
                i,
                int(ids[i]),
                float(mjds[i]),
                ra,
                dec,
                pops.BANDS.index(band),
                rotation=(37.0 * i) % 360.0 - 180.0,
                target=target,
                reason=reason,
                ddf=ddf,
                ecl_beta=float(beta[0]),
            )
        )
    return plan


def _allocate(n: int, beta: float, rng: np.random.Generator) -> np.ndarray:
    """Population index of each of ``n`` alerts of a visit, shuffled."""
    shares = np.array([share for _, share in pops.POPULATIONS.values()])
    names = list(pops.POPULATIONS)
    shares[names.index("asteroid")] *= max(math.exp(-((beta / 15.0) ** 2)), 0.03)
    shares[names.index("variable")] = 1.0 - shares.sum()
    exact = shares * n
    counts = np.floor(exact).astype(np.int64)
    rest = n - counts.sum()
    counts[np.argsort(-(exact - counts), kind="stable")[:rest]] += 1
    if n >= 100:
        short = counts == 0
        counts[short] = 1
        counts[names.index("bogus")] -= short.sum()
    return rng.permutation(np.repeat(np.arange(len(names)), counts))


# ---------------------------------------------------------------------------------------
# the schema, walked once per version


@dataclass(frozen=True)
class _Field:
    name: str
    prim: str  # float double int long boolean string bytes timestamp record array
    nullable: bool


@dataclass(frozen=True)
class _Record:
    name: str  # full Avro name, e.g. lsst.v11_1.diaSource
    fields: tuple[_Field, ...]


@dataclass(frozen=True)
class _Spec:
    top: tuple[tuple[_Field, str], ...]  # field, union branch name for fastavro's tuple hint
    records: dict[str, _Record]  # by short name: diaSource, diaObject, ssSource, ...


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


@functools.cache
def _spec(version: tuple[int, int]) -> _Spec:
    """Every record type of an alert schema, by short name, and the top-level fields."""
    schema: AlertSchema = load_schema(version)
    records: dict[str, _Record] = {}

    def field_of(name: str, typ: AvroType, null: int | None) -> _Field:
        if typ.kind == "record" and _short(typ.name) not in records:
            walk(typ)
        elif typ.kind == "array" and typ.items is not None and typ.items.kind == "record":
            if _short(typ.items.name) not in records:
                walk(typ.items)
        return _Field(name, typ.kind, null is not None)

    def walk(rec: AvroType) -> None:
        records[_short(rec.name)] = _Record(rec.name, tuple(field_of(*f) for f in rec.fields))

    top = []
    for name, typ, null in schema.tree.fields:
        branch = {"array": "array", "record": typ.name, "timestamp": ""}.get(typ.kind, typ.kind)
        top.append((field_of(name, typ, null), branch))
    return _Spec(tuple(top), records)


# ---------------------------------------------------------------------------------------
# columns -> rows

Columns = dict[str, Any]  # field name -> np.ndarray (NaN = null for floats) or list


def _generic(f: _Field, n: int, rng: np.random.Generator, now: float) -> Any:
    """Plausible values for a field the simulation does not model, by name and type."""
    name = f.name
    if f.prim == "boolean":
        return np.zeros(n, bool)
    if f.prim in ("string", "bytes"):
        return [None] * n if f.nullable else [""] * n
    if f.prim == "timestamp":
        return np.repeat(_micros(np.array([now])), n)
    if f.prim in ("int", "long") and (name.endswith("Id") or name.startswith("nearbyObj")):
        return np.zeros(n, np.int64)  # "no such object", as real alerts say it
    low = name.lower()
    if f.prim in ("int", "long"):
        v = rng.integers(0, 100, n).astype(np.float64)  # NaN below marks the nulls
    elif name.endswith("Err") or low.endswith("_unc"):
        v = np.abs(rng.normal(0.0, 0.05, n))
    elif name.endswith("_Cov"):
        v = rng.normal(0.0, 1e-10, n)
    elif "chi2" in low:
        v = rng.uniform(0.5, 3.0, n) * 50
    elif "lnl" in low:
        v = -rng.uniform(10.0, 500.0, n)
    elif "flux" in low or "bkgd" in low:
        v = rng.normal(0.0, 300.0, n)
    elif "mjd" in low:
        v = now - rng.uniform(0.0, 3000.0, n)
    else:
        v = rng.normal(0.0, 1.0, n)
    if f.nullable:
        v[rng.random(n) < 0.03] = np.nan
    return v


_DEFAULTS = {
    "float": 0.0,
    "double": 0.0,
    "int": 0,
    "long": 0,
    "boolean": False,
    "string": "",
    "bytes": b"",
    "timestamp": 0,
}
_DTYPES = {
    "float": np.float32,
    "double": np.float64,
    "int": np.int64,
    "long": np.int64,
    "boolean": np.bool_,
    "timestamp": np.int64,
}


def _as_list(f: _Field, values: Any, n: int, nulls: np.ndarray | None) -> list[Any]:
    """Python values of one field for fastavro: float32-exact floats, None for nulls (NaN in a
    float array, or ``nulls``), the type's zero where the field is not nullable."""
    if isinstance(values, list):
        out = values
        if not f.nullable and any(v is None for v in out):
            out = [_DEFAULTS[f.prim] if v is None else v for v in out]
        return out
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = np.broadcast_to(arr, (n,))
    null = np.isnan(arr) if arr.dtype.kind == "f" else None
    if nulls is not None:
        null = nulls if null is None else (null | nulls)
    if f.prim in _DTYPES:
        if null is not None and arr.dtype.kind == "f" and f.prim not in ("float", "double"):
            arr = np.where(null, 0, arr)
        arr = arr.astype(_DTYPES[f.prim])
    out = arr.tolist()
    if null is not None:
        idx = np.flatnonzero(null)
        if idx.size:
            fill = None if f.nullable else _DEFAULTS[f.prim]
            for i in idx.tolist():
                out[i] = fill
    return out


def _rows(
    rec: _Record,
    n: int,
    cols: Columns,
    rng: np.random.Generator,
    now: float,
    nulls: dict[str, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """``n`` records of type ``rec``: modelled columns from ``cols``, the rest generic."""
    names = []
    lists = []
    for f in rec.fields:
        values = cols[f.name] if f.name in cols else _generic(f, n, rng, now)
        names.append(f.name)
        lists.append(_as_list(f, values, n, None if nulls is None else nulls.get(f.name)))
    return list(map(dict, map(zip, itertools.repeat(names), zip(*lists, strict=True))))


# ---------------------------------------------------------------------------------------
# geometry


def _detector_cells() -> np.ndarray:
    """(189, 2) sensor cell of each detector in a 15 x 15 grid without the corner rafts."""
    cells = [
        (cx, cy)
        for cy in range(15)
        for cx in range(15)
        if (cx // 3, cy // 3) not in {(0, 0), (0, 4), (4, 0), (4, 4)}
    ]
    return np.array(cells, dtype=np.float64)


_CELLS = _detector_cells()


def _sky(v: _Visit, det: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Focal-plane position -> (ra, dec) [deg] by a gnomonic projection at the pointing."""
    w, h = _DET_W * _PIXEL_SCALE / 3600.0, _DET_H * _PIXEL_SCALE / 3600.0
    fx = np.radians((_CELLS[det, 0] - 7.5) * w + x * _PIXEL_SCALE / 3600.0)
    fy = np.radians((_CELLS[det, 1] - 7.5) * h + y * _PIXEL_SCALE / 3600.0)
    th = math.radians(v.rotation)
    xi = fx * math.cos(th) - fy * math.sin(th)
    eta = fx * math.sin(th) + fy * math.cos(th)
    d0, a0 = math.radians(v.dec), math.radians(v.ra)
    dec = np.arcsin((math.sin(d0) + eta * math.cos(d0)) / np.sqrt(1.0 + xi * xi + eta * eta))
    ra = a0 + np.arctan2(xi, math.cos(d0) - eta * math.sin(d0))
    return np.degrees(ra) % 360.0, np.degrees(dec)


_MIX = 0x5DEECE66D  # odd, so multiplying by it permutes the 43-bit counters


def _ids(mjd: np.ndarray, counter: np.ndarray) -> np.ndarray:
    """Unique 63-bit ids: day since MJD 59000 in the high bits, a scrambled counter below.

    The counter is unique within the night, and multiplying by an odd number modulo 2**43 is
    a bijection, so ids stay unique while their low bits look like real ones.
    """
    day = np.floor(np.asarray(mjd)).astype(np.int64) - 59000
    mixed = (counter.astype(np.uint64) * np.uint64(_MIX)) & np.uint64((1 << 43) - 1)
    return (np.maximum(day, 1) << 43) | mixed.astype(np.int64)


# ---------------------------------------------------------------------------------------
# cutouts


def _card(key: str, value: str, comment: str = "") -> str:
    """One 80-character FITS card, fixed format (strings from column 11, numbers to 30)."""
    value = f"{value:<20}" if value.startswith("'") else f"{value:>20}"
    text = f"{key:<8}= {value}" + (f" / {comment}" if comment else "")
    return f"{text:<80}"[:80]


def _header(cards: list[str]) -> str:
    text = "".join(cards) + f"{'END':<80}"
    return text + " " * (-len(text) % _PAD)


_VAR_HDU = _header(
    [
        _card("XTENSION", "'IMAGE   '", "Image extension"),
        _card("BITPIX", "-32", "array data type"),
        _card("NAXIS", "2", "number of array dimensions"),
        _card("NAXIS1", str(_STAMP)),
        _card("NAXIS2", str(_STAMP)),
        _card("PCOUNT", "0", "number of parameters"),
        _card("GCOUNT", "1", "number of groups"),
        _card("UTYPE", "'VarianceUncertainty'"),
        _card("EXTNAME", "'UNCERT  '", "extension name"),
        _card("BUNIT", "'nJy2    '"),
    ]
).encode("ascii")
_F32_BYTES = _STAMP * _STAMP * 4
_F32_PAD = b"\0" * (-_F32_BYTES % _PAD)
#: Size of every cutout: primary header + image, UNCERT header + variance.
CUTOUT_BYTES = 2 * (_PAD + _F32_BYTES + len(_F32_PAD))


@functools.lru_cache(maxsize=16)
def _primary_header(v: _Visit) -> tuple[str, str]:
    """The constant head and tail of a visit's primary headers (the WCS slots go between)."""
    s = _PIXEL_SCALE / 3600.0
    th = math.radians(v.rotation)
    pc = (-s * math.cos(th), s * math.sin(th), s * math.sin(th), s * math.cos(th))
    head = "".join(
        [
            _card("SIMPLE", "T", "conforms to FITS standard"),
            _card("BITPIX", "-32", "array data type"),
            _card("NAXIS", "2", "number of array dimensions"),
            _card("NAXIS1", str(_STAMP)),
            _card("NAXIS2", str(_STAMP)),
            _card("EXTEND", "T"),
            _card("ROTPA", f"{v.rotation:.10f}", "Pos angle in deg of focal plane +Y wrt North"),
            _card("BUNIT", "'nJy     '"),
            _card("FILTER", f"'{pops.BANDS[v.band]}       '"),
            _card("MJD-OBS", f"{v.mjd:.8f}", "exposure midpoint [MJD TAI]"),
            _card("WCSAXES", "2", "Number of coordinate axes"),
            _card("RADESYS", "'ICRS    '"),
            _card("CTYPE1", "'RA---TAN'"),
            _card("CTYPE2", "'DEC--TAN'"),
            _card("CUNIT1", "'deg     '"),
            _card("CUNIT2", "'deg     '"),
            *[
                _card(k, f"{val:.13E}", "Coordinate transformation matrix element")
                for k, val in zip(("PC1_1", "PC1_2", "PC2_1", "PC2_2"), pc, strict=True)
            ],
        ]
    )
    n_cards = len(head) // 80 + 6 + 1  # + the per-alert cards + END
    tail = f"{'END':<80}" + " " * (-(n_cards * 80) % _PAD)
    return head, tail


def _wcs_cards(
    cutmin_x: int, cutmin_y: int, crpix1: float, crpix2: float, ra: float, dec: float
) -> str:
    return (
        _card("CUTMINX", str(cutmin_x))
        + _card("CUTMINY", str(cutmin_y))
        + _card("CRPIX1", f"{crpix1:.12f}", "Pixel coordinate of reference point")
        + _card("CRPIX2", f"{crpix2:.12f}", "Pixel coordinate of reference point")
        + _card("CRVAL1", f"{ra:.12f}", "Coordinate value at reference point")
        + _card("CRVAL2", f"{dec:.12f}", "Coordinate value at reference point")
    )


def _gauss(cx: np.ndarray, cy: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """(k, 30, 30) unit-flux circular Gaussians centred at (cx, cy) pixels."""
    g = np.arange(_STAMP, dtype=np.float64)
    s = np.asarray(sigma, dtype=np.float64)[:, None]
    gx = np.exp(-0.5 * ((g - cx[:, None]) / s) ** 2)
    gy = np.exp(-0.5 * ((g - cy[:, None]) / s) ** 2)
    gx /= np.sqrt(2 * np.pi) * s
    gy /= np.sqrt(2 * np.pi) * s
    return gy[:, :, None] * gx[:, None, :]


def _cutouts(
    rng: np.random.Generator, v: _Visit, chunk: _Chunk, seeing_px: float
) -> list[tuple[bytes, bytes, bytes]]:
    """The difference, science and template cutouts of each alert of a chunk."""
    c = chunk.t
    k = chunk.k
    cx = 14.5 + rng.uniform(-0.5, 0.5, k)
    cy = 14.5 + rng.uniform(-0.5, 0.5, k)
    s_psf = np.full(k, seeing_px)
    psf = _gauss(cx, cy, s_psf)
    tmpl_shape = psf.copy()
    hosted = c["host_px"] > 0
    if hosted.any():  # a galaxy: the PSF convolved with a Gaussian of the host's size
        tmpl_shape[hosted] = _gauss(
            cx[hosted], cy[hosted], np.hypot(c["host_px"][hosted], s_psf[hosted])
        )
    kind = c["bogus_kind"]
    names = list(pops.BOGUS_KINDS)
    diff_shape = psf.copy()
    cr = kind == names.index("cosmic_ray")
    if cr.any():  # sharper than any star
        diff_shape[cr] = _gauss(cx[cr], cy[cr], np.full(cr.sum(), 0.6))
    dip = kind == names.index("dipole")
    if dip.any():  # a positive and a negative lobe: a misaligned subtraction
        sep = c["dipole_px"][dip] / 2
        ang = np.radians(c["dipole_angle"][dip])
        dx, dy = sep * np.cos(ang), sep * np.sin(ang)
        lobes = _gauss(cx[dip] + dx, cy[dip] + dy, s_psf[dip]) - _gauss(
            cx[dip] - dx, cy[dip] - dy, s_psf[dip]
        )
        ratio = c["dipole_mean"][dip] / np.maximum(np.abs(c["diff"][dip]), 1.0)
        diff_shape[dip] += ratio[:, None, None] * lobes
    streak = kind == names.index("streak")
    if streak.any():  # a line across the stamp
        g = np.arange(_STAMP, dtype=np.float64)
        ang = rng.uniform(0, np.pi, streak.sum())[:, None, None]
        dist = (g[None, None, :] - cx[streak, None, None]) * np.sin(ang) - (
            g[None, :, None] - cy[streak, None, None]
        ) * np.cos(ang)
        prof = np.exp(-0.5 * (dist / s_psf[streak, None, None]) ** 2)
        diff_shape[streak] = prof / prof.sum(axis=(1, 2), keepdims=True)
    diff = (c["diff"][:, None, None] * diff_shape).astype(np.float32)
    template = (c["template"][:, None, None] * tmpl_shape).astype(np.float32)
    sig_pix = (c["sigma"] / np.sqrt(4 * np.pi * s_psf**2)).astype(np.float32)[:, None, None]
    noise = rng.standard_normal((3, k, _STAMP, _STAMP), dtype=np.float32)
    noise *= sig_pix
    science = template + diff
    var = (sig_pix * sig_pix + 0.5 * np.maximum(science, 0.0)).astype(">f4").tobytes()
    d_b = (diff + noise[0]).astype(">f4").tobytes()
    s_b = (science + 0.95 * noise[1]).astype(">f4").tobytes()
    t_b = (template + 0.3 * noise[2]).astype(">f4").tobytes()
    head_const, tail_const = _primary_header(v)
    cutmin_x = (chunk.x - 15).astype(np.int64).tolist()
    cutmin_y = (chunk.y - 15).astype(np.int64).tolist()
    crpix1, crpix2 = (cx + 1).tolist(), (cy + 1).tolist()
    ras, decs = chunk.ra.tolist(), chunk.dec.tolist()
    out = []
    for i in range(k):
        head = (
            head_const
            + _wcs_cards(cutmin_x[i], cutmin_y[i], crpix1[i], crpix2[i], ras[i], decs[i])
            + tail_const
        ).encode("ascii")
        a, b = i * _F32_BYTES, (i + 1) * _F32_BYTES
        tail = b"".join([_F32_PAD, _VAR_HDU, var[a:b], _F32_PAD])
        out.append((head + d_b[a:b] + tail, head + s_b[a:b] + tail, head + t_b[a:b] + tail))
    return out


# ---------------------------------------------------------------------------------------
# one visit


_BAND_STATS = (
    "psfFluxMean",
    "psfFluxMeanErr",
    "psfFluxSigma",
    "psfFluxNdata",
    "psfFluxMin",
    "psfFluxMax",
    "psfFluxMaxSlope",
    "psfFluxErrMean",
    "psfFluxChi2",
    "scienceFluxMean",
    "scienceFluxMeanErr",
    "fpFluxMean",
    "fpFluxMeanErr",
    "fpFluxSigma",
)


def _weighted(key: np.ndarray, f: np.ndarray, e: np.ndarray, m: int) -> tuple[np.ndarray, ...]:
    """Per-group count, weighted mean, its error, and the group sums needed for Sigma/Chi2."""
    n = np.bincount(key, minlength=m)
    w = 1.0 / (e.astype(np.float64) ** 2)
    sw = np.bincount(key, w, minlength=m)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(key, w * f, minlength=m) / sw
        err = np.sqrt(1.0 / sw)
        mu = np.bincount(key, f, minlength=m) / n
        sigma = np.sqrt(np.bincount(key, (f - mu[key]) ** 2, minlength=m) / (n - 1))
        chi2 = np.bincount(key, w * (f - mean[key]) ** 2, minlength=m)
    sigma[n < 2] = np.nan
    for a in (mean, err, chi2):
        a[n == 0] = np.nan
    return n, mean, err, sigma, chi2


def _band_stats(k: int, lc: dict[str, np.ndarray], forced: dict[str, np.ndarray]) -> Columns:
    """diaObject per-band columns from the lightcurve and forced photometry (module doc)."""
    m = 6 * k
    key = lc["owner"] * 6 + lc["band"]
    order = np.lexsort((lc["mjd"], key))
    key, t = key[order], lc["mjd"][order]
    f = lc["flux"][order].astype(np.float64)
    e = lc["err"][order].astype(np.float64)
    n, mean, err, sigma, chi2 = _weighted(key, f, e, m)
    fmin = np.full(m, np.inf)
    fmax = np.full(m, -np.inf)
    np.minimum.at(fmin, key, f)
    np.maximum.at(fmax, key, f)
    slope = np.full(m, -np.inf)
    same = key[1:] == key[:-1]
    if same.any():
        s = (f[1:] - f[:-1])[same] / (t[1:] - t[:-1])[same]
        np.maximum.at(slope, key[1:][same], s)
    with np.errstate(invalid="ignore", divide="ignore"):
        err_mean = np.bincount(key, e, minlength=m) / n
    _, smean, serr, _, _ = _weighted(
        key, lc["sci"][order].astype(np.float64), lc["sci_err"][order].astype(np.float64), m
    )
    fkey = forced["owner"] * 6 + forced["band"]
    _, fpmean, fperr, fpsig, _ = _weighted(
        fkey, forced["flux"].astype(np.float64), forced["err"].astype(np.float64), m
    )
    empty = n == 0
    for a in (fmin, fmax, err_mean):
        a[empty] = np.nan
    slope[n < 2] = np.nan
    stats = {
        "psfFluxMean": mean,
        "psfFluxMeanErr": err,
        "psfFluxSigma": sigma,
        "psfFluxNdata": n,
        "psfFluxMin": fmin,
        "psfFluxMax": fmax,
        "psfFluxMaxSlope": slope,
        "psfFluxErrMean": err_mean,
        "psfFluxChi2": chi2,
        "scienceFluxMean": smean,
        "scienceFluxMeanErr": serr,
        "fpFluxMean": fpmean,
        "fpFluxMeanErr": fperr,
        "fpFluxSigma": fpsig,
    }
    cols: Columns = {}
    for name, arr in stats.items():
        grid = arr.reshape(k, 6)
        for b, band in enumerate(pops.BANDS):
            cols[f"{band}_{name}"] = grid[:, b]
    return cols


@dataclass
class _Chunk:
    """The true state of one chunk's alerts, gathered from the population models."""

    labels: np.ndarray
    det: np.ndarray
    x: np.ndarray
    y: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    sig_sky: np.ndarray
    t: dict[
        str, np.ndarray
    ]  # diff, template, host_px, ext, rel, forced_from, born, bogus_kind, dipole_*
    over: dict[str, np.ndarray]  # diaSource fields set by the populations
    hist: dict[str, np.ndarray]  # owner, mjd, band, diff, template, force: grouped, time-ordered
    sso_idx: np.ndarray
    sso: dict[str, Any]

    @property
    def k(self) -> int:
        return self.labels.size


@dataclass
class _History:
    """What the chunk's earlier epochs became: detections (prv) and forced photometry rows."""

    flux: np.ndarray
    err: np.ndarray
    sci: np.ndarray
    sig: np.ndarray
    prv: np.ndarray  # indices into the epochs of prvDiaSources rows
    forced: np.ndarray  # indices into the epochs of prvDiaForcedSources rows
    prv_ids: np.ndarray
    forced_ids: np.ndarray


class _VisitBuilder:
    """Builds one visit's alerts, a chunk at a time, and remembers their truth."""

    def __init__(
        self, v: _Visit, n: int, spec: _Spec, rng: np.random.Generator, bar: _Progress | None
    ) -> None:
        self.v, self.n, self.spec, self.rng, self.bar = v, n, spec, rng, bar
        self.labels = _allocate(n, v.ecl_beta, rng)
        self.counter = v.index << 29  # night-unique id counter for this visit
        self.sso_counter = v.index << 22
        self.truth: list[tuple[int, str]] = []
        self.depth = rng.normal(0.0, 0.2)  # this visit's depth offset [mag]
        self.seeing = rng.uniform(0.6, 1.1)  # FWHM [arcsec]

    def alerts(self) -> Iterator[dict[str, Any]]:
        """The visit's alerts in the schema's shape, built ``_CHUNK`` at a time."""
        for start in range(0, self.n, _CHUNK):
            chunk = self._alerts(self._truths(self.labels[start : start + _CHUNK]))
            if self.bar:
                self.bar.add(len(chunk))
            yield from chunk

    def _take(self, n: int) -> np.ndarray:
        ids = self.counter + np.arange(n, dtype=np.int64)
        self.counter += n
        return ids

    # -- truth ----------------------------------------------------------------------------

    def _truths(self, labels: np.ndarray) -> _Chunk:
        """Place the alerts on the focal plane and ask each population model for its truth."""
        v, rng, k = self.v, self.rng, labels.size
        det = rng.integers(0, len(_CELLS), k)
        x = rng.uniform(0.0, _DET_W, k)
        y = rng.uniform(0.0, _DET_H, k)
        ra, dec = _sky(v, det, x, y)
        sig_sky = pops.sky_sigma(v.band, self.depth) * rng.uniform(0.95, 1.05, k)
        t = {
            name: np.zeros(k)
            for name in (
                "diff",
                "template",
                "host_px",
                "ext",
                "rel",
                "dipole_mean",
                "dipole_px",
                "dipole_angle",
            )
        }
        t.update(forced_from=np.full(k, np.nan), born=np.full(k, np.nan), bogus_kind=np.full(k, -1))
        over: dict[str, np.ndarray] = {}
        hist: list[tuple[np.ndarray, ...]] = []
        sso_idx, sso = np.zeros(0, np.int64), {}
        rate = pops.WFD_RATE * (pops.DDF_FACTOR if v.ddf else 1.0)
        for p, (model, _) in enumerate(pops.POPULATIONS.values()):
            idx = np.flatnonzero(labels == p)
            if idx.size == 0:
                continue
            tr = model(rng, pops.Context(v.mjd, v.band, ra[idx], dec[idx], sig_sky[idx], rate))
            t["diff"][idx], t["template"][idx], t["host_px"][idx] = (
                tr.diff_now,
                tr.template_now,
                tr.host_px,
            )
            t["ext"][idx], t["rel"][idx] = tr.extendedness, tr.reliability
            if tr.forced_from is not None:
                t["forced_from"][idx] = tr.forced_from
            if tr.born is not None:
                t["born"][idx] = tr.born
            for key, arr in tr.overrides.items():
                arr = np.asarray(arr)
                if key == "bogus_kind":
                    t["bogus_kind"][idx] = arr
                    continue
                if key not in over:
                    over[key] = (
                        np.full(k, np.nan) if arr.dtype.kind == "f" else np.zeros(k, arr.dtype)
                    )
                over[key][idx] = arr
            if tr.h_owner.size:
                hist.append(
                    (idx[tr.h_owner], tr.h_mjd, tr.h_band, tr.h_diff, tr.h_template, tr.h_force)
                )
            if tr.sso is not None:
                sso_idx, sso = idx, tr.sso
        if "dipoleMeanFlux" in over:
            dip = ~np.isnan(over["dipoleMeanFlux"])
            t["dipole_mean"][dip] = over["dipoleMeanFlux"][dip]
            t["dipole_px"][dip] = over["dipoleLength"][dip] / _PIXEL_SCALE
            t["dipole_angle"][dip] = over["dipoleAngle"][dip]
        edge = t["bogus_kind"] == list(pops.BOGUS_KINDS).index("edge")
        if edge.any():  # artefacts at the detector edge: move them there
            m = int(edge.sum())
            x[edge] = np.where(
                rng.random(m) < 0.5, rng.uniform(0, 12, m), _DET_W - rng.uniform(0, 12, m)
            )
            ra[edge], dec[edge] = _sky(v, det[edge], x[edge], y[edge])
        keys = ("owner", "mjd", "band", "diff", "template", "force")
        if hist:
            cols = [np.concatenate(a) for a in zip(*hist, strict=True)]
            order = np.lexsort((cols[1], cols[0]))
            h = {key: col[order] for key, col in zip(keys, cols, strict=True)}
        else:
            h = {
                key: np.zeros(0, dtype)
                for key, dtype in zip(
                    keys, (np.int64, float, np.int64, float, float, bool), strict=True
                )
            }
        h["band"] = h["band"].astype(np.int64)
        return _Chunk(labels, det, x, y, ra, dec, sig_sky, t, over, h, sso_idx, sso)

    # -- measurement ------------------------------------------------------------------------

    def _measure(
        self, diff: np.ndarray, template: np.ndarray, sig_sky: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Observed difference flux, its error and the science flux (all float32-exact)."""
        rng = self.rng
        science = np.maximum(template + diff, 0.0)
        err = np.sqrt(sig_sky**2 + 0.5 * science)  # sky + source photon noise (0.5 nJy/e-)
        obs = diff + err * rng.standard_normal(diff.size)
        sci = template + diff + err * rng.standard_normal(diff.size)
        return tuple(a.astype(np.float32).astype(np.float64) for a in (obs, err, sci))

    def _history(self, c: _Chunk, is_sso: np.ndarray) -> tuple[_History, np.ndarray]:
        """Detect and measure the earlier epochs; returns them and each alert's first detection."""
        h, rng = c.hist, self.rng
        sig = pops.sky_sigma(h["band"], rng.normal(0.0, 0.25, h["band"].size))
        flux, err, sci = self._measure(h["diff"], h["template"], sig)
        weak = h["force"] & (np.abs(flux) < 5.2 * err)  # the model says: this one was detected
        flux[weak] = (np.where(h["diff"][weak] < 0, -1.0, 1.0) * 5.2 * err[weak]).astype(np.float32)
        detected = (np.abs(flux) >= 5.0 * err) | h["force"]
        first = np.full(c.k, np.inf)
        np.minimum.at(first, h["owner"][detected], h["mjd"][detected])
        known = np.isfinite(first) & ~is_sso  # objects with a previous detection
        start = np.where(np.isnan(c.t["forced_from"]), first - 30.0, c.t["forced_from"])
        prv = np.flatnonzero(detected & known[h["owner"]])
        forced = np.flatnonzero(known[h["owner"]] & (h["mjd"] >= start[h["owner"]]))
        hist = _History(
            flux,
            err,
            sci,
            sig,
            prv,
            forced,
            _ids(h["mjd"][prv], self._take(prv.size)),
            _ids(h["mjd"][forced], self._take(forced.size)),
        )
        return hist, known

    def _object_ids(
        self, c: _Chunk, hs: _History, dsid: np.ndarray, known: np.ndarray, is_sso: np.ndarray
    ) -> np.ndarray:
        """diaObjectId: the diaSourceId of the object's first detection (0 for solar system)."""
        obj = dsid.copy()  # a new object is named after this detection
        owner = c.hist["owner"][hs.prv]
        if owner.size:
            first = np.r_[True, owner[1:] != owner[:-1]]
            obj[owner[first]] = hs.prv_ids[first]
        old = np.isfinite(c.t["born"]) & known  # first detected before the history window
        obj[old] = _ids(c.t["born"][old], self._take(int(old.sum())))
        obj[is_sso] = 0
        return obj

    # -- records ----------------------------------------------------------------------------

    def _alerts(self, c: _Chunk) -> list[dict[str, Any]]:
        v, rng, k, recs = self.v, self.rng, c.k, self.spec.records
        is_sso = np.zeros(k, bool)
        is_sso[c.sso_idx] = True
        flux, err, sci = self._measure(c.t["diff"], c.t["template"], c.sig_sky)
        low = np.abs(flux) < 5.0 * err  # the pipeline only alerts on 5-sigma detections
        sign = np.where(c.t["diff"] < 0, -1.0, 1.0)
        flux[low] = (sign * err * (5.0 + 0.5 * rng.random(k)))[low].astype(np.float32)
        dsid = _ids(np.full(k, v.mjd), self._take(k))
        hs, known = self._history(c, is_sso)
        obj = self._object_ids(c, hs, dsid, known, is_sso)
        h = c.hist
        sso_ids = np.zeros(k, np.int64)
        sso_ids[c.sso_idx] = _ids(
            np.full(c.sso_idx.size, 61100.0), self.sso_counter + np.arange(c.sso_idx.size)
        )
        self.sso_counter += c.sso_idx.size

        now = self._source_columns(
            ids=dsid,
            visit=np.full(k, v.id),
            det=c.det,
            obj=obj,
            mjd=np.full(k, v.mjd),
            ra=c.ra,
            dec=c.dec,
            x=c.x,
            y=c.y,
            band=np.full(k, v.band),
            flux=flux,
            err=err,
            sci=sci,
            template=c.t["template"],
            sig_sky=c.sig_sky,
            ext=c.t["ext"],
            rel=c.t["rel"],
        )
        now["ssObjectId"] = sso_ids
        self._apply_overrides(now, c, flux, err)
        bogus = c.labels == POPULATIONS.index("bogus")
        no_flags = (rng.random(k) < 0.01) & ~bogus  # these alerts lose all their pixel flags
        pix_null = {
            f.name: no_flags for f in recs["diaSource"].fields if f.name.startswith("pixelFlags")
        }
        sources = _rows(recs["diaSource"], k, now, rng, v.mjd, pix_null)

        pr, fo = hs.prv, hs.forced
        prv_rows = _rows(recs["diaSource"], pr.size, self._prv_columns(c, hs, obj), rng, v.mjd)
        forced_rows: list[dict[str, Any]] = []
        if "diaForcedSource" in recs:
            ho = h["owner"][fo]
            t_proc = h["mjd"][fo] + rng.uniform(0.01, 0.05, fo.size)
            forced_rows = _rows(
                recs["diaForcedSource"],
                fo.size,
                {
                    "diaForcedSourceId": hs.forced_ids,
                    "diaObjectId": obj[ho],
                    "ra": c.ra[ho],
                    "dec": c.dec[ho],
                    "visit": _visit_ids(h["mjd"][fo]),
                    "detector": rng.integers(0, len(_CELLS), fo.size),
                    "psfFlux": hs.flux[fo],
                    "psfFluxErr": hs.err[fo],
                    "midpointMjdTai": h["mjd"][fo],
                    "scienceFlux": hs.sci[fo],
                    "scienceFluxErr": hs.err[fo],
                    "band": [pops.BANDS[b] for b in h["band"][fo].tolist()],
                    "x": rng.uniform(0, _DET_W, fo.size),
                    "y": rng.uniform(0, _DET_H, fo.size),
                    "timeProcessedMjdTai": t_proc,
                    "time_processed": _micros(t_proc),
                    "timeWithdrawnMjdTai": np.full(fo.size, np.nan),
                },
                rng,
                v.mjd,
            )

        objects = self._objects(c, hs, obj, now, flux, err, sci, prv_rows + sources)
        ss_rows, with_orbit = self._solar_system(c, dsid, sso_ids)
        c.t["sigma"] = err
        cut = _cutouts(rng, v, c, self.seeing / 2.355 / _PIXEL_SCALE)
        prv_split = _split(prv_rows, h["owner"][pr], k)
        forced_split = _split(forced_rows, h["owner"][fo], k)
        sso_pos = {i: j for j, i in enumerate(c.sso_idx.tolist())}
        out = []
        for i in range(k):
            j = sso_pos.get(i)
            value: dict[str, Any] = {
                "diaSourceId": sources[i]["diaSourceId"],
                "alertId": sources[i]["diaSourceId"],
                "observation_reason": v.reason,
                "target_name": v.target,
                "diaSource": sources[i],
                "prvDiaSources": prv_split[i] or None,
                "prvDiaForcedSources": None if j is not None else forced_split[i],
                "diaObject": None if j is not None or not objects else objects[i],
                "cutoutDifference": cut[i][0],
                "cutoutScience": cut[i][1],
                "cutoutTemplate": cut[i][2],
            }
            for rname, rows in ss_rows.items():
                orbit = rname in ("mpc_orbits", "MPCORB")
                value[rname] = rows[j] if j is not None and (with_orbit[j] or not orbit) else None
            out.append(_alert(self.spec, value, v.mjd, rng))
            self.truth.append((int(dsid[i]), POPULATIONS[int(c.labels[i])]))
        return out

    def _apply_overrides(self, now: Columns, c: _Chunk, flux: np.ndarray, err: np.ndarray) -> None:
        """Lay the populations' own diaSource fields over the generic measurement."""
        for key, arr in c.over.items():
            if arr.dtype.kind == "f":
                now[key] = np.where(np.isnan(arr), now.get(key, np.nan), arr)
            else:
                now[key] = arr | now[key] if key in now else arr
        if c.sso_idx.size:  # trailed asteroids lose flux to the PSF fit
            trailed = np.asarray(c.sso["trailed"])
            now["trailFlux"][c.sso_idx] = flux[c.sso_idx] * np.where(trailed, 1.4, 1.02)
        dip = now["isDipole"]
        for key in ("dipoleMeanFluxErr", "dipoleFluxDiffErr"):
            now[key] = np.where(dip, err * 1.3, np.nan)
        now["dipoleNdata"] = np.where(dip, now["bboxSize"] ** 2, 0)
        now["dipoleRa"] = np.where(dip, c.ra, np.nan)
        now["dipoleDec"] = np.where(dip, c.dec, np.nan)

    def _prv_columns(self, c: _Chunk, hs: _History, obj: np.ndarray) -> Columns:
        """prvDiaSources: earlier detections near the object's position, on other visits."""
        rng, pr, h = self.rng, hs.prv, c.hist
        ho = h["owner"][pr]
        jitter = 0.55 / np.maximum(np.abs(hs.flux[pr]) / hs.err[pr], 5.0) / 3600.0  # deg
        cols = self._source_columns(
            ids=hs.prv_ids,
            visit=_visit_ids(h["mjd"][pr]),
            det=rng.integers(0, len(_CELLS), pr.size),
            obj=obj[ho],
            mjd=h["mjd"][pr],
            ra=(c.ra[ho] + jitter * rng.standard_normal(pr.size) / np.cos(np.radians(c.dec[ho])))
            % 360.0,
            dec=c.dec[ho] + jitter * rng.standard_normal(pr.size),
            x=rng.uniform(0, _DET_W, pr.size),
            y=rng.uniform(0, _DET_H, pr.size),
            band=h["band"][pr],
            flux=hs.flux[pr],
            err=hs.err[pr],
            sci=hs.sci[pr],
            template=h["template"][pr],
            sig_sky=hs.sig[pr],
            ext=c.t["ext"][ho] * rng.uniform(0.8, 1.2, pr.size),
            rel=np.clip(c.t["rel"][ho] + rng.normal(0.0, 0.05, pr.size), 0.0, 1.0),
        )
        cols["ssObjectId"] = np.zeros(pr.size, np.int64)
        return cols

    def _objects(
        self,
        c: _Chunk,
        hs: _History,
        obj: np.ndarray,
        now: Columns,
        flux: np.ndarray,
        err: np.ndarray,
        sci: np.ndarray,
        detections: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """diaObject records whose statistics are those of the lightcurve (module docstring)."""
        v, rng, k, h = self.v, self.rng, c.k, c.hist
        if "diaObject" not in self.spec.records:
            return []
        pr, fo = hs.prv, hs.forced
        lc = {
            "owner": np.concatenate([h["owner"][pr], np.arange(k)]),
            "band": np.concatenate([h["band"][pr], np.full(k, v.band)]),
            "mjd": np.concatenate([h["mjd"][pr], np.full(k, v.mjd)]),
            "flux": np.concatenate([hs.flux[pr], flux]),
            "err": np.concatenate([hs.err[pr], err]),
            "sci": np.concatenate([hs.sci[pr], sci]),
            "sci_err": np.concatenate([hs.err[pr], err]),
        }
        forced = {
            "owner": h["owner"][fo],
            "band": h["band"][fo],
            "flux": hs.flux[fo],
            "err": hs.err[fo],
        }
        cols = _band_stats(k, lc, forced)
        n_src = np.bincount(lc["owner"], minlength=k)
        first = np.full(k, np.inf)
        np.minimum.at(first, lc["owner"], lc["mjd"])
        o_ra, o_dec = _object_position(lc["owner"], detections, c.ra, k)
        valid = now["timeProcessedMjdTai"] + 2.5 / 86400
        cols.update(
            {
                "diaObjectId": obj,
                "ra": o_ra,
                "dec": o_dec,
                "raErr": now["raErr"] / np.sqrt(n_src),
                "decErr": now["decErr"] / np.sqrt(n_src),
                "ra_dec_Cov": now["ra_dec_Cov"] / n_src,
                "validityStartMjdTai": valid,
                "validityStart": _micros(valid),
                "radecMjdTai": np.full(k, v.mjd),
                "nDiaSources": n_src,
                "firstDiaSourceMjdTai": first,
                "lastDiaSourceMjdTai": np.full(k, v.mjd),
                "pmRa": rng.normal(0, 5, k),
                "pmDec": rng.normal(0, 5, k),
                "parallax": np.abs(rng.normal(0, 1, k)),
            }
        )
        return _rows(self.spec.records["diaObject"], k, cols, rng, v.mjd)

    def _solar_system(
        self, c: _Chunk, dsid: np.ndarray, sso_ids: np.ndarray
    ) -> tuple[dict[str, list[dict[str, Any]]], np.ndarray]:
        """ssSource / ssObject / mpc_orbits / MPCORB records of the asteroids, and who has an orbit."""
        v, rng, m = self.v, self.rng, c.sso_idx.size
        with_orbit = rng.random(m) < 0.8
        if m == 0:
            return {}, with_orbit
        cols: Columns = dict(c.sso)
        cols.update(
            {
                "diaSourceId": dsid[c.sso_idx],
                "ssObjectId": sso_ids[c.sso_idx],
                "t_p": v.mjd - rng.uniform(0, 1500, m),
                "id": rng.integers(1, 2**31 - 1, m),
            }
        )
        for stamp in ("created_at", "updated_at", "fitting_datetime"):
            cols[stamp] = _micros(v.mjd - rng.uniform(1, 3000, m))
        return {
            name: _rows(self.spec.records[name], m, cols, rng, v.mjd)
            for name in ("ssSource", "ssObject", "mpc_orbits", "MPCORB")
            if name in self.spec.records
        }, with_orbit

    def _source_columns(
        self,
        *,
        ids: np.ndarray,
        visit: np.ndarray,
        det: np.ndarray,
        obj: np.ndarray,
        mjd: np.ndarray,
        ra: np.ndarray,
        dec: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        band: np.ndarray,
        flux: np.ndarray,
        err: np.ndarray,
        sci: np.ndarray,
        template: np.ndarray,
        sig_sky: np.ndarray,
        ext: np.ndarray,
        rel: np.ndarray,
    ) -> Columns:
        """The modelled diaSource fields of detections (current or earlier)."""
        rng, n = self.rng, ids.size
        snr = np.abs(flux) / err
        pos_err = np.maximum(0.55 / snr, 0.01)  # arcsec
        psf2 = (self.seeing / 2.355) ** 2
        ixx_psf = psf2 * rng.normal(1.0, 0.05, n)
        iyy_psf = psf2 * rng.normal(1.0, 0.05, n)
        grow = 1.0 + ext * rng.uniform(0.3, 1.5, n)
        bbox = np.clip(9 + 2 * np.round(2.5 * np.log(snr)), 9, 81).astype(np.int64)
        t_proc = mjd + EXPOSURE_S / 2 / 86400 + rng.uniform(90.0, 130.0, n) / 86400
        tmpl_err = 0.3 * sig_sky
        return {
            "diaSourceId": ids,
            "visit": visit,
            "detector": det,
            "diaObjectId": obj,
            "parentDiaSourceId": np.zeros(n, np.int64),
            "midpointMjdTai": mjd,
            "exposureTime": np.full(n, EXPOSURE_S),
            "ra": ra,
            "dec": dec,
            "raErr": pos_err / 3600.0,
            "decErr": pos_err / 3600.0,
            "ra_dec_Cov": rng.normal(0.0, 0.2, n) * (pos_err / 3600.0) ** 2,
            "psfRa": ra,
            "psfDec": dec,
            "psfRaErr": pos_err / 3600.0,
            "psfDecErr": pos_err / 3600.0,
            "x": x,
            "y": y,
            "xErr": pos_err / _PIXEL_SCALE,
            "yErr": pos_err / _PIXEL_SCALE,
            "x_y_Cov": rng.normal(0.0, 0.2, n) * (pos_err / _PIXEL_SCALE) ** 2,
            "apFlux": flux * rng.uniform(0.95, 1.1, n) + err * rng.standard_normal(n),
            "apFluxErr": err * 2.5,
            "snr": snr,
            "psfFlux": flux,
            "psfFluxErr": err,
            "psfLnL": np.full(n, np.nan),
            "psfNdata": (bbox + 30) ** 2,
            "psfChi2": (bbox + 30) ** 2 * rng.uniform(0.8, 1.6, n),
            "trailFlux": flux * rng.uniform(1.0, 1.1, n),
            "trailFluxErr": err * 0.1,
            "trailRa": ra,
            "trailDec": dec,
            "trailLength": rng.uniform(0.3, 1.2, n),
            "trailAngle": rng.uniform(-90.0, 90.0, n),
            "trailNdata": np.zeros(n, np.int64),
            "trailAlgorithm": np.ones(n, np.int64),
            "trailRaErr": np.full(n, np.nan),
            "trailDecErr": np.full(n, np.nan),
            "trailLengthErr": np.full(n, np.nan),
            "trailAngleErr": np.full(n, np.nan),
            "trailChi2": np.full(n, np.nan),
            "trailLnL": np.full(n, np.nan),
            **{
                key: np.full(n, np.nan)
                for key in (
                    "dipoleMeanFlux",
                    "dipoleMeanFluxErr",
                    "dipoleFluxDiff",
                    "dipoleFluxDiffErr",
                    "dipoleLength",
                    "dipoleAngle",
                    "dipoleChi2",
                    "dipoleRa",
                    "dipoleDec",
                    "dipoleRaErr",
                    "dipoleDecErr",
                    "dipoleLengthErr",
                    "dipoleAngleErr",
                    "dipoleLnL",
                )
            },
            "dipoleNdata": np.zeros(n, np.int64),
            "isDipole": np.zeros(n, bool),
            "dipoleFitAttempted": np.zeros(n, bool),
            "scienceFlux": sci,
            "scienceFluxErr": err,
            "templateFlux": template + tmpl_err * rng.standard_normal(n),
            "templateFluxErr": tmpl_err,
            "ixx": ixx_psf * grow,
            "iyy": iyy_psf * grow,
            "ixy": rng.normal(0.0, 0.02, n),
            "ixxPSF": ixx_psf,
            "iyyPSF": iyy_psf,
            "ixyPSF": rng.normal(0.0, 0.01, n),
            "extendedness": ext,
            "reliability": rel,
            "reliabilityVersion": ["rbResnet50-v2"] * n,
            "band": [pops.BANDS[b] for b in band.tolist()],
            "isNegative": flux < 0,
            "is_negative": flux < 0,
            "timeProcessedMjdTai": t_proc,
            "time_processed": _micros(t_proc),
            "timeWithdrawnMjdTai": np.full(n, np.nan),
            "bboxSize": bbox,
            # the ordinary blemishes of real data
            "pixelFlags_interpolated": rng.random(n) < 0.015,
            "pixelFlags_suspect": rng.random(n) < 0.01,
        }


def _object_position(
    owner: np.ndarray, rows: list[dict[str, Any]], ra: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean measured position of each object's detections (RA averaged about the truth)."""
    m_ra = np.array([r["ra"] for r in rows], dtype=np.float64)
    m_dec = np.array([r["dec"] for r in rows], dtype=np.float64)
    d_ra = (m_ra - ra[owner] + 180.0) % 360.0 - 180.0
    n = np.bincount(owner, minlength=k)
    return (ra + np.bincount(owner, d_ra, minlength=k) / n) % 360.0, np.bincount(
        owner, m_dec, minlength=k
    ) / n


def _micros(mjd_tai: np.ndarray) -> np.ndarray:
    """MJD(TAI) -> Avro timestamp-micros (Unix time: UTC microseconds since 1970-01-01).

    TAI runs 37 s ahead of UTC in the Rubin era; ERFA's leap-second table does the conversion
    (pyerfa rather than astropy.time: same table, a third of the import time).
    """
    import erfa

    tai = np.asarray(mjd_tai, dtype=np.float64)
    with warnings.catch_warnings():
        # "dubious year": past the leap-second table (years ahead), the last offset is kept.
        warnings.simplefilter("ignore", erfa.ErfaWarning)
        utc1, utc2 = erfa.taiutc(np.full(tai.shape, 2400000.5), tai)
    # JD 2440587.5 is the Unix epoch; subtract the whole days first to keep microseconds.
    return np.round(((utc1 - 2440587.5) + utc2) * 86400e6).astype(np.int64)


def _split(rows: list[dict[str, Any]], owner: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
    """Split rows grouped by ``owner`` (ascending) into one list per alert."""
    bounds = np.searchsorted(owner, np.arange(k + 1)).tolist()
    return [rows[bounds[i] : bounds[i + 1]] for i in range(k)]


def _alert(
    spec: _Spec, value: dict[str, Any], now: float, rng: np.random.Generator
) -> dict[str, Any]:
    """One alert in the schema's shape.

    Record and array unions are handed to fastavro as ``(branch, value)`` tuples, its
    documented notation for naming a union branch: without it fastavro validates a whole
    history against each branch before writing it (a third of the run time). The bytes are
    the same.
    """
    out: dict[str, Any] = {}
    for f, branch in spec.top:
        if f.name in value:
            val = value[f.name]
        elif f.nullable:
            val = None
        else:
            val = _as_list(f, _generic(f, 1, rng, now), 1, None)[0]
        if val is not None and f.nullable and f.prim in ("record", "array"):
            val = (branch, val)
        out[f.name] = val
    return out
