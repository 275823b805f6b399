"""engine.local.simulate: sample nights are valid, deterministic, realistic and honest about truth."""

from __future__ import annotations

import io
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
from fastavro.validation import validate

from engine.alerts.schema import load_schema
from engine.errors import ConfigError, SchemaError, SourceError
from engine.local.simulate import POPULATIONS, simulate_night, truth, truth_path
from engine.local.simulate.builder import CUTOUT_BYTES
from engine.sources.night import night_info, read_night

BANDS = "ugrizy"
CUTOUTS = ("cutoutDifference", "cutoutScience", "cutoutTemplate")


def _read(path: Path) -> list[dict[str, Any]]:
    with open(path, "rb") as fo:
        return list(fastavro.reader(fo))


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory):
    """2 visits x 200 alerts in v11.1 (the second visit is the ECDFS deep field)."""
    path = tmp_path_factory.mktemp("sim") / "night.avro"
    summary = simulate_night(path, visits=2, alerts_per_visit=200, seed=3, progress=False)
    return path, summary, _read(path)


def _pop(night) -> dict[int, str]:
    return truth(night[0])


def test_same_arguments_give_identical_bytes(tmp_path: Path) -> None:
    """Determinism: same arguments -> byte-identical night and sidecar."""
    a, b, c = (tmp_path / n for n in ("a.avro", "b.avro", "c.avro"))
    for p, seed in ((a, 5), (b, 5), (c, 6)):
        simulate_night(p, visits=2, alerts_per_visit=60, seed=seed, progress=False)
    assert a.read_bytes() == b.read_bytes()
    assert truth_path(a).read_bytes() == truth_path(b).read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_first_visits_do_not_depend_on_night_length(tmp_path: Path) -> None:
    """Each visit has its own random stream: a 1-visit night equals a 2-visit night's first visit."""
    one, two = tmp_path / "1.avro", tmp_path / "2.avro"
    simulate_night(one, visits=1, alerts_per_visit=50, seed=2, progress=False)
    simulate_night(two, visits=2, alerts_per_visit=50, seed=2, progress=False)
    assert bytes(next(read_night(one)).data) == bytes(next(read_night(two)).data)


@pytest.mark.parametrize("version", ["7.0", "7.4", "9.0", "10.0", "11.1"])
def test_every_record_validates_and_round_trips(tmp_path: Path, version: str) -> None:
    """Every alert of a night in each schema version validates and re-encodes to the same bytes."""
    path = tmp_path / "v.avro"
    s = simulate_night(
        path, visits=1, alerts_per_visit=110, seed=1, schema_version=version, progress=False
    )
    schema = load_schema(version)
    records = _read(path)
    assert len(records) == s.alerts == 110 and s.schema_version == version
    assert night_info(path)[0].version == schema.version
    block = next(read_night(path))
    buf = io.BytesIO()
    for record in records:
        assert validate(record, schema.avro), record["diaSource"]["diaSourceId"]
        fastavro.schemaless_writer(buf, schema.avro, record)
    assert buf.getvalue() == bytes(block.data)


def test_visits_are_blocks_in_time_order(night) -> None:
    """One block per visit, in time order; visit ids, band, time and detector geometry are Rubin's."""
    path, summary, _ = night
    schema = load_schema("11.1")
    blocks = list(read_night(path))
    assert [b.visit for b in blocks] == list(summary.visits)
    assert all(b.count == 200 for b in blocks)
    assert str(summary.visits[0]).startswith("20251120")  # observing day of MJD 61000
    mids = []
    for b in blocks:
        buf = io.BytesIO(b.data)
        alerts = [fastavro.schemaless_reader(buf, schema.avro) for _ in range(b.count)]
        src = [a["diaSource"] for a in alerts]
        assert {s["visit"] for s in src} == {b.visit}
        assert len({s["band"] for s in src}) == 1 and src[0]["band"] in BANDS
        assert len({s["midpointMjdTai"] for s in src}) == 1
        assert all(
            0 <= s["detector"] <= 188 and 0 <= s["x"] <= 4072 and 0 <= s["y"] <= 4000 for s in src
        )
        assert all(0 < (s["timeProcessedMjdTai"] - s["midpointMjdTai"]) * 86400 < 300 for s in src)
        ra = np.radians([s["ra"] for s in src])
        dec = np.radians([s["dec"] for s in src])
        v = np.array([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])
        centre = v.mean(axis=1) / np.linalg.norm(v.mean(axis=1))
        assert np.degrees(np.arccos(np.clip(centre @ v, -1, 1))).max() < 2.5  # one 9.6 deg^2 field
        mids.append(src[0]["midpointMjdTai"])
    assert 25 < (mids[1] - mids[0]) * 86400 < 60


