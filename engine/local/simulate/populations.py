"""The astrophysics behind ``engine.local.simulate``: what each injected population looks like.

Private to :mod:`engine.local.simulate`. Each model receives the alerts of one chunk that belong to
its population (their sky positions, the visit's time and band, the required current
signal) and returns a :class:`Truth`: the *true* difference flux now, the template flux under
the source, the object's earlier epochs with their true fluxes, and the diaSource fields the
population sets itself (flags, dipole and trail measurements, ...). Measurement -- noise,
detection, identifiers, records, cutouts -- is ``engine.local.simulate``'s job, so every
population is measured the same way.

Fluxes are in nJy (AB: ``m = 31.4 - 2.5 log10(f / nJy)``); times are MJD (TAI); a band is
an index into :data:`BANDS`. A difference flux is science minus template, so a variable star
that is fainter than its template has a negative difference flux, as in real Rubin data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from engine.alerts.fields import AB_ZERO_POINT_NJY

BANDS = ("u", "g", "r", "i", "z", "y")
#: Share of the history epochs taken in each band (roughly Rubin's wide-fast-deep split).
BAND_WEIGHTS = np.array([0.07, 0.10, 0.22, 0.22, 0.20, 0.19])
#: Single-visit 5-sigma point-source depth per band [AB mag].
M5 = np.array([23.7, 24.8, 24.4, 23.9, 23.3, 22.5])
#: History window: prvDiaSources / prvDiaForcedSources reach back this far [days].
HISTORY_DAYS = 365.0
#: Epochs per day in the observing seasons of a wide-fast-deep field (about 80 a year).
WFD_RATE = 0.33
#: The deep-drilling field is visited this many times more often.
DDF_FACTOR = 3.0

Array = np.ndarray


def mag_to_njy(mag: Array | float) -> Array:
    """AB magnitude to flux in nJy."""
    return np.power(10.0, (AB_ZERO_POINT_NJY - np.asarray(mag, dtype=np.float64)) / 2.5)


def sky_sigma(band: Array | int, jitter: Array | float = 0.0) -> Array:
    """Flux uncertainty of a faint point source [nJy] for a visit in ``band``."""
    return mag_to_njy(M5[band] + jitter) / 5.0


@dataclass
class Context:
    """What a population model knows about the alerts it must produce."""

    now: float  #: the visit's exposure midpoint [MJD]
    band: int  #: the visit's band
    ra: Array  #: positions of this population's alerts [deg]
    dec: Array
    sigma: Array  #: sky-limited flux uncertainty of each alert now [nJy]
    rate: float  #: history epochs per day (higher in the deep-drilling field)

    @property
    def k(self) -> int:
        return len(self.ra)


@dataclass
class Truth:
    """The true state of ``k`` alerts of one population (see the module docstring)."""

    diff_now: Array  #: true difference flux in the visit's band [nJy], signed
    template_now: Array  #: template flux under the source in the visit's band [nJy]
    host_px: Array  #: Gaussian sigma of the template object [pixel]; 0 = point-like or none
    extendedness: Array
    reliability: Array
    #: History epochs, grouped by alert (``h_owner`` ascending) and in time order within one.
    h_owner: Array = field(default_factory=lambda: np.zeros(0, np.int64))
    h_mjd: Array = field(default_factory=lambda: np.zeros(0))
    h_band: Array = field(default_factory=lambda: np.zeros(0, np.int8))
    h_diff: Array = field(default_factory=lambda: np.zeros(0))
    h_template: Array = field(default_factory=lambda: np.zeros(0))
    h_force: Array = field(default_factory=lambda: np.zeros(0, bool))  #: detected whatever S/N
    #: Start of forced photometry [MJD]; NaN = 30 days before the first detection.
    forced_from: Array | None = None
    #: When the object was first detected, if before the history window [MJD]; else NaN.
    born: Array | None = None
    #: diaSource fields set by the population (by schema field name; unknown names ignored).
    overrides: dict[str, Array] = field(default_factory=dict)
    #: Solar-system fields (ssSource / mpc_orbits / MPCORB / ssObject, by field name).
    sso: dict[str, Array | list[str]] | None = None


# ---------------------------------------------------------------------------------------
# shared helpers


def _snr(rng: np.random.Generator, k: int, scale: float, low: float = 5.5) -> Array:
    """Detection S/N of new alerts: piled up near threshold with a long tail (cap 400)."""
    return np.minimum(low * np.exp(rng.exponential(scale, k)), 400.0)


def _reliability_real(rng: np.random.Generator, k: int) -> Array:
    return 0.3 + 0.7 * rng.beta(6.0, 1.2, k)


def _epochs(
    rng: np.random.Generator, ctx: Context, mult: Array | float
) -> tuple[Array, Array, Array]:
    """The field's earlier visits for each alert: (owner, mjd, band), grouped, time-ordered.

    Two observing seasons in the 12-month window: last year's (365 to 245 days ago) and this
    one (125 days ago up to tonight), at night: within +-3.6 h of tonight's time of night, or
    earlier tonight (at least half an hour ago).
    """
    mult = np.broadcast_to(np.asarray(mult, dtype=np.float64), (ctx.k,))
    counts = rng.poisson(ctx.rate * mult * 245.0)
    owner = np.repeat(np.arange(ctx.k, dtype=np.int64), counts)
    this_season = rng.random(owner.size) < 125.0 / 245.0
    days = np.where(
        this_season, rng.integers(0, 125, owner.size), rng.integers(245, 366, owner.size)
    )
    ago = np.where(
        days == 0, rng.uniform(0.02, 0.15, owner.size), days + rng.uniform(-0.15, 0.15, owner.size)
    )
    mjd = ctx.now - ago
    order = np.lexsort((mjd, owner))
    band = rng.choice(len(BANDS), size=owner.size, p=BAND_WEIGHTS).astype(np.int8)
    return owner[order], mjd[order], band


def _with_extra(
    base: tuple[Array, Array, Array], owner: Array, mjd: Array, band: Array
) -> tuple[Array, Array, Array, Array]:
    """Merge extra epochs into ``base``; returns (owner, mjd, band, is_extra), re-sorted."""
    o = np.concatenate([base[0], owner])
    m = np.concatenate([base[1], mjd])
    b = np.concatenate([base[2], band.astype(np.int8)])
    extra = np.concatenate([np.zeros(base[0].size, bool), np.ones(owner.size, bool)])
    order = np.lexsort((m, o))
    return o[order], m[order], b[order], extra[order]


def _drw_backwards(
    rng: np.random.Generator,
    owner: Array,
    mjd: Array,
    now: float,
    x_now: Array,
    tau: Array,
    sigma: Array,
) -> Array:
    """A damped random walk (in magnitudes) at each epoch, conditioned on ``x_now`` today.

    The process is time-reversible, so we step from today back into the past, one history
    index at a time, vectorized over the objects.
    """
    x = np.zeros(owner.size)
    if owner.size == 0:
        return x
    counts = np.bincount(owner, minlength=len(x_now))
    ends = np.cumsum(counts)
    prev_x = x_now.astype(np.float64).copy()
    prev_t = np.full(len(x_now), now)
    for j in range(int(counts.max())):
        alive = counts > j
        rows = ends[alive] - 1 - j  # j-th epoch counting back from the latest
        objs = np.flatnonzero(alive)
        dt = prev_t[objs] - mjd[rows]
        a = np.exp(-dt / tau[objs])
        xs = prev_x[objs] * a + sigma[objs] * np.sqrt(1.0 - a * a) * rng.standard_normal(objs.size)
        x[rows] = xs
        prev_x[objs] = xs
        prev_t[objs] = mjd[rows]
    return x


def _sign(rng: np.random.Generator, k: int, p_positive: float) -> Array:
    return np.where(rng.random(k) < p_positive, 1.0, -1.0)


# ---------------------------------------------------------------------------------------
# the populations

_SN_SED = np.array([0.55, 1.0, 1.0, 0.85, 0.7, 0.6])  # peak flux relative to r
_SN_DECLINE = np.array([0.07, 0.045, 0.03, 0.025, 0.022, 0.02])  # mag/day after peak
_HOST_SED = np.array([0.25, 0.55, 1.0, 1.3, 1.5, 1.6])  # an early-type-ish galaxy


def _sn_shape(t: Array, band: Array, t_exp: Array, t_peak: Array) -> Array:
    """Supernova flux relative to the r-band peak: quadratic rise, linear-in-mag decline."""
    rise = np.clip((t - t_exp) / (t_peak - t_exp), 0.0, 1.0) ** 2
    fall = np.power(10.0, -0.4 * _SN_DECLINE[band] * np.maximum(t - t_peak, 0.0))
    return _SN_SED[band] * np.where(t < t_peak, rise, fall) * (t > t_exp)


def supernova(rng: np.random.Generator, ctx: Context) -> Truth:
    """Type-Ia-like: 14-20 day rise, 0.03 mag/day decline in r (faster in blue: reddening)."""
    k = ctx.k
    rise = rng.uniform(14.0, 20.0, k)
    t_peak = ctx.now - rng.uniform(-12.0, 50.0, k)  # 12 days before to 50 days after peak
    t_exp = t_peak - rise
    band_now = np.full(k, ctx.band)
    amp = _snr(rng, k, 0.9) * ctx.sigma
    scale = amp / _sn_shape(np.full(k, ctx.now), band_now, t_exp, t_peak)
    host = mag_to_njy(rng.uniform(20.5, 24.0, k))  # host light under the PSF, r band
    owner, mjd, band = _epochs(rng, ctx, 1.0)
    return Truth(
        diff_now=amp,
        template_now=host * _HOST_SED[ctx.band],
        host_px=rng.uniform(2.0, 4.5, k),
        extendedness=rng.uniform(0.3, 0.95, k),
        reliability=_reliability_real(rng, k),
        h_owner=owner,
        h_mjd=mjd,
        h_band=band,
        h_diff=scale[owner] * _sn_shape(mjd, band, t_exp[owner], t_peak[owner]),
        h_template=host[owner] * _HOST_SED[band],
        h_force=np.zeros(owner.size, bool),
    )


_HOT_SED = np.array([1.2, 1.1, 1.0, 0.9, 0.85, 0.8])


def fast_transient(rng: np.random.Generator, ctx: Context) -> Truth:
    """Kilonova/FBOT-like: rising 0.6-1.2 mag/day since a detection 1-2 days ago in the same band."""
    k = ctx.k
    rate = rng.uniform(0.6, 1.2, k)  # mag/day
    dt_prev = rng.uniform(1.0, 2.0, k)
    age = dt_prev + rng.uniform(0.5, 3.0, k)  # days since it started to rise
    prev_band = np.full(k, ctx.band)
    # bright enough now that the earlier point was a ~10-sigma detection (so the rise is clear)
    ratio_prev = np.power(10.0, -0.4 * rate * dt_prev)
    need = 10.0 * sky_sigma(prev_band) / ratio_prev
    amp = np.clip(np.maximum(_snr(rng, k, 0.8, 15.0) * ctx.sigma, need), None, 400.0 * ctx.sigma)
    base = _epochs(rng, ctx, 1.0)
    owner, mjd, band, extra = _with_extra(base, np.arange(k), ctx.now - dt_prev, prev_band)
    t_start = ctx.now - age
    ago = ctx.now - mjd
    h = amp[owner] / _HOT_SED[ctx.band] * _HOT_SED[band] * np.power(10.0, -0.4 * rate[owner] * ago)
    h = np.where(mjd > t_start[owner], h, 0.0)
    hosted = rng.random(k) < 0.5
    host = np.where(hosted, mag_to_njy(rng.uniform(22.0, 25.0, k)), 0.0)
    return Truth(
        diff_now=amp,
        template_now=host * _HOST_SED[ctx.band],
        host_px=np.where(hosted, rng.uniform(1.8, 3.5, k), 0.0),
        extendedness=rng.uniform(0.0, 0.5, k),
        reliability=_reliability_real(rng, k),
        h_owner=owner,
        h_mjd=mjd,
        h_band=band,
        h_diff=h,
        h_template=host[owner] * _HOST_SED[band],
        h_force=extra,
    )


_MDWARF_SED = np.array([0.02, 0.15, 1.0, 2.5, 4.0, 5.0])  # quiescent M dwarf, relative to r
_FLARE_SED = np.array([1.6, 1.3, 1.0, 0.8, 0.65, 0.55])  # flare continuum (hot)


def flare(rng: np.random.Generator, ctx: Context) -> Truth:
    """M-dwarf flare: a faint red point source, flat for a year, suddenly much brighter.

    The flare's spectrum is hot and the star's is cool, so the brightening is several
    magnitudes in u and g and a fraction of a magnitude in z and y. One to three earlier,
    smaller flares made the object (so it has a history); forced photometry covers the year.
    """
    k = ctx.k
    quiet = mag_to_njy(rng.uniform(18.5, 22.0, k))  # r band
    amp = _snr(rng, k, 1.0, 10.0) * ctx.sigma
    energy = amp / _FLARE_SED[ctx.band]
    owner, mjd, band = _epochs(rng, ctx, 1.0)
    # earlier flares: 1-3 random past epochs per star, 10-40% of today's
    n_prev = rng.integers(1, 4, k)
    counts = np.bincount(owner, minlength=k)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    force = np.zeros(owner.size, bool)
    h = np.zeros(owner.size)
    for j in range(3):
        ok = (n_prev > j) & (counts > 0)
        rows = starts[ok] + rng.integers(0, np.maximum(counts[ok], 1))
        force[rows] = True
        h[rows] = energy[ok] * rng.uniform(0.1, 0.4, ok.sum()) * _FLARE_SED[band[rows]]
    start = ctx.now - HISTORY_DAYS
    return Truth(
        diff_now=amp,
        template_now=quiet * _MDWARF_SED[ctx.band],
        host_px=np.zeros(k),
        extendedness=rng.uniform(0.0, 0.08, k),
        reliability=_reliability_real(rng, k),
        h_owner=owner,
        h_mjd=mjd,
        h_band=band,
        h_diff=h,
        h_template=quiet[owner] * _MDWARF_SED[band],
        h_force=force,
        forced_from=np.full(k, start),
    )


_RR_SED = np.array([0.55, 0.95, 1.0, 0.95, 0.9, 0.85])
_RR_AMP = np.array([1.25, 1.0, 0.8, 0.65, 0.55, 0.5])  # amplitude relative to g


def _rr_wave(phase: Array) -> Array:
    """A skewed RR Lyrae-like pulsation, in magnitudes, peak-to-peak 1, brightest < 0."""
    w = (
        np.sin(2 * np.pi * phase)
        + 0.4 * np.sin(4 * np.pi * phase + 0.6)
        + 0.2 * np.sin(6 * np.pi * phase + 1.2)
    )
    return -w / 2.62


def periodic(rng: np.random.Generator, ctx: Context) -> Truth:
    """RR Lyrae-like pulsator: period 0.3-1 d, 0.5-1.1 mag in g, many points."""
    k = ctx.k
    period = rng.uniform(0.3, 1.0, k)
    amp_g = rng.uniform(0.5, 1.1, k)
    # an alert fires near maximum or minimum light: pick the most extreme of 4 phases
    cand = rng.random((k, 4))
    dm_c = amp_g[:, None] * _RR_AMP[ctx.band] * _rr_wave(cand)
    best = np.argmax(np.abs(np.power(10.0, -0.4 * dm_c) - 1.0), axis=1)
    phase_now = cand[np.arange(k), best]
    dm_now = dm_c[np.arange(k), best]
    amp = _snr(rng, k, 1.0, 8.0) * ctx.sigma
    mean_flux = amp / np.abs(np.power(10.0, -0.4 * dm_now) - 1.0) / _RR_SED[ctx.band]  # r band
    owner, mjd, band = _epochs(rng, ctx, 1.5)
    phase = phase_now[owner] + (mjd - ctx.now) / period[owner]
    dm = amp_g[owner] * _RR_AMP[band] * _rr_wave(phase)
    f_mean = mean_flux[owner] * _RR_SED[band]
    return Truth(
        diff_now=np.sign(-dm_now) * amp,
        template_now=mean_flux * _RR_SED[ctx.band],
        host_px=np.zeros(k),
        extendedness=rng.uniform(0.0, 0.1, k),
        reliability=_reliability_real(rng, k),
        h_owner=owner,
        h_mjd=mjd,
        h_band=band,
        h_diff=f_mean * (np.power(10.0, -0.4 * dm) - 1.0),
        h_template=f_mean,
        h_force=np.zeros(owner.size, bool),
        forced_from=np.full(k, ctx.now - HISTORY_DAYS),
        born=ctx.now - rng.uniform(400.0, 1500.0, k),
    )


_AGN_SED = np.array([1.0, 0.95, 1.0, 1.05, 1.1, 1.15])
_AGN_VAR = np.array([1.4, 1.2, 1.0, 0.9, 0.8, 0.75])  # bluer when brighter


def _stochastic(
    rng: np.random.Generator,
    ctx: Context,
    *,
    sed: Array,
    var: Array,
    tau: Array,
    sig: Array,
    x_sigmas: Array,
    p_bright: float,
    mult: float,
    host: Array,
    host_sed: Array,
    snr: Array,
) -> tuple[Array, Array, Array, Array, Array, Array, Array]:
    """Shared by AGN and ordinary variables: a damped random walk around the template level."""
    k = ctx.k
    x_now = -_sign(rng, k, p_bright) * x_sigmas * sig  # magnitudes; negative = brighter
    amp = snr * ctx.sigma
    dm_now = x_now * var[ctx.band]
    mean_flux = amp / np.abs(np.power(10.0, -0.4 * dm_now) - 1.0) / sed[ctx.band]
    owner, mjd, band = _epochs(rng, ctx, mult)
    x = _drw_backwards(rng, owner, mjd, ctx.now, x_now, tau, sig)
    f_mean = mean_flux[owner] * sed[band]
    h_diff = f_mean * (np.power(10.0, -0.4 * x * var[band]) - 1.0)
    h_template = f_mean + host[owner] * host_sed[band]
    diff_now = np.sign(-x_now) * amp
    template_now = mean_flux * sed[ctx.band] + host * host_sed[ctx.band]
    return diff_now, template_now, owner, mjd, band, h_diff, h_template


def agn(rng: np.random.Generator, ctx: Context) -> Truth:
    """AGN: damped-random-walk variability (tau 100-400 d, 0.12-0.3 mag) in a galaxy nucleus."""
    k = ctx.k
    host = mag_to_njy(rng.uniform(19.5, 22.5, k))
    diff, tmpl, owner, mjd, band, h_diff, h_tmpl = _stochastic(
        rng,
        ctx,
        sed=_AGN_SED,
        var=_AGN_VAR,
        tau=rng.uniform(100.0, 400.0, k),
        sig=rng.uniform(0.12, 0.3, k),
        x_sigmas=rng.uniform(1.5, 2.5, k),
        p_bright=0.7,
        mult=1.5,
        host=host,
        host_sed=_HOST_SED,
        snr=_snr(rng, k, 0.9, 6.0),
    )
    return Truth(
        diff_now=diff,
        template_now=tmpl,
        host_px=rng.uniform(1.8, 3.5, k),
        extendedness=rng.uniform(0.4, 1.0, k),
        reliability=_reliability_real(rng, k),
        h_owner=owner,
        h_mjd=mjd,
        h_band=band,
        h_diff=h_diff,
        h_template=h_tmpl,
        h_force=np.zeros(owner.size, bool),
        forced_from=np.full(k, ctx.now - HISTORY_DAYS),
        born=ctx.now - rng.uniform(400.0, 1500.0, k),
    )


def variable(rng: np.random.Generator, ctx: Context) -> Truth:
    """Ordinary variable stars (the junk filters must reject): 0.03-0.15 mag irregular.

    Their colours are those of the field stars at high Galactic latitude that vary at this
    level: G and K dwarfs of the thick disk and halo (g - i around 0.9, the blue edge of the
    main-sequence turn-off near 0.4) and active M dwarfs (g - i 1.5-3). Stars as blue as an
    RR Lyrae (g - i below ~0.4: horizontal-branch stars, white dwarfs) are rare, as in
    the SDSS stellar locus (Ivezic et al. 2005; Sesar et al. 2007).
    """
    k = ctx.k
    g_i = np.where(rng.random(k) < 0.7, rng.normal(0.9, 0.25, k), rng.uniform(1.5, 3.0, k))
    # flux per band ~ 10^(0.4 * 1.5 (g-i) (band - 2) / 3): a smooth SED, redder stars brighter in i,z,y
    sed = np.power(10.0, 0.4 * 1.5 * g_i[:, None] * (np.arange(6) - 2) / 3.0)  # (k, 6)
    var = np.array([1.2, 1.1, 1.0, 0.95, 0.9, 0.9])
    # per-object SED: run the shared model with a flat SED, then colour the fluxes per band
    diff, tmpl, owner, mjd, band, h_diff, h_tmpl = _stochastic(
        rng,
        ctx,
        sed=np.ones(6),
        var=var,
        tau=rng.uniform(2.0, 100.0, k),
        sig=rng.uniform(0.03, 0.15, k),
        x_sigmas=rng.uniform(1.5, 3.0, k),
        p_bright=0.5,
        mult=1.0,
        host=np.zeros(k),
        host_sed=np.ones(6),
        snr=_snr(rng, k, 0.7),
    )
    rel = sed[owner, band] / sed[owner, ctx.band]
    return Truth(
        diff_now=diff,
        template_now=tmpl,
        host_px=np.zeros(k),
        extendedness=rng.uniform(0.0, 0.15, k),
        reliability=_reliability_real(rng, k),
        h_owner=owner,
        h_mjd=mjd,
        h_band=band,
        h_diff=h_diff * rel,
        h_template=h_tmpl * rel,
        h_force=np.zeros(owner.size, bool),
        forced_from=np.full(k, ctx.now - HISTORY_DAYS),
        born=ctx.now - rng.uniform(400.0, 1500.0, k),
    )


_ML_SED = np.array([0.4, 0.8, 1.0, 1.1, 1.15, 1.2])  # a bulge giant


def _paczynski(u: Array) -> Array:
    return (u * u + 2.0) / (u * np.sqrt(u * u + 4.0))


def microlensing(rng: np.random.Generator, ctx: Context) -> Truth:
    """Point-lens microlensing: symmetric, achromatic Paczynski bump (tE 15-70 d) on a flat star."""
    k = ctx.k
    t_e = rng.uniform(15.0, 70.0, k)
    u0 = rng.uniform(0.05, 0.5, k)
    t0 = ctx.now - rng.uniform(-0.3, 1.0, k) * t_e
    a_now = _paczynski(np.hypot(u0, (ctx.now - t0) / t_e))
    amp = _snr(rng, k, 1.0, 8.0) * ctx.sigma
    base = amp / (a_now - 1.0) / _ML_SED[ctx.band]  # r-band baseline flux
    owner, mjd, band = _epochs(rng, ctx, 1.2)
    a = _paczynski(np.hypot(u0[owner], (mjd - t0[owner]) / t_e[owner]))
    f_base = base[owner] * _ML_SED[band]
    return Truth(
        diff_now=amp,
        template_now=base * _ML_SED[ctx.band],
        host_px=np.zeros(k),
        extendedness=rng.uniform(0.0, 0.1, k),
        reliability=_reliability_real(rng, k),
        h_owner=owner,
        h_mjd=mjd,
        h_band=band,
        h_diff=f_base * (a - 1.0),
        h_template=f_base,
        h_force=np.zeros(owner.size, bool),
        forced_from=np.full(k, ctx.now - HISTORY_DAYS),
    )


# --- solar system -----------------------------------------------------------------------

_OBLIQUITY = np.radians(23.4392911)


def unit_vector(ra: Array, dec: Array) -> Array:
    """(3, n) unit vectors for equatorial coordinates in degrees."""
    r, d = np.radians(ra), np.radians(dec)
    return np.array([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)])


def _angles(v: Array) -> tuple[Array, Array]:
    lon = np.degrees(np.arctan2(v[1], v[0])) % 360.0
    lat = np.degrees(np.arcsin(np.clip(v[2], -1.0, 1.0)))
    return lon, lat


def ecliptic(ra: Array, dec: Array) -> tuple[Array, Array]:
    """Ecliptic longitude and latitude [deg] (mean obliquity of J2000)."""
    x, y, z = unit_vector(ra, dec)
    c, s = np.cos(_OBLIQUITY), np.sin(_OBLIQUITY)
    return _angles(np.array([x, c * y + s * z, -s * y + c * z]))


def galactic(ra: Array, dec: Array) -> tuple[Array, Array]:
    """Galactic longitude and latitude [deg] (astropy's ICRS → Galactic transformation)."""
    from astropy.coordinates import SkyCoord  # slow to import; only the simulator needs it

    gal = SkyCoord(
        np.asarray(ra, np.float64), np.asarray(dec, np.float64), unit="deg", frame="icrs"
    ).galactic
    return np.asarray(gal.l.deg, np.float64), np.asarray(gal.b.deg, np.float64)


def sun_longitude(mjd: float) -> float:
    """Apparent ecliptic longitude of the Sun [deg] (low-precision almanac formula)."""
    n = mjd - 51544.5
    g = np.radians(357.528 + 0.9856003 * n)
    return float((280.460 + 0.9856474 * n + 1.915 * np.sin(g) + 0.020 * np.sin(2 * g)) % 360.0)


_LETTERS = np.array(list("ABCDEFGHJKLMNOPQRSTUVWXYZ"))  # MPC half-month letters (no I)
_SECOND = np.array(list("ABCDEFGHJKLMNOPQRSTUVWXYZ"))


def _designations(rng: np.random.Generator, k: int) -> tuple[list[str], list[str]]:
    """Provisional designations, unpacked ("2017 EM6") and packed ("K17E06M")."""
    year = rng.integers(1998, 2026, k)
    half = _LETTERS[rng.integers(0, 24, k)]
    second = _SECOND[rng.integers(0, 25, k)]
    cycle = rng.integers(0, 100, k)
    unpacked = [
        f"{y} {h}{s}{c if c else ''}"
        for y, h, s, c in zip(year.tolist(), half, second, cycle.tolist(), strict=True)
    ]
    packed = [
        f"K{y % 100:02d}{h}{c:02d}{s}"
        for y, h, s, c in zip(year.tolist(), half, second, cycle.tolist(), strict=True)
    ]
    return unpacked, packed


def asteroid(rng: np.random.Generator, ctx: Context) -> Truth:
    """Main-belt asteroids (85%) and fast, trailed near-Earth objects (15%)."""
    k = ctx.k
    neo = rng.random(k) < 0.15
    rate = np.where(neo, rng.uniform(2.0, 20.0, k), rng.uniform(0.15, 0.35, k))  # deg/day
    trail = np.hypot(rate * 1.25, 0.45)  # arcsec in a 30 s exposure, plus the fit's floor
    amp = _snr(rng, k, 1.1, 6.0) * ctx.sigma
    lam, beta = ecliptic(ctx.ra, ctx.dec)
    glon, glat = galactic(ctx.ra, ctx.dec)
    lam_sun = sun_longitude(ctx.now)
    cos_elong = np.cos(np.radians(beta)) * np.cos(np.radians(lam - lam_sun))
    elong = np.degrees(np.arccos(np.clip(cos_elong, -1.0, 1.0)))
    r = np.where(neo, rng.uniform(1.05, 1.6, k), rng.uniform(2.0, 3.3, k))
    s_e = np.sin(np.radians(elong))
    delta = cos_elong + np.sqrt(np.maximum(r * r - s_e * s_e, 1e-6))
    phase = np.degrees(np.arcsin(np.clip(s_e / r, -1.0, 1.0)))
    vmag = AB_ZERO_POINT_NJY - 2.5 * np.log10(amp) + 0.2
    h_mag = vmag - 5.0 * np.log10(r * delta) - 0.03 * phase
    sun = np.radians(lam_sun)
    c, s = np.cos(_OBLIQUITY), np.sin(_OBLIQUITY)
    earth = -np.array([np.cos(sun), c * np.sin(sun), s * np.sin(sun)])  # au, equatorial
    topo = unit_vector(ctx.ra, ctx.dec) * delta
    helio = topo + earth[:, None]
    speed = 29.78 / np.sqrt(r)  # km/s, circular
    vdir = rng.standard_normal((3, k))
    vdir /= np.linalg.norm(vdir, axis=0)
    helio_v = vdir * speed
    topo_v = helio_v - np.array([-29.78 * earth[1], 29.78 * earth[0], 0.0])[:, None]
    a_orb = np.where(neo, rng.uniform(1.0, 2.2, k), r * rng.uniform(0.95, 1.1, k))
    e = np.where(neo, rng.uniform(0.2, 0.6, k), rng.uniform(0.02, 0.3, k))
    period = 365.25 * a_orb**1.5
    off_ra = rng.normal(0.0, 0.1, k)
    off_dec = rng.normal(0.0, 0.1, k)
    unpacked, packed = _designations(rng, k)
    trailed = rng.random(k) < 0.1  # a few slow ones get a spurious trail fit too
    sso: dict[str, Array | list[str]] = {  # designations are strings
        "eclLambda": lam,
        "eclBeta": beta,
        "galLon": glon,
        "galLat": glat,
        "elongation": elong,
        "phaseAngle": phase,
        "topoRange": delta,
        "topoRangeRate": rng.normal(0.0, 5.0, k),
        "helioRange": r,
        "helioRangeRate": rng.normal(0.0, 3.0, k),
        "ephRa": ctx.ra - off_ra / 3600.0 / np.cos(np.radians(ctx.dec)),
        "ephDec": ctx.dec - off_dec / 3600.0,
        "ephVmag": vmag,
        "ephRate": rate,
        "ephRateRa": rate * vdir[0],
        "ephRateDec": rate * vdir[1],
        "ephOffset": np.hypot(off_ra, off_dec),
        "ephOffsetRa": off_ra,
        "ephOffsetDec": off_dec,
        "ephOffsetAlongTrack": off_ra,
        "ephOffsetCrossTrack": off_dec,
        "helio_x": helio[0],
        "helio_y": helio[1],
        "helio_z": helio[2],
        "helio_vx": helio_v[0],
        "helio_vy": helio_v[1],
        "helio_vz": helio_v[2],
        "helio_vtot": np.linalg.norm(helio_v, axis=0),
        "topo_x": topo[0],
        "topo_y": topo[1],
        "topo_z": topo[2],
        "topo_vx": topo_v[0],
        "topo_vy": topo_v[1],
        "topo_vz": topo_v[2],
        "topo_vtot": np.linalg.norm(topo_v, axis=0),
        "diaDistanceRank": np.ones(k, np.int64),
        # schema 8/9 spellings of the same quantities
        "eclipticLambda": lam,
        "eclipticBeta": beta,
        "galacticL": glon,
        "galacticB": glat,
        "heliocentricDist": r,
        "topocentricDist": delta,
        "predictedVMagnitude": vmag,
        "residualRa": off_ra,
        "residualDec": off_dec,
        "heliocentricX": helio[0],
        "heliocentricY": helio[1],
        "heliocentricZ": helio[2],
        "heliocentricVX": helio_v[0],
        "heliocentricVY": helio_v[1],
        "heliocentricVZ": helio_v[2],
        "topocentricX": topo[0],
        "topocentricY": topo[1],
        "topocentricZ": topo[2],
        "topocentricVX": topo_v[0],
        "topocentricVY": topo_v[1],
        "topocentricVZ": topo_v[2],
        # orbits (mpc_orbits, MPCORB)
        "a": a_orb,
        "e": e,
        "q": a_orb * (1.0 - e),
        "i": np.abs(rng.normal(0.0, 8.0, k)),
        "incl": np.abs(rng.normal(0.0, 8.0, k)),
        "node": rng.uniform(0.0, 360.0, k),
        "argperi": rng.uniform(0.0, 360.0, k),
        "peri": rng.uniform(0.0, 360.0, k),
        "mean_anomaly": rng.uniform(0.0, 360.0, k),
        "M": rng.uniform(0.0, 360.0, k),
        "period": period,
        "mean_motion": 360.0 / period,
        "h": h_mag,
        "mpcH": h_mag,
        "g": np.full(k, 0.15),
        "epoch_mjd": np.full(k, 61200.0),
        "epoch": np.full(k, 61200.0),
        "nopp": rng.integers(1, 15, k),
        "arc_length_total": rng.uniform(5.0, 9000.0, k),
        "nobs_total": rng.integers(10, 2000, k),
        "earth_moid": np.where(neo, rng.uniform(0.0, 0.3, k), rng.uniform(0.8, 2.5, k)),
        "designation": unpacked,
        "unpacked_primary_provisional_designation": unpacked,
        "packed_primary_provisional_designation": packed,
        "mpcDesignation": unpacked,
        "orbit_type_int": np.where(neo, 10, 11),
        "trailed": trailed | neo,
        "trailLength": trail,
    }
    return Truth(
        diff_now=amp,
        template_now=np.zeros(k),
        host_px=np.zeros(k),
        extendedness=np.where(neo, rng.uniform(0.5, 1.0, k), rng.uniform(0.0, 0.3, k)),
        reliability=0.6 + 0.4 * rng.beta(8.0, 1.0, k),
        overrides={"trailLength": trail, "glint_trail": np.zeros(k, bool)},
        sso=sso,
    )


# --- bogus --------------------------------------------------------------------------------

#: Kinds of bogus detection and their shares within the bogus population.
BOGUS_KINDS = {
    "dipole": 0.30,
    "cosmic_ray": 0.18,
    "negative": 0.17,
    "saturated": 0.10,
    "bad_pixels": 0.08,
    "edge": 0.09,
    "streak": 0.08,
}


def bogus(rng: np.random.Generator, ctx: Context) -> Truth:
    """Artefacts of image subtraction; every one has reliability < 0.3 (see BOGUS_KINDS)."""
    k = ctx.k
    names = list(BOGUS_KINDS)
    kind = rng.choice(len(names), size=k, p=np.array(list(BOGUS_KINDS.values())))
    is_ = {n: kind == i for i, n in enumerate(names)}
    snr = np.where(
        is_["saturated"] | is_["streak"], _snr(rng, k, 1.2, 6.0), _snr(rng, k, 0.45, 5.2)
    )
    sign = np.where(is_["negative"], -1.0, np.where(is_["dipole"], _sign(rng, k, 0.5), 1.0))
    amp = snr * ctx.sigma
    star = np.where(
        is_["saturated"],
        mag_to_njy(rng.uniform(12.5, 15.5, k)),
        np.where(is_["dipole"], mag_to_njy(rng.uniform(17.0, 21.5, k)), 0.0),
    )
    dip_host = is_["dipole"] & (rng.random(k) < 0.5)
    host_px = np.where(dip_host, rng.uniform(2.0, 3.5, k), 0.0)
    ext = np.select(
        [is_["cosmic_ray"], is_["streak"], is_["dipole"]],
        [np.zeros(k), rng.uniform(0.9, 1.0, k), rng.uniform(0.2, 1.0, k)],
        rng.uniform(0.0, 0.7, k),
    )

    def some(mask: Array, p: float) -> Array:
        return mask & (rng.random(k) < p)

    over: dict[str, Array] = {
        "isDipole": is_["dipole"],
        "dipoleFitAttempted": is_["dipole"] | some(~is_["dipole"], 0.05),
        "pixelFlags_cr": is_["cosmic_ray"],
        "pixelFlags_crCenter": some(is_["cosmic_ray"], 0.7),
        "pixelFlags_saturated": is_["saturated"],
        "pixelFlags_saturatedCenter": some(is_["saturated"], 0.5),
        "pixelFlags_suspect": some(is_["saturated"], 0.4),
        "pixelFlags_bad": is_["bad_pixels"],
        "pixelFlags_interpolated": is_["bad_pixels"] | some(is_["cosmic_ray"], 0.6),
        "pixelFlags_interpolatedCenter": some(is_["bad_pixels"], 0.5),
        "pixelFlags_edge": is_["edge"],
        "psfFlux_flag_edge": is_["edge"],
        "apFlux_flag_apertureTruncated": is_["edge"],
        "forced_PsfFlux_flag_edge": some(is_["edge"], 0.5),
        "pixelFlags_streak": is_["streak"],
        "pixelFlags_streakCenter": some(is_["streak"], 0.6),
        "glint_trail": some(is_["streak"], 0.3),
        "dipoleMeanFlux": np.where(is_["dipole"], amp * rng.uniform(2.0, 6.0, k), np.nan),
        "dipoleFluxDiff": np.where(is_["dipole"], sign * amp * rng.uniform(0.3, 1.0, k), np.nan),
        "dipoleLength": np.where(is_["dipole"], rng.uniform(0.4, 2.5, k), np.nan),
        "dipoleAngle": np.where(is_["dipole"], rng.uniform(-180.0, 180.0, k), np.nan),
        "dipoleChi2": np.where(is_["dipole"], rng.uniform(200.0, 3000.0, k), np.nan),
        "trailLength": np.where(is_["streak"], rng.uniform(8.0, 40.0, k), np.nan),
        "bogus_kind": kind,  # private: read by the cutout maker, not a schema field
    }
    # a few artefacts recur at the same place (a bright star's residuals, a hot column)
    recur = rng.random(k) < 0.12
    owner, mjd, band = _epochs(rng, ctx, 0.5)
    keep = recur[owner]
    owner, mjd, band = owner[keep], mjd[keep], band[keep]
    force = rng.random(owner.size) < 0.08
    h_diff = np.where(force, _sign(rng, owner.size, 0.5) * 6.0 * sky_sigma(band), 0.0)
    return Truth(
        diff_now=sign * amp,
        template_now=star,
        host_px=host_px,
        extendedness=ext,
        reliability=0.3 * rng.beta(1.3, 3.5, k),
        h_owner=owner,
        h_mjd=mjd,
        h_band=band,
        h_diff=h_diff,
        h_template=star[owner],
        h_force=force,
        overrides=over,
    )


#: name -> (model, share of a visit's alerts). ``variable`` takes whatever the others leave;
#: ``asteroid``'s share is scaled down away from the ecliptic (see engine.local.simulate).
Model = Callable[[np.random.Generator, Context], Truth]
POPULATIONS: dict[str, tuple[Model, float]] = {
    "bogus": (bogus, 0.60),
    "variable": (variable, 0.0),
    "asteroid": (asteroid, 0.10),
    "supernova": (supernova, 0.0025),
    "fast_transient": (fast_transient, 0.002),
    "flare": (flare, 0.002),
    "periodic": (periodic, 0.0025),
    "agn": (agn, 0.0025),
    "microlensing": (microlensing, 0.002),
}
