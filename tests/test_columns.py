"""The read-only batch view: null rules, lightcurve reductions, history, per-band picks and the
per-alert view, checked against straightforward per-row Python on real v11.1 packets and on
small hand-built batches with nulls."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pyarrow as pa
import pytest

from engine.decode import decode_messages
from sandbox.store import ColumnStore
from sandbox.view import AlertRecord, AlertsView, Column, Image, ListColumn, parse_fits_image

LISTS = ("prvDiaSources", "prvDiaForcedSources")


@pytest.fixture(scope="module")
def real(v11_packets: list[bytes]) -> tuple[AlertsView, list[dict]]:
    """The 64 real alerts as a view and as plain per-row dicts (the reference)."""
    batch = decode_messages(v11_packets).batch
    return AlertsView(ColumnStore(batch)), batch.to_pylist()


def _points(row: dict, lst: str, field: str) -> list:
    return [p[field] for p in (row[lst] or []) if p[field] is not None and not _nan(p[field])]


def _nan(x: object) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _close(got: list, want: list) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        if w is None:
            assert g is None
        else:
            assert g == pytest.approx(w, rel=1e-6, abs=1e-9)


def hand_batch() -> pa.RecordBatch:
    """Four alerts: a null history, an empty one, one with a null point, one out of time order."""
    point = pa.struct(
        [("psfFlux", pa.float32()), ("midpointMjdTai", pa.float64()), ("band", pa.string())]
    )
    prv = pa.array(
        [
            None,
            [],
            [
                {"psfFlux": 10.0, "midpointMjdTai": 1.0, "band": "g"},
                {"psfFlux": None, "midpointMjdTai": 2.0, "band": "r"},
                {"psfFlux": 30.0, "midpointMjdTai": 3.0, "band": "g"},
            ],
            [
                {"psfFlux": 5.0, "midpointMjdTai": 9.0, "band": "r"},
                {"psfFlux": 7.0, "midpointMjdTai": 4.0, "band": "r"},
                {"psfFlux": 6.0, "midpointMjdTai": 6.0, "band": "g"},
            ],
        ],
        type=pa.list_(point),
    )
    cur = pa.array(
        [
            {"psfFlux": 1.0, "midpointMjdTai": 10.0, "band": "g"},
            {"psfFlux": None, "midpointMjdTai": 10.0, "band": "r"},
            {"psfFlux": 40.0, "midpointMjdTai": 10.0, "band": "g"},
            {"psfFlux": 8.0, "midpointMjdTai": 10.0, "band": "r"},
        ],
        type=point,
    )
    flag = pa.array([True, None, False, None], pa.bool_())
    return pa.RecordBatch.from_arrays(
        [cur, prv, flag], names=["diaSource", "prvDiaSources", "flag"]
    )


@pytest.fixture()
def hand() -> AlertsView:
    """The hand-built batch as a view."""
    return AlertsView(ColumnStore(hand_batch()))


# --- reductions against per-row Python -------------------------------------------------------

REDUCERS = {
    "count": len,
    "min": lambda xs: min(xs) if xs else None,
    "max": lambda xs: max(xs) if xs else None,
    "mean": lambda xs: statistics.fmean(xs) if xs else None,
    "median": lambda xs: statistics.median(xs) if xs else None,
    "std": lambda xs: statistics.pstdev(xs) if xs else None,
    "sum": lambda xs: sum(xs),
}


@pytest.mark.parametrize("lst", LISTS)
@pytest.mark.parametrize("name", sorted(REDUCERS))
def test_reductions_match_per_row_python(real, lst: str, name: str) -> None:
    """Every numeric reduction equals the per-row Python result on real lightcurves."""
    view, rows = real
    got = getattr(view[f"{lst}.psfFlux"], name)().tolist()
    _close(got, [REDUCERS[name](_points(r, lst, "psfFlux")) for r in rows])


@pytest.mark.parametrize("lst", LISTS)
def test_n_distinct_counts_bands(real, lst: str) -> None:
    """n_distinct on the band list is the number of distinct bands per alert."""
    view, rows = real
    assert view[f"{lst}.band"].n_distinct().tolist() == [
        len(set(_points(r, lst, "band"))) for r in rows
    ]


@pytest.mark.parametrize("lst", LISTS)
def test_first_and_last_follow_time(real, lst: str) -> None:
    """first()/last() pick the earliest and latest point by midpointMjdTai."""
    view, rows = real
    lc = view[f"{lst}.psfFlux"]
    first, last = [], []
    for r in rows:
        pts = [p for p in (r[lst] or []) if p["psfFlux"] is not None]
        first.append(min(pts, key=lambda p: p["midpointMjdTai"])["psfFlux"] if pts else None)
        last.append(max(pts, key=lambda p: p["midpointMjdTai"])["psfFlux"] if pts else None)
    _close(lc.first().tolist(), first)
    _close(lc.last().tolist(), last)
    _close(
        lc.first_time().tolist(),
        [min((p["midpointMjdTai"] for p in (r[lst] or [])), default=None) for r in rows],
    )


def test_history_appends_the_current_source(real) -> None:
    """history(f) is prvDiaSources.f followed by diaSource.f, for every alert."""
    view, rows = real
    h = view.history("psfFlux")
    assert h.count().tolist() == [len(_points(r, "prvDiaSources", "psfFlux")) + 1 for r in rows]
    _close(h.last().tolist(), [r["diaSource"]["psfFlux"] for r in rows])
    _close(
        h.sum().tolist(),
        [sum(_points(r, "prvDiaSources", "psfFlux")) + r["diaSource"]["psfFlux"] for r in rows],
    )


def test_last_point_in_the_current_band(real) -> None:
    """in_band(alerts.diaSource.band).last() is the latest previous point in the alert's band."""
    view, rows = real
    got = view.prvDiaSources.psfFlux.in_band(view.diaSource.band).last().tolist()
    want = []
    for r in rows:
        pts = [p for p in (r["prvDiaSources"] or []) if p["band"] == r["diaSource"]["band"]]
        want.append(max(pts, key=lambda p: p["midpointMjdTai"])["psfFlux"] if pts else None)
    _close(got, want)


