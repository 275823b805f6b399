"""The helper library: flags, photometry, sky geometry, watchlists and time, each against a
plain per-row reference (astropy where it is the reference), plus the guarantees filters rely
on: documented, deterministic, nothing that reaches the interpreter."""

from __future__ import annotations

import math
import re
import types
from pathlib import Path

import numpy as np
import pytest

from engine.decode import decode_messages
from sandbox import helpers as h
from sandbox.compile import compile_filter
from sandbox.run import InProcessRunner
from sandbox.store import ColumnStore
from sandbox.view.columns import AlertsView, Column

DOCS = Path(__file__).resolve().parents[1] / "docs" / "filters.md"


def col(values, nulls=None) -> Column:
    """A column from a list, with an optional null mask."""
    return Column(np.asarray(values), None if nulls is None else np.asarray(nulls, bool))


@pytest.fixture(scope="module")
def real(v11_packets: list[bytes]) -> tuple[AlertsView, list[dict], object]:
    """The 64 real alerts: view, per-row dicts and the batch."""
    batch = decode_messages(v11_packets).batch
    return AlertsView(ColumnStore(batch)), batch.to_pylist(), batch


# --- flags and nulls ---------------------------------------------------------------------------


def test_flag_helpers_treat_null_as_not_set_unless_asked() -> None:
    """any_set/all_set/none_set/is_set: null is False by default, `null=True` counts it as set."""
    a = col([True, False, False, True], [False, False, True, False])
    b = col([False, False, True, True], [False, True, False, False])
    assert h.any_set(a, b).tolist() == [True, False, True, True]
    assert h.all_set(a, b).tolist() == [False, False, False, True]
    assert h.none_set(a, b).tolist() == [False, True, False, False]
    assert h.none_set(a, b, null=True).tolist() == [False, False, False, False]
    assert h.is_set(a).tolist() == [True, False, False, True]
    assert h.is_set(a, null=True).tolist() == [True, False, True, True]


def test_if_else_picks_per_alert_and_keeps_nulls() -> None:
    """if_else takes `then` where the condition holds (null condition: otherwise)."""
    cond = col([True, False, True], [False, False, True])
    out = h.if_else(cond, col([1.0, 2.0, 3.0], [True, False, False]), 9.0)
    assert out.tolist() == [None, 9.0, 9.0]


def test_minimum_maximum_propagate_nulls() -> None:
    """minimum/maximum work element-wise and a null side gives null."""
    a, b = col([1.0, 5.0, 3.0], [False, False, True]), col([2.0, 4.0, 0.0])
    assert h.minimum(a, b).tolist() == [1.0, 4.0, None]
    assert h.maximum(a, 4.5).tolist() == [4.5, 5.0, None]


# --- photometry -------------------------------------------------------------------------------


def test_magnitudes_from_fluxes_and_back() -> None:
    """AB zero point 31.4 for nJy; non-positive flux gives NaN; the round trip is exact."""
    f = col([1.0, 3631e9, -5.0, 100.0], [False, False, False, True])
    m = h.mag_from_flux(f)
    assert m.tolist()[0] == pytest.approx(31.4)
    assert m.tolist()[1] == pytest.approx(0.0, abs=1e-3)  # 3631 Jy is AB magnitude 0
    assert math.isnan(m.tolist()[2]) and m.tolist()[3] is None
    assert h.flux_from_mag(h.mag_from_flux(col([123.0]))).tolist()[0] == pytest.approx(123.0)
    assert h.mag_from_flux(1000.0) == pytest.approx(31.4 - 7.5)
    assert not (m < 40).tolist()[2]  # NaN fails every comparison


def test_colour_ratio_and_magnitude_error() -> None:
    """colour = m_a - m_b; flux_ratio is null for a zero denominator; mag_err = 1.0857 err/flux."""
    a, b = col([100.0, 100.0]), col([10.0, 0.0])
    assert h.colour(a, b).tolist()[0] == pytest.approx(-2.5)
    assert h.flux_ratio(a, b).tolist() == [10.0, None]
    assert h.mag_err(col([100.0]), col([10.0])).tolist()[0] == pytest.approx(0.10857, rel=1e-4)


def test_photometry_on_lightcurves(real) -> None:
    """mag_from_flux applies point by point to a lightcurve and reduces like any list."""
    view, rows, _ = real
    got = h.mag_from_flux(view.history("psfFlux")).min().tolist()
    for g, r in zip(got, rows, strict=True):
        fl = [p["psfFlux"] for p in (r["prvDiaSources"] or [])] + [r["diaSource"]["psfFlux"]]
        mags = [-2.5 * math.log10(x) + 31.4 for x in fl if x > 0]
        assert (g is None and not mags) or g == pytest.approx(min(mags), rel=1e-6)