def test_second_visit_is_the_ecdfs_deep_field(night) -> None:
    """The documented pointing list puts visit 1 on ECDFS (RA 53.13, Dec -28.10)."""
    _, summary, records = night
    ddf = [r for r in records if r["diaSource"]["visit"] == summary.visits[1]]
    assert {r["observation_reason"] for r in ddf} == {"ddf_ecdfs"}
    assert all(abs(r["diaSource"]["dec"] + 28.10) < 2.2 for r in ddf)
    assert all(abs(r["diaSource"]["ra"] - 53.13) < 2.6 for r in ddf)


def test_readme_facts_hold(night) -> None:
    """The real-data facts: history nulls, SSO shape, nDiaSources, reliability, snr, nullable flags."""
    _, _, records = night
    sso = [r for r in records if r["ssSource"] is not None]
    assert sso
    for r in sso:
        d = r["diaSource"]
        assert (
            r["diaObject"] is None
            and r["prvDiaForcedSources"] is None
            and r["prvDiaSources"] is None
        )
        assert d["diaObjectId"] in (None, 0) and d["ssObjectId"] > 0
        assert r["ssSource"]["diaSourceId"] == d["diaSourceId"] == r["diaSourceId"]
        assert r["ssSource"]["ssObjectId"] == d["ssObjectId"]
        if r["mpc_orbits"] is not None:
            assert r["mpc_orbits"]["designation"] == r["ssSource"]["designation"]
    assert any(r["mpc_orbits"] is not None for r in sso)
    others = [r for r in records if r["ssSource"] is None]
    for r in others:
        assert r["diaObject"]["nDiaSources"] == 1 + len(r["prvDiaSources"] or [])
        assert r["prvDiaSources"] != []  # null, never an empty list
        assert r["prvDiaForcedSources"] is not None
        if r["prvDiaSources"] is None:
            assert r["prvDiaForcedSources"] == []
    assert sum(r["prvDiaSources"] is None for r in records) > 0.4 * len(records)
    assert max(len(r["prvDiaSources"] or []) for r in records) >= 100
    src = [r["diaSource"] for r in records]
    assert all(s["reliability"] is not None and 0 <= s["reliability"] <= 1 for s in src)
    assert all(5.0 <= s["snr"] <= 450 for s in src)
    assert all(s["timeWithdrawnMjdTai"] is None for s in src)
    assert all(
        math.isclose(s["snr"], abs(s["psfFlux"]) / s["psfFluxErr"], rel_tol=1e-5) for s in src
    )
    assert all(s["isNegative"] == (s["psfFlux"] < 0) for s in src)


def test_ids_are_unique_consistent_and_wide(night) -> None:
    """diaSourceIds are unique 63-bit ints (many > 2**53) and every id reference agrees."""
    _, _, records = night
    ids = [r["diaSourceId"] for r in records]
    ids += [p["diaSourceId"] for r in records for p in r["prvDiaSources"] or []]
    forced = [f["diaForcedSourceId"] for r in records for f in r["prvDiaForcedSources"] or []]
    assert len(set(ids)) == len(ids) and len(set(forced)) == len(forced)
    assert all(0 < i < 2**63 for i in ids + forced)
    assert sum(i > 2**53 for i in ids) > len(ids) / 2
    for r in records:
        assert r["diaSourceId"] == r["diaSource"]["diaSourceId"]
        if r["diaObject"] is None:
            continue
        oid = r["diaObject"]["diaObjectId"]
        assert r["diaSource"]["diaObjectId"] == oid
        assert all(p["diaObjectId"] == oid for p in r["prvDiaSources"] or [])
        assert all(f["diaObjectId"] == oid for f in r["prvDiaForcedSources"] or [])
        if r["prvDiaSources"] is None:
            assert oid == r["diaSourceId"]  # a new object is named after its first detection


def test_history_is_earlier_and_within_a_year(night) -> None:
    """Every earlier point precedes the alert (and is at most 12 months old), in time order."""
    _, _, records = night
    for r in records:
        now = r["diaSource"]["midpointMjdTai"]
        for key in ("prvDiaSources", "prvDiaForcedSources"):
            t = [p["midpointMjdTai"] for p in r[key] or []]
            assert all(now - 366 < x < now for x in t) and t == sorted(t)


def _weighted(f: list[float], e: list[float]) -> tuple[float, float]:
    w = 1 / np.square(e)
    return float(np.sum(w * np.array(f)) / np.sum(w)), float(np.sqrt(1 / np.sum(w)))