def test_rate_and_slope_match_per_row_fits(real) -> None:
    """rate() uses the last two points by time; slope() is the least-squares slope per day."""
    view, rows = real
    h = view.history("psfFlux")
    rate, slope = h.rate().tolist(), h.slope().tolist()
    for i, r in enumerate(rows):
        pts = sorted(
            [(p["midpointMjdTai"], p["psfFlux"]) for p in (r["prvDiaSources"] or [])]
            + [(r["diaSource"]["midpointMjdTai"], r["diaSource"]["psfFlux"])]
        )
        if len(pts) < 2:
            assert rate[i] is None and slope[i] is None
            continue
        (t0, f0), (t1, f1) = pts[-2], pts[-1]
        assert rate[i] == pytest.approx((f1 - f0) / (t1 - t0), rel=1e-6)
        t, f = np.array(pts).T
        assert slope[i] == pytest.approx(np.polyfit(t - t.mean(), f, 1)[0], rel=1e-6)


def test_band_field_picks_the_current_band(real) -> None:
    """band_field('psfFluxMean') is diaObject.<band>_psfFluxMean for each alert's band."""
    view, rows = real
    got = view.band_field("psfFluxMean").tolist()
    want = [
        None if r["diaObject"] is None else r["diaObject"][f"{r['diaSource']['band']}_psfFluxMean"]
        for r in rows
    ]
    _close(got, want)
    _close(
        view.band_field("psfFluxMean", "g").tolist(),
        [None if r["diaObject"] is None else r["diaObject"]["g_psfFluxMean"] for r in rows],
    )