# --- sky ------------------------------------------------------------------------------------


def _random_sky(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))


def test_separation_matches_astropy() -> None:
    """Angular separation equals astropy's, at large and arcsecond scales."""
    coords = pytest.importorskip("astropy.coordinates")
    import astropy.units as u

    ra, dec = _random_sky(500, 1)
    ra2, dec2 = _random_sky(500, 2)
    ours = h.separation(col(ra), col(dec), col(ra2), col(dec2)).tolist()
    ref = (
        coords.SkyCoord(ra * u.deg, dec * u.deg)
        .separation(coords.SkyCoord(ra2 * u.deg, dec2 * u.deg))
        .deg
    )
    np.testing.assert_allclose(ours, ref, atol=1e-9)
    small = h.separation(col([10.0]), col([-30.0]), 10.0, -30.0 + 0.5 / 3600).tolist()[0]
    assert small * 3600 == pytest.approx(0.5, rel=1e-9)


def test_galactic_and_ecliptic_latitude_match_astropy() -> None:
    """Galactic and ecliptic coordinates equal astropy's to well under an arcsecond."""
    coords = pytest.importorskip("astropy.coordinates")
    import astropy.units as u

    ra, dec = _random_sky(500, 3)
    c = coords.SkyCoord(ra * u.deg, dec * u.deg, frame="icrs")
    g = c.galactic
    np.testing.assert_allclose(h.galactic_latitude(col(ra), col(dec)).tolist(), g.b.deg, atol=3e-5)
    dlon = (
        np.asarray(h.galactic_longitude(col(ra), col(dec)).tolist()) - g.l.deg + 180
    ) % 360 - 180
    np.testing.assert_allclose(dlon, 0, atol=3e-5)
    e = c.transform_to(coords.BarycentricMeanEcliptic(equinox="J2000"))
    np.testing.assert_allclose(
        h.ecliptic_latitude(col(ra), col(dec)).tolist(), e.lat.deg, atol=1e-4
    )
    # Known points: the Galactic centre and the north Galactic pole.
    assert h.galactic_latitude(col([266.40499]), col([-28.93617])).tolist()[0] == pytest.approx(
        0, abs=1e-3
    )
    assert h.galactic_latitude(col([192.85948]), col([27.12825])).tolist()[0] == pytest.approx(
        90, abs=1e-4
    )


def test_cone_is_a_separation_cut() -> None:
    """cone(ra, dec, ra0, dec0, r) is separation <= r, across RA = 0 too."""
    ra, dec = col([359.9995, 0.0005, 10.0]), col([0.0, 0.0, 0.0])
    assert h.cone(ra, dec, 0.0, 0.0, 2 * h.ARCSEC).tolist() == [True, True, False]


def _brute_nearest(ra, dec, targets, radius_deg):
    tra, tdec = np.radians(np.asarray(targets).T)
    out = []
    for a, d in zip(np.radians(ra), np.radians(dec), strict=True):
        s = h._haversine(a, d, tra, tdec)
        k = int(np.argmin(s))
        out.append(k if s[k] <= math.radians(radius_deg) else None)
    return out


@pytest.mark.parametrize("radius", [2 * h.ARCSEC, 30 * h.ARCSEC, 1.0])
def test_watchlist_and_nearest_match_brute_force(radius: float) -> None:
    """watchlist/nearest equal a brute-force search, including near the poles and RA wrap."""
    tra, tdec = _random_sky(3000, 4)
    tdec[:5] = [89.9999, -89.9999, 0.0, 0.0, 45.0]
    tra[:5] = [10.0, 200.0, 359.99999, 0.0, 180.0]
    targets = list(zip(tra.tolist(), tdec.tolist(), strict=True))
    rng = np.random.default_rng(5)
    pick = rng.integers(0, len(targets), 300)
    jitter = radius * rng.uniform(-0.8, 0.8, (300, 2))
    ra = np.concatenate(
        [
            (tra[pick] + jitter[:, 0] / np.maximum(np.cos(np.radians(tdec[pick])), 1e-3)) % 360,
            _random_sky(300, 6)[0],
            [0.00001, 89.0],
        ]
    )
    dec = np.concatenate(
        [np.clip(tdec[pick] + jitter[:, 1], -90, 90), _random_sky(300, 6)[1], [0.0, 89.99995]]
    )
    want = _brute_nearest(ra, dec, targets, radius)
    got = h.nearest(col(ra), col(dec), targets, radius).tolist()
    assert got == want
    assert h.watchlist(col(ra), col(dec), targets, radius).tolist() == [w is not None for w in want]