def test_object_statistics_agree_with_the_lightcurve(night) -> None:
    """diaObject per-band statistics are those of prvDiaSources + diaSource (and forced photometry)."""
    _, _, records = night

    def close(a: float | None, b: float | None) -> bool:
        if a is None or b is None:
            return a is None and b is None
        return math.isclose(a, b, rel_tol=2e-4, abs_tol=1e-3)

    checked = 0
    for r in records:
        obj = r["diaObject"]
        if obj is None:
            continue
        lc = [*(r["prvDiaSources"] or []), r["diaSource"]]
        assert obj["firstDiaSourceMjdTai"] == min(p["midpointMjdTai"] for p in lc)
        assert obj["lastDiaSourceMjdTai"] == r["diaSource"]["midpointMjdTai"]
        forced = defaultdict(list)
        for f in r["prvDiaForcedSources"] or []:
            forced[f["band"]].append(f)
        for band in BANDS:
            pts = sorted((p for p in lc if p["band"] == band), key=lambda p: p["midpointMjdTai"])
            f = [p["psfFlux"] for p in pts]
            e = [p["psfFluxErr"] for p in pts]
            assert obj[f"{band}_psfFluxNdata"] == len(pts)
            if not pts:
                assert obj[f"{band}_psfFluxMean"] is None and obj[f"{band}_psfFluxMax"] is None
                continue
            mean, err = _weighted(f, e)
            smean, _ = _weighted(
                [p["scienceFlux"] for p in pts], [p["scienceFluxErr"] for p in pts]
            )
            assert close(obj[f"{band}_psfFluxMean"], mean) and close(
                obj[f"{band}_psfFluxMeanErr"], err
            )
            assert close(obj[f"{band}_scienceFluxMean"], smean)
            assert close(obj[f"{band}_psfFluxMin"], min(f)) and close(
                obj[f"{band}_psfFluxMax"], max(f)
            )
            assert close(obj[f"{band}_psfFluxErrMean"], float(np.mean(e)))
            sigma = float(np.std(f, ddof=1)) if len(f) > 1 else None
            assert close(obj[f"{band}_psfFluxSigma"], sigma)
            slopes = [
                (f[i + 1] - f[i]) / (pts[i + 1]["midpointMjdTai"] - pts[i]["midpointMjdTai"])
                for i in range(len(f) - 1)
            ]
            assert close(obj[f"{band}_psfFluxMaxSlope"], max(slopes) if slopes else None)
            fp = forced.get(band)
            fp_mean = (
                _weighted([x["psfFlux"] for x in fp], [x["psfFluxErr"] for x in fp])[0]
                if fp
                else None
            )
            assert close(obj[f"{band}_fpFluxMean"], fp_mean)
            checked += 1
    assert checked > 300


def test_cutouts_are_fits_and_most_of_the_bytes(night) -> None:
    """Cutouts are 2880-block FITS (30x30 image + variance), 75-90% of the night's bytes."""
    path, summary, records = night
    assert CUTOUT_BYTES % 2880 == 0 and 15_000 <= CUTOUT_BYTES <= 30_000
    total = sum(len(r[k]) for r in records for k in CUTOUTS)
    assert total == 3 * CUTOUT_BYTES * len(records)
    assert 0.75 <= total / summary.bytes <= 0.90
    from astropy.io import fits  # only the test needs astropy

    bright = [r for r in records if r["diaSource"]["snr"] > 30 and not r["diaSource"]["isDipole"]]
    for r in bright[:10]:
        hdus = {k: fits.open(io.BytesIO(r[k])) for k in CUTOUTS}
        for h in hdus.values():
            assert h[0].data.shape == (30, 30) and h[0].data.dtype.kind == "f"
            assert h[1].name == "UNCERT" and (h[1].data > 0).all()
            assert math.isclose(h[0].header["CRVAL1"], r["diaSource"]["ra"], abs_tol=1e-9)
        diff = hdus["cutoutDifference"][0].data[10:20, 10:20].sum()
        assert np.sign(diff) == np.sign(r["diaSource"]["psfFlux"])


def test_truth_sidecar_matches_summary_and_is_hidden(night) -> None:
    """truth() names every alert's population; counts equal NightSummary.populations; filters can't see it."""
    path, summary, records = night
    labels = truth(path)
    assert list(labels) == [r["diaSourceId"] for r in records]
    assert Counter(labels.values()) == Counter({k: v for k, v in summary.populations.items() if v})
    assert set(summary.populations) == set(POPULATIONS)
    assert all(summary.populations[p] >= 2 for p in POPULATIONS)  # >= 1 per visit of >= 100 alerts
    assert sum(summary.populations.values()) == summary.alerts == 400
    assert b"microlensing" not in path.read_bytes()
    with pytest.raises(SourceError, match="no truth sidecar"):
        truth(path.with_name("missing.avro"))