def test_integer_ids_are_exact(real) -> None:
    """diaSourceId % 113 and // are exact on 64-bit ids (no float rounding)."""
    view, rows = real
    assert (view.diaSourceId % 113).tolist() == [r["diaSourceId"] % 113 for r in rows]
    assert (view.diaSourceId // 1000).tolist() == [r["diaSourceId"] // 1000 for r in rows]
    assert view.diaSourceId.dtype == "int64"


# --- hand-built batches with nulls ---------------------------------------------------------


def test_null_list_empty_list_and_null_points(hand) -> None:
    """A null or empty list counts 0 and reduces to null; null points are skipped."""
    lc = hand.prvDiaSources.psfFlux
    assert lc.isnull().tolist() == [True, False, False, False]
    assert lc.count().tolist() == [0, 0, 2, 3]
    assert lc.max().tolist() == [None, None, 30.0, 7.0]
    assert lc.median().tolist() == [None, None, 20.0, 6.0]
    assert lc.sum().tolist() == [0.0, 0.0, 40.0, 18.0]
    assert hand.prvDiaSources.band.n_distinct().tolist() == [0, 0, 2, 2]


def test_time_order_not_packet_order(hand) -> None:
    """first/last use the times even when points are out of order (the lexsort path)."""
    lc = hand.prvDiaSources.psfFlux
    assert lc.first().tolist() == [None, None, 10.0, 7.0]
    assert lc.last().tolist() == [None, None, 30.0, 5.0]
    assert lc.rate().tolist() == [None, None, pytest.approx(10.0), pytest.approx(-1 / 3)]


def test_history_of_a_null_current_value(hand) -> None:
    """history() keeps a null current value as a null point, and an alert without history has one."""
    h = hand.history("psfFlux")
    assert h.count().tolist() == [1, 0, 3, 4]
    assert h.last().tolist() == [1.0, None, 40.0, 8.0]
    assert h.in_band(hand.diaSource.band).count().tolist() == [1, 0, 3, 3]


def test_comparisons_broadcast_a_per_alert_column(hand) -> None:
    """lc op column repeats the alert's value for each of its points."""
    lc = hand.prvDiaSources.psfFlux
    above = lc.where(lc > hand.diaSource.psfFlux * 0.5)
    assert above.count().tolist() == [0, 0, 1, 3]


def test_flags_null_rules(hand) -> None:
    """A null flag is not set in & | ~; isin and between give False for null."""
    f = hand.flag
    assert (~f).tolist() == [False, True, True, True]
    assert (f | False).tolist() == [True, False, False, False]
    assert hand.diaSource.band.isin(["g"]).tolist() == [True, False, True, False]
    assert hand.diaSource.psfFlux.between(1, 10).tolist() == [True, False, False, True]


def test_public_methods_exist_and_return_new_read_only_columns(real) -> None:
    """Every name in _public exists; results hold read-only arrays."""
    view, _ = real
    lc = view.prvDiaSources.psfFlux
    for cls, obj in ((Column, view.diaSource.snr), (ListColumn, lc)):
        for name in cls._public:
            assert hasattr(obj, name), name
    for col in (
        lc.max(),
        lc.median(),
        lc.first(),
        view.history("psfFlux").last(),
        view.band_field("psfFluxMean"),
    ):
        assert not col._v.flags.writeable


# --- the per-alert view ----------------------------------------------------------------------


def test_alert_record_matches_the_packet(real) -> None:
    """alert[...] gives the same nested values as the decoded packet, None for nulls."""
    view, rows = real
    store = view._store
    for i in (0, 4, 10, 47, len(rows) - 1):
        rec, row = AlertRecord(store, "", i), rows[i]
        assert rec["diaSourceId"] == row["diaSourceId"]
        for k, v in row["diaSource"].items():
            assert rec["diaSource"][k] == v or (_nan(v) and _nan(rec["diaSource"][k]))
        if row["diaObject"] is None:
            assert rec["diaObject"] is None
        else:
            assert rec["diaObject"]["nDiaSources"] == row["diaObject"]["nDiaSources"]
        prv = rec["prvDiaSources"]
        if row["prvDiaSources"] is None:
            assert prv is None
        else:
            assert [p["psfFlux"] for p in prv] == [p["psfFlux"] for p in row["prvDiaSources"]]
        assert rec.get("nope", 3) == 3 and "diaSource" in rec


def test_cutouts_parse_like_astropy(real) -> None:
    """The FITS reader gives the same 2-D science image as astropy."""
    fits = pytest.importorskip("astropy.io.fits")
    import io

    view, _ = real
    data = view._store.binary("cutoutScience", 0)
    ours = parse_fits_image(data)
    theirs = fits.open(io.BytesIO(data))[0].data
    np.testing.assert_array_equal(ours, theirs.astype(np.float64))
    img = AlertRecord(view._store, "", 0)["cutoutScience"]
    assert isinstance(img, Image) and img.shape == theirs.shape
    assert img.centre() == pytest.approx(float(theirs[theirs.shape[0] // 2, theirs.shape[1] // 2]))
    assert img.box(2).shape == (5, 5) and not img._a.flags.writeable


def test_lightcurve_arithmetic_covers_every_column_operator() -> None:
    """`**`, `//` and `%` act point by point on lightcurves, as on columns (err ** 2 works)."""
    import pyarrow as pa

    from sandbox.store import ColumnStore

    batch = pa.RecordBatch.from_pylist(
        [{"lc": [{"e": 2.0}, {"e": 3.0}]}, {"lc": None}, {"lc": [{"e": 5.0}]}],
        schema=pa.schema([("lc", pa.list_(pa.struct([("e", pa.float64())])))]),
    )
    lc = ColumnStore(batch).get("lc.e")
    assert (lc**2).sum().tolist() == [13.0, 0.0, 25.0]
    assert (lc // 2).max().tolist() == [1.0, None, 2.0]
    assert (lc % 2).min().tolist() == [0.0, None, 1.0]


def test_plain_numbers_take_the_zero_copy_path_with_the_same_result(v11_packets) -> None:
    """Integer and float leaves without nulls on their way are read as zero-copy views, without
    the general conversion; what a filter gets is the same, sliced batches and struct-level
    nulls (which take the general path) included."""
    batch = decode_messages(v11_packets).batch
    struct_null = pa.array([i % 3 == 0 for i in range(batch.num_rows)])
    ds = batch.column("diaSource")
    holed = pa.StructArray.from_arrays(ds.flatten(), fields=list(ds.type), mask=struct_null)
    with_holes = batch.set_column(batch.schema.get_field_index("diaSource"), "diaSource", holed)
    for visit in (batch, batch.slice(1), with_holes):
        fast = ColumnStore(visit)
        general = ColumnStore(visit)
        general._plain = {}
        assert fast._plain
        for path in fast._plain:
            got, want = fast.get(path), general.get(path)
            assert got.dtype == want.dtype and not got._v.flags.writeable
            np.testing.assert_array_equal(got._v, want._v)
            assert (got._m is None) == (want._m is None)
            if got._m is not None:
                np.testing.assert_array_equal(got._m, want._m)