def test_watchlist_of_thousands_stays_fast() -> None:
    """10,000 alerts against 10,000 targets at 2 arcsec: well under 50 ms."""
    import time

    tra, tdec = _random_sky(10_000, 7)
    targets = list(zip(tra.tolist(), tdec.tolist(), strict=True))
    ra, dec = col(_random_sky(10_000, 8)[0]), col(_random_sky(10_000, 8)[1])
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        h.watchlist(ra, dec, targets, 2 * h.ARCSEC)
        best = min(best, time.perf_counter() - t0)
    assert best < 0.05, f"watchlist took {best * 1e3:.1f} ms"


def test_watchlist_rejects_malformed_targets() -> None:
    """A watchlist is a list of (ra, dec) pairs with valid declinations."""
    with pytest.raises(ValueError):
        h.watchlist(col([1.0]), col([1.0]), [(1.0, 95.0)], 1.0)
    with pytest.raises(TypeError):
        h.watchlist(col([1.0]), col([1.0]), "M31", 1.0)


# --- time -----------------------------------------------------------------------------------


def test_days_since_first_detection_on_real_alerts(real) -> None:
    """Days since the earliest of previous and current sources."""
    view, rows, _ = real
    got = h.days_since_first_detection(view).tolist()
    for g, r in zip(got, rows, strict=True):
        t = [p["midpointMjdTai"] for p in (r["prvDiaSources"] or [])] + [
            r["diaSource"]["midpointMjdTai"]
        ]
        assert g == pytest.approx(r["diaSource"]["midpointMjdTai"] - min(t), abs=1e-9)


def test_rate_between_is_null_for_equal_times() -> None:
    """rate_between gives change per day, null for zero time difference or nulls."""
    out = h.rate_between(
        col([20.0, 19.0, 18.0]),
        col([10.0, 5.0, 7.0]),
        col([21.0, 20.0, 17.0], [False, False, True]),
        col([8.0, 5.0, 6.0]),
    )
    assert out.tolist() == [-0.5, None, None]


# --- what filters can reach ---------------------------------------------------------------------


def test_every_exported_helper_is_documented_with_an_example() -> None:
    """Every helper name, sky member and view method appears in docs/filters.md in code."""
    text = DOCS.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    prose = re.sub(r"```python\n.*?```", "", text, flags=re.S)
    code = "\n".join(blocks) + " ".join(re.findall(r"`([^`]+)`", prose))
    names = [n for n in h.exported() if n not in {"pi", "nan", "inf"}]
    names += [f"sky.{m}" for m in h.sky._members]
    from sandbox.view.columns import ListColumn

    names += [f".{m}(" for m in ListColumn._public | Column._public if m != "dtype"]
    missing = [n for n in names if n not in code]
    assert not missing, f"undocumented in docs/filters.md: {missing}"


def test_exports_are_plain_functions_numbers_or_namespaces() -> None:
    """No module, class or numpy object is handed to filters."""
    for name, value in h.exported().items():
        assert isinstance(value, types.FunctionType | h.Namespace | float | tuple), name
        assert not isinstance(value, np.ndarray | types.ModuleType | type), name


def test_helpers_are_deterministic(real) -> None:
    """The same filter on the same batch gives the same mask every time."""
    _, _, batch = real
    src = '"""d"""\ndef filter(alerts):\n    ds = alerts.diaSource\n    return (sky.galactic_latitude(ds.ra, ds.dec) > 0) | (alerts.history("psfFlux").median() > 1000)\n'
    runner = InProcessRunner([("d", compile_filter(src, "d.py"))])
    masks = [runner.run(batch)[0].mask for _ in range(3)]
    assert masks[0] is not None and all((m == masks[0]).all() for m in masks)


def test_per_alert_types_expose_only_their_public_methods(real) -> None:
    """refine/filter_alert can call Image methods but not reach its array."""
    _, _, batch = real
    ok = '"""i"""\ndef filter(alerts):\n    return alerts.diaSource.snr > 0\ndef refine(alert):\n    img = alert["cutoutScience"]\n    return img.max() >= img.centre() and len(alert.keys()) > 3\n'
    bad = '"""b"""\ndef filter_alert(alert):\n    return alert["cutoutScience"].flags is None\n'
    runner = InProcessRunner(
        [("ok", compile_filter(ok, "ok.py")), ("bad", compile_filter(bad, "bad.py"))]
    )
    good, refused = runner.run(batch)
    assert good.fault is None and good.passed == len(batch)
    assert refused.fault is not None and "not available in filters" in str(refused.fault)