def test_populations_carry_their_signatures(night) -> None:
    """Each injected population shows the signature the module docstring promises."""
    _, _, records = night
    pop = _pop(night)
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by[pop[r["diaSourceId"]]].append(r)
    real = [r for p, rs in by.items() if p != "bogus" for r in rs]
    assert all(r["diaSource"]["reliability"] < 0.3 for r in by["bogus"])
    assert all(r["diaSource"]["reliability"] >= 0.3 for r in real)
    bogus_src = [r["diaSource"] for r in by["bogus"]]
    assert any(s["isDipole"] for s in bogus_src) and any(s["pixelFlags_cr"] for s in bogus_src)
    assert any(s["psfFlux"] < 0 for s in bogus_src) and any(s["pixelFlags_edge"] for s in bogus_src)
    assert not any(r["diaSource"]["isDipole"] for r in real)
    assert {p for p, rs in by.items() if any(r["ssSource"] for r in rs)} == {"asteroid"}
    for r in by["fast_transient"]:
        now = r["diaSource"]
        assert now["midpointMjdTai"] - r["prvDiaSources"][0]["midpointMjdTai"] < 6  # a young source
        prev = [p for p in r["prvDiaSources"] if p["band"] == now["band"]][-1]
        rise = (
            2.5
            * math.log10(now["psfFlux"] / prev["psfFlux"])
            / (now["midpointMjdTai"] - prev["midpointMjdTai"])
        )
        assert rise > 0.3
    for r in by["flare"]:
        assert r["diaSource"]["extendedness"] < 0.1 and r["prvDiaSources"]
        fp = [f["psfFlux"] / f["psfFluxErr"] for f in r["prvDiaForcedSources"]]
        assert abs(float(np.median(fp))) < 1.5  # quiescent between flares
    for name in ("periodic", "agn", "variable"):
        assert np.median([len(r["prvDiaForcedSources"]) for r in by[name]]) > 50
    g_i = []  # ordinary variables have the colours of field stars, redder than RR Lyrae
    for r in by["variable"]:
        g = [f["scienceFlux"] for f in r["prvDiaForcedSources"] or [] if f["band"] == "g"]
        i = [f["scienceFlux"] for f in r["prvDiaForcedSources"] or [] if f["band"] == "i"]
        if len(g) >= 3 and len(i) >= 3 and np.median(g) > 0 and np.median(i) > 0:
            g_i.append(-2.5 * math.log10(np.median(g) / np.median(i)))
    assert len(g_i) > 20 and np.median(g_i) > 0.6 and np.mean(np.array(g_i) < 0.3) < 0.1
    assert all(r["diaSource"]["templateFlux"] > 0 for r in by["supernova"])


def test_bad_arguments_raise_clear_errors(tmp_path: Path) -> None:
    """Out-of-range arguments raise ConfigError naming the argument; unknown schemas SchemaError."""
    out = tmp_path / "x.avro"
    for kwargs, word in (
        ({"visits": 0}, "visits"),
        ({"alerts_per_visit": 0}, "alerts_per_visit"),
        ({"visits": 2.5}, "visits"),
        ({"seed": -1}, "seed"),
        ({"start_mjd": 100.0}, "start_mjd"),
        ({"schema_version": "6.0"}, "7.0"),
    ):
        with pytest.raises(ConfigError, match=word):
            simulate_night(out, progress=False, **kwargs)
    with pytest.raises(SchemaError, match="available"):
        simulate_night(out, schema_version="99.0", progress=False)
    assert not out.exists() and not truth_path(out).exists()


def test_progress_bar_goes_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With progress=True a one-line bar with visits and alerts/s is drawn on stderr only."""
    simulate_night(tmp_path / "p.avro", visits=2, alerts_per_visit=20, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "2/2 visits" in captured.err and "alerts/s" in captured.err  # plain lines: not a tty


def test_every_cutout_is_valid_fits_for_astropy(night) -> None:
    """astropy.io.fits reads every cutout of the night without a warning, and MJD-OBS is the
    alert's midpoint (the hand-written FITS writer agrees with the maintained reader)."""
    import warnings

    from astropy.io import fits

    path, summary, records = night
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for r in records:
            for k in CUTOUTS:
                with fits.open(io.BytesIO(r[k])) as h:
                    h.verify("exception")
                    assert h[0].data.shape == (30, 30)
                    assert math.isclose(
                        h[0].header["MJD-OBS"], r["diaSource"]["midpointMjdTai"], abs_tol=1e-8
                    )


def test_timestamps_are_unix_time_from_tai() -> None:
    """MJD(TAI) becomes Unix time 37 s behind a naive conversion, as astropy's time scales say."""
    from astropy.time import Time

    from engine.local.simulate.builder import _micros

    mjd = np.array([61000.0, 61000.123456789, 60000.5])
    expected = np.round(Time(mjd, format="mjd", scale="tai").unix * 1e6).astype(np.int64)
    assert (_micros(mjd) == expected).all()
    assert (np.round((mjd - 40587.0) * 86400e6).astype(np.int64) - _micros(mjd) == 37_000_000).all()
