"""Every helper in both forms, and the null/NaN rules of the helpers issue 12 added.

The column form (``filter``) and the per-alert form (``filter_alert``, ``refine``) must mean the
same thing: each helper is called on columns with nulls and NaN and then, alert by alert, on
the plain values (None for null), and the answers must agree. Then the new helpers one by one:
trigonometry, the null test of a whole record, ``thin``, ``rate_between``'s equal times, and the
cutout moments with their NaN treatments.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from engine.decode import decode_messages
from sandbox import helpers as h
from sandbox import images
from sandbox.compile import compile_filter
from sandbox.lightcurves import thin_mask
from sandbox.run import InProcessRunner
from sandbox.store import ColumnStore
from sandbox.view import AlertRecord, AlertsView, Column, Image

NULL = None
NAN = math.nan


def col(values: list[Any]) -> Column:
    """A column from a list; None is a null."""
    nulls = np.array([v is None for v in values])
    kind = str if any(isinstance(v, str) for v in values) else None
    fill = (
        ""
        if kind is str
        else (False if all(isinstance(v, bool) or v is None for v in values) else 0.0)
    )
    return Column(np.asarray([fill if v is None else v for v in values], dtype=kind), nulls)


# Seven alerts' worth of values, nulls and NaN included.
DATA: dict[str, list[Any]] = {
    "x": [0.3, -0.5, NAN, NULL, 2.0, 0.0, 1e3],
    "y": [1.0, 0.0, 0.5, 1.0, NULL, 0.0, -2.0],
    "flux": [1000.0, -5.0, 0.0, NULL, 3631e9, NAN, 20.0],
    "err": [10.0, 1.0, 2.0, 1.0, NULL, 1.0, 0.0],
    "f": [True, False, NULL, True, False, NULL, True],
    "g": [False, False, True, NULL, True, False, True],
    "band": ["u", "g", "r", "i", "z", "y", "g"],
    "ra": [10.0, 200.0, 359.9, NULL, 150.1, 0.0, 83.6331],
    "dec": [-30.0, 45.0, 89.9, 0.0, 2.2, -89.0, 22.0145],
    "t1": [5.0, 5.0, 6.0, 7.0, NULL, 8.0, 9.0],
    "t0": [4.0, 5.0, 5.5, 7.0, 1.0, NAN, 3.0],
    "m1": [19.0, 18.0, 17.0, 20.0, 20.0, 21.0, NULL],
    "m0": [20.0, 19.0, 17.0, 20.0, 19.0, 20.0, 18.0],
}
WATCH = [(83.6331, 22.0145), (150.1, 2.2), (10.0, -30.0)]

# name -> (helper, arguments: a DATA key or ("=", constant), keyword arguments)
CASES: list[tuple[str, Any, tuple[Any, ...], dict[str, Any]]] = [
    ("isnull", h.isnull, ("x",), {}),
    ("notnull", h.notnull, ("x",), {}),
    ("fill", h.fill, ("x", ("=", -1.0)), {}),
    ("is_set", h.is_set, ("f",), {}),
    ("is_set", h.is_set, ("f",), {"null": True}),
    ("any_set", h.any_set, ("f", "g"), {}),
    ("all_set", h.all_set, ("f", "g"), {"null": True}),
    ("none_set", h.none_set, ("f", "g"), {}),
    ("none_set", h.none_set, ("f", "g"), {"null": True}),
    ("if_else", h.if_else, ("f", "x", "y"), {}),
    ("if_else", h.if_else, ("g", "band", ("=", "none")), {}),
    ("sqrt", h.sqrt, ("x",), {}),
    ("log10", h.log10, ("x",), {}),
    ("log", h.log, ("x",), {}),
    ("exp", h.exp, ("x",), {}),
    ("sin", h.sin, ("x",), {}),
    ("cos", h.cos, ("x",), {}),
    ("tan", h.tan, ("x",), {}),
    ("asin", h.asin, ("x",), {}),
    ("acos", h.acos, ("y",), {}),
    ("atan2", h.atan2, ("x", "y"), {}),
    ("hypot", h.hypot, ("x", "y"), {}),
    ("radians", h.radians, ("ra",), {}),
    ("degrees", h.degrees, ("x",), {}),
    ("minimum", h.minimum, ("x", "y"), {}),
    ("maximum", h.maximum, ("x", ("=", 0.5)), {}),
    ("mag_from_flux", h.mag_from_flux, ("flux",), {}),
    ("flux_from_mag", h.flux_from_mag, ("m1",), {}),
    ("mag_err", h.mag_err, ("flux", "err"), {}),
    ("colour", h.colour, ("flux", "err"), {}),
    ("flux_ratio", h.flux_ratio, ("flux", "err"), {}),
    ("rate_between", h.rate_between, ("m1", "t1", "m0", "t0"), {}),
    ("rate_between", h.rate_between, ("m1", "t1", "m0", "t0"), {"equal_times": "inf"}),
    ("sky.separation", h.separation, ("ra", "dec", ("=", 150.1), ("=", 2.2)), {}),
    ("sky.cone", h.cone, ("ra", "dec", ("=", 150.1), ("=", 2.2), ("=", 1.0)), {}),
    ("sky.watchlist", h.watchlist, ("ra", "dec", ("=", WATCH), ("=", 2 * h.ARCSEC)), {}),
    ("sky.nearest", h.nearest, ("ra", "dec", ("=", WATCH), ("=", 2 * h.ARCSEC)), {}),
    ("sky.galactic_latitude", h.galactic_latitude, ("ra", "dec"), {}),
    ("sky.galactic_longitude", h.galactic_longitude, ("ra", "dec"), {}),
    ("sky.ecliptic_latitude", h.ecliptic_latitude, ("ra", "dec"), {}),
    ("sky.ecliptic_longitude", h.ecliptic_longitude, ("ra", "dec"), {}),
]
# Covered with real alerts below (they take the view, a record or a lightcurve).
ON_REAL_ALERTS = {
    "days_since_first_detection",
    "thin",
    "cutout_centroid",
    "cutout_second_moments",
    "cutout_elongation",
    "cutout_median",
}


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-12, abs=1e-12)
    return type(a) is type(b) and a == b


def test_every_documented_helper_is_called_in_both_forms() -> None:
    """The cases cover every exported helper and every sky member."""
    documented = {n for n, v in h.exported().items() if callable(v)}
    documented |= {f"sky.{m}" for m in h.sky._members}
    assert documented <= {c[0] for c in CASES} | ON_REAL_ALERTS


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}{c[3] or ''}" for c in CASES])
def test_numbers_mean_what_columns_mean(case) -> None:
    """Alert by alert, the helper on plain values (None for null) gives exactly the value of the
    column form for that alert: null as None, NaN as NaN, booleans as bool, indices as int."""
    _, fn, args, kwargs = case
    columns = [a[1] if isinstance(a, tuple) else col(DATA[a]) for a in args]
    want = fn(*columns, **kwargs)
    assert isinstance(want, Column)
    want = want.tolist()
    for i in range(len(want)):
        plain = [a[1] if isinstance(a, tuple) else DATA[a][i] for a in args]
        got = fn(*plain, **kwargs)
        assert type(got) in (float, int, bool, str, type(None)), type(got)
        assert _same(got, want[i]), (i, plain, got, want[i])


def test_sky_helpers_take_numbers_in_filter_alert(real) -> None:
    """`sky.galactic_latitude(ra, dec)` in filter_alert works and agrees with the column form."""
    _, _, batch = real
    col_src = '"""c"""\ndef filter(alerts):\n    ds = alerts.diaSource\n    return sky.galactic_latitude(ds.ra, ds.dec) > -40\n'
    one_src = '"""o"""\ndef filter_alert(alert):\n    ds = alert["diaSource"]\n    return sky.galactic_latitude(ds["ra"], ds["dec"]) > -40\n'
    runner = InProcessRunner(
        [("c", compile_filter(col_src, "c.py")), ("o", compile_filter(one_src, "o.py"))]
    )
    a, b = runner.run(batch)
    assert a.fault is None and b.fault is None, (a.fault, b.fault)
    assert (a.mask == b.mask).all() and 0 < a.passed < len(batch)


# --- the real alerts ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(v11_packets: list[bytes]) -> tuple[AlertsView, ColumnStore, pa.RecordBatch]:
    """The 64 real alerts: the view, its store and the batch."""
    batch = decode_messages(v11_packets).batch
    store = ColumnStore(batch)
    return AlertsView(store), store, batch


def _records(store: ColumnStore) -> list[AlertRecord]:
    return [AlertRecord(store, "", i) for i in range(len(store))]


# --- trigonometry ---------------------------------------------------------------------------


def test_trigonometry_matches_math_and_keeps_nulls() -> None:
    """Each function equals Python's math on numbers; null stays null, NaN stays NaN, out of
    domain is NaN (not an error); atan2 and hypot mix columns, numbers and lightcurves."""
    x = col([0.25, -1.0, NAN, NULL])
    for fn, ref in [
        (h.sin, math.sin),
        (h.cos, math.cos),
        (h.tan, math.tan),
        (h.asin, math.asin),
        (h.acos, math.acos),
        (h.radians, math.radians),
        (h.degrees, math.degrees),
    ]:
        out = fn(x).tolist()
        assert out[0] == pytest.approx(ref(0.25)) and math.isnan(out[2]) and out[3] is None
    assert math.isnan(h.asin(2.0)) and math.isnan(h.acos(-1.5)) and h.sin(None) is None
    assert h.atan2(col([1.0, 0.0]), col([1.0, 0.0])).tolist() == [pytest.approx(math.pi / 4), 0.0]
    assert h.atan2(1.0, -1.0) == pytest.approx(math.atan2(1.0, -1.0))
    assert h.hypot(col([3.0, NULL]), 4).tolist() == [5.0, None]


def test_trigonometry_on_lightcurves(real) -> None:
    """On a lightcurve the functions act point by point, keeping the list shape; a per-alert
    column on the other side of atan2/hypot is repeated for every point."""
    view, _, batch = real
    t = view.history("midpointMjdTai")
    wrapped = h.sin(h.radians(t - 60000)).count().tolist()
    assert wrapped == t.count().tolist()
    dist = h.hypot(t - view.diaSource.midpointMjdTai, 0.0).max().tolist()
    ages = h.days_since_first_detection(view).tolist()
    assert dist == pytest.approx(ages)


# --- records ------------------------------------------------------------------------------------


def test_isnull_of_a_whole_record(real) -> None:
    """isnull(alerts.diaObject) is True exactly for the alerts without a diaObject (solar-system
    ones), isnull(alerts.prvDiaSources) for those without history; the per-alert form agrees."""
    view, store, batch = real
    rows = batch.to_pylist()
    assert h.isnull(view.diaObject).tolist() == [r["diaObject"] is None for r in rows]
    assert h.notnull(view.prvDiaSources).tolist() == [r["prvDiaSources"] is not None for r in rows]
    assert 0 < sum(h.isnull(view.diaObject).tolist()) < len(rows)
    for rec, want in zip(_records(store), h.isnull(view.diaObject).tolist(), strict=True):
        assert h.isnull(rec["diaObject"]) is want and h.notnull(rec["diaObject"]) is (not want)
    with pytest.raises(TypeError):
        h.isnull(view)


def test_isnull_of_a_record_decodes_the_record(real, v11_packets) -> None:
    """A filter that only mentions `diaObject` still gets the record decoded: the compiler's
    projection includes its id, so the null test works in the engine's path."""
    from engine.alerts.schema import load_schema
    from engine.evaluate import columns_needed
    from engine.registry import ActiveFilter

    src = '"""r"""\ndef filter(alerts):\n    return isnull(alerts.diaObject)\n'
    compiled = compile_filter(src, "r.py")
    needed = columns_needed([ActiveFilter("u", compiled)], load_schema("11.1"))
    assert needed is not None and "diaObject.diaObjectId" in needed
    batch = decode_messages(v11_packets, needed).batch
    (outcome,) = InProcessRunner([("u/r", compiled)]).run(batch)
    assert outcome.fault is None, outcome.fault
    assert outcome.mask.tolist() == [r["diaObject"] is None for r in real[2].to_pylist()]


def test_days_since_first_detection_decodes_the_history(real, v11_packets) -> None:
    """`days_since_first_detection(alerts)` alone gets the previous sources decoded (the
    compiler sees the helper's name), so the engine computes the same ages as the full batch."""
    from engine.alerts.schema import load_schema
    from engine.evaluate import columns_needed
    from engine.registry import ActiveFilter

    src = '"""a"""\ndef filter(alerts):\n    return days_since_first_detection(alerts) > 1\n'
    compiled = compile_filter(src, "a.py")
    needed = columns_needed([ActiveFilter("u", compiled)], load_schema("11.1"))
    assert needed is not None and "prvDiaSources.midpointMjdTai" in needed
    (outcome,) = InProcessRunner([("u/a", compiled)]).run(
        decode_messages(v11_packets, needed).batch
    )
    assert outcome.fault is None and outcome.passed > 0
    assert outcome.mask.tolist() == [d > 1 for d in h.days_since_first_detection(real[0]).tolist()]


# --- thin ---------------------------------------------------------------------------------------


def _thin_reference(times: list[float | None], gap: float) -> list[bool]:
    """The rule, written the obvious way: walk the points in time order (stable)."""
    order = sorted((t, i) for i, t in enumerate(times) if t is not None and not math.isnan(t))
    keep = [False] * len(times)
    last = None
    for t, i in order:
        if last is None or t >= last + gap:
            keep[i] = True
            last = t
    return keep


@pytest.mark.parametrize("gap", [0.0, 0.01, 0.5, 3.0, 1e6])
def test_thin_matches_the_obvious_loop_on_real_histories(real, gap: float) -> None:
    """On the real histories (up to ~400 points) the scan keeps exactly the points the
    obvious per-alert loop keeps; the per-alert form keeps the same points."""
    view, store, batch = real
    thinned = h.thin(view.history("psfFlux"), gap)
    counts = thinned.count().tolist()
    kept_times = thinned.times()
    rows = batch.to_pylist()
    for i, (r, rec) in enumerate(zip(rows, _records(store), strict=True)):
        pts = (r["prvDiaSources"] or []) + [r["diaSource"]]
        keep = _thin_reference([p["midpointMjdTai"] for p in pts], gap)
        assert counts[i] == sum(
            k for k, p in zip(keep, pts, strict=True) if p["psfFlux"] is not None
        )
        per_alert = h.thin((rec["prvDiaSources"] or ()) + (rec["diaSource"],), gap)
        assert len(per_alert) == sum(keep)
        assert [p["midpointMjdTai"] for p in per_alert] == [
            p["midpointMjdTai"] for p, k in zip(pts, keep, strict=True) if k
        ]
    assert max(kept_times.count().tolist()) >= (1 if gap > 1e5 else 2)


def test_thin_unsorted_lists_nan_and_equal_times() -> None:
    """Unsorted lists, NaN times, equal times and empty lists: the scan equals the loop."""
    rng = np.random.default_rng(12)
    lengths = rng.integers(0, 30, 400)
    off = np.concatenate(([0], np.cumsum(lengths)))
    t = np.round(rng.uniform(0, 10, int(off[-1])), 1)  # rounding makes many equal times
    t[rng.random(len(t)) < 0.05] = np.nan
    for gap in (0.0, 0.3, 1.0):
        got = thin_mask(t, off, gap)
        want = sum(
            (_thin_reference(t[a:b].tolist(), gap) for a, b in zip(off[:-1], off[1:], strict=True)),
            [],
        )
        assert got.tolist() == want
    assert thin_mask(np.zeros(0), np.zeros(1, np.int64), 1.0).tolist() == []


def test_thin_nulls(real) -> None:
    """A null lightcurve stays null (count 0); per alert None stays None and () stays ();
    points without a time take no part; the gap must be a number >= 0."""
    view, _, _ = real
    prv = view.prvDiaSources.psfFlux
    out = h.thin(prv, 0.5)
    assert out.isnull().tolist() == prv.isnull().tolist()
    assert [c for c, n in zip(out.count().tolist(), prv.isnull().tolist(), strict=True) if n] == [
        0
    ] * sum(prv.isnull().tolist())
    assert h.thin(None, 1.0) is None and h.thin((), 1.0) == ()
    assert h.thin([3.0, None, NAN, 3.2, 4.5], 1.0) == (3.0, 4.5)
    for bad in (-1.0, NAN, "1", None):
        with pytest.raises(ValueError):
            h.thin(prv, bad)
    with pytest.raises(TypeError):
        h.thin(view.diaSource.psfFlux, 1.0)


def test_thin_through_a_filter(real) -> None:
    """thin in filter and in filter_alert select the same alerts."""
    _, _, batch = real
    vec = '"""v"""\ndef filter(alerts):\n    return thin(alerts.history("psfFlux"), 0.5).count() >= 2\n'
    one = (
        '"""o"""\ndef filter_alert(alert):\n    pts = (alert["prvDiaSources"] or ()) + (alert["diaSource"],)\n'
        "    return len(thin(pts, 0.5)) >= 2\n"
    )
    a, b = InProcessRunner(
        [("v", compile_filter(vec, "v.py")), ("o", compile_filter(one, "o.py"))]
    ).run(batch)
    assert a.fault is None and b.fault is None, (a.fault, b.fault)
    assert (a.mask == b.mask).all() and 0 < a.passed < len(batch)


# --- rate_between ---------------------------------------------------------------------------


def test_rate_between_equal_times_null_or_infinite() -> None:
    """Equal times: null by default, ±inf by the sign of the change with equal_times="inf",
    null when nothing changed; the same per alert; any other choice is refused."""
    now, then = col([20.0, 19.0, 18.0, 18.0]), col([21.0, 20.0, 17.0, 18.0])
    t1, t0 = col([10.0, 5.0, 5.0, 5.0]), col([8.0, 5.0, 5.0, 5.0])
    assert h.rate_between(now, t1, then, t0).tolist() == [-0.5, None, None, None]
    assert h.rate_between(now, t1, then, t0, equal_times="inf").tolist() == [
        -0.5,
        -math.inf,
        math.inf,
        None,
    ]
    assert h.rate_between(19.0, 5.0, 20.0, 5.0) is None
    assert h.rate_between(19.0, 5.0, 20.0, 5.0, equal_times="inf") == -math.inf
    with pytest.raises(ValueError):
        h.rate_between(now, t1, then, t0, equal_times="nan")


# --- cutouts ------------------------------------------------------------------------------------


def _gaussian(
    sr: float,
    sc: float,
    shape: tuple[int, int] = (41, 41),
    centre: tuple[float, float] = (20.0, 22.0),
) -> np.ndarray:
    r, c = np.mgrid[: shape[0], : shape[1]].astype(float)
    return 100.0 * np.exp(-0.5 * (((r - centre[0]) / sr) ** 2 + ((c - centre[1]) / sc) ** 2))


def test_moments_of_known_images() -> None:
    """A round Gaussian: centroid at its centre, moments sigma², elongation 1; a 3:1 Gaussian:
    elongation 3; a line: inf; nothing above the threshold: NaN."""
    round_ = Image(_gaussian(2.0, 2.0))
    assert round_.centroid() == (pytest.approx(20.0), pytest.approx(22.0))
    mrr, mcc, mrc = round_.second_moments()
    assert (mrr, mcc, mrc) == (
        pytest.approx(4.0, rel=1e-3),
        pytest.approx(4.0, rel=1e-3),
        pytest.approx(0.0, abs=1e-9),
    )
    assert round_.elongation() == pytest.approx(1.0, abs=1e-6)
    assert Image(_gaussian(1.5, 4.5)).elongation() == pytest.approx(3.0, rel=1e-3)
    line = np.zeros((9, 9))
    line[4, 1:8] = 5.0
    assert Image(line).elongation() == math.inf and Image(line).centroid() == (4.0, 4.0)
    assert math.isnan(Image(-np.ones((5, 5))).elongation())
    assert all(math.isnan(v) for v in Image(np.zeros((5, 5))).centroid())
    assert Image(np.pad([[7.0]], 2)).elongation() == 1.0


def test_moments_against_a_pixel_loop(real) -> None:
    """On real difference cutouts the moments equal a plain loop over the pixels."""
    _, store, _ = real
    for rec in _records(store)[:8]:
        img = rec["cutoutDifference"]
        a = np.asarray(img.tolist())
        w = sr = sc = 0.0
        for (r, c), v in np.ndenumerate(a):
            if v > 0:
                w, sr, sc = w + v, sr + v * r, sc + v * c
        assert img.centroid() == (pytest.approx(sr / w), pytest.approx(sc / w))
        r0, c0 = sr / w, sc / w
        mrr = sum(v * (r - r0) ** 2 for (r, _), v in np.ndenumerate(a) if v > 0) / w
        mrc = sum(v * (r - r0) * (c - c0) for (r, c), v in np.ndenumerate(a) if v > 0) / w
        assert img.second_moments()[0] == pytest.approx(mrr)
        assert img.second_moments()[2] == pytest.approx(mrc, abs=1e-9)
        assert img.elongation() >= 1.0


def test_nan_pixels_ignore_zero_or_propagate() -> None:
    """median and the moments: "ignore" skips NaN pixels, "zero" counts them as 0,
    "propagate" gives NaN; an all-NaN image has no moments and a NaN median unless NaN counts
    as 0; other choices are refused."""
    a = np.array([[1.0, 2.0, NAN], [4.0, 5.0, 6.0], [NAN, 8.0, 9.0]])
    img = Image(a)
    assert (
        img.median() == 5.0
        and img.median(nan="zero") == 4.0
        and math.isnan(img.median(nan="propagate"))
    )
    assert img.mean(nan="zero") == pytest.approx(35 / 9) and math.isnan(img.max(nan="propagate"))
    assert img.centroid() == img.centroid(nan="zero")
    assert all(math.isnan(v) for v in img.centroid(nan="propagate"))
    assert math.isnan(img.elongation(nan="propagate"))
    blank = Image(np.full((3, 3), NAN))
    for mode in images.NAN_MODES:
        assert math.isnan(blank.elongation(nan=mode))
        assert (
            blank.median(nan=mode) == 0.0 if mode == "zero" else math.isnan(blank.median(nan=mode))
        )
    with pytest.raises(ValueError):
        img.median(nan="drop")
    with pytest.raises(TypeError):
        img.centroid(threshold="0")


def test_new_helpers_return_plain_values_or_read_only_data(real) -> None:
    """Numbers, tuples of numbers, columns, lightcurves and images with read-only arrays only."""
    view, store, _ = real
    rec = _records(store)[0]
    img = rec["cutoutDifference"]
    for value in (img.centroid(), img.second_moments()):
        assert type(value) is tuple and all(type(v) is float for v in value)
    assert type(img.elongation()) is float and type(img.median(nan="zero")) is float
    assert not img.box(2)._a.flags.writeable
    thinned = h.thin(view.history("psfFlux"), 1.0)
    assert not thinned._items._v.flags.writeable and not thinned._items._m.flags.writeable
    assert not h.isnull(view.diaObject)._v.flags.writeable
    assert not h.sin(view.diaSource.ra)._v.flags.writeable
    assert type(h.days_since_first_detection(rec)) is float


def _with_missing_cutouts(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch with the difference cutout of every fifth alert set to null."""
    i = batch.schema.get_field_index("cutoutDifference")
    values = batch.column(i).to_pylist()
    values = [None if k % 5 == 0 else v for k, v in enumerate(values)]
    return batch.set_column(
        i, batch.schema.field(i), pa.array(values, type=batch.schema.field(i).type)
    )


@pytest.mark.parametrize(
    "options", [{}, {"half": 7}, {"half": 3, "threshold": 50.0, "nan": "propagate"}]
)
def test_cutout_helpers_equal_the_image_methods(real, options) -> None:
    """The column helpers measure every cutout of the visit at once (cutouts of several sizes)
    and give, alert by alert, the Image methods' values; the per-alert call gives them too;
    an alert without its cutout is null (None per alert)."""
    _, _, batch = real
    batch = _with_missing_cutouts(batch)
    store = ColumnStore(batch)
    view = AlertsView(store)
    half = options.get("half")
    kw = {k: v for k, v in options.items() if k != "half"}
    row, col_ = (c.tolist() for c in h.cutout_centroid(view, half=half, **kw))
    mrr = h.cutout_second_moments(view, half=half, **kw)[0].tolist()
    elong = h.cutout_elongation(view, half=half, **kw).tolist()
    median = h.cutout_median(view, half=half, nan=kw.get("nan", "ignore")).tolist()
    sizes = set()
    for i, rec in enumerate(_records(store)):
        img = rec["cutoutDifference"]
        if img is None:
            assert row[i] is None and elong[i] is None and median[i] is None
            assert h.cutout_elongation(rec) is None and h.cutout_centroid(rec) == (None, None)
            continue
        sizes.add(img.shape)
        img = img if half is None else img.box(half)
        want = [
            *img.centroid(**kw),
            img.second_moments(**kw)[0],
            img.elongation(**kw),
            img.median(nan=kw.get("nan", "ignore")),
        ]
        got = [row[i], col_[i], mrr[i], elong[i], median[i]]
        assert all(_close(g, w) for g, w in zip(got, want, strict=True)), (i, got, want)
        assert _close(h.cutout_elongation(rec, half=half, **kw), want[3])
    assert len(sizes) >= 2 and sum(r is None for r in row) == 13


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and (math.isnan(a) or math.isinf(a)):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return a == pytest.approx(b, rel=1e-9, abs=1e-9)


def test_cutout_helpers_in_a_filter(real, v11_packets) -> None:
    """A trail cut on columns decodes the cutout through the compiler's projection and passes
    the same alerts as the same cut in refine."""
    from engine.alerts.schema import load_schema
    from engine.evaluate import columns_needed
    from engine.registry import ActiveFilter

    vec = '"""v"""\ndef filter(alerts):\n    return cutout_elongation(alerts, half=7) < 1.1\n'
    ref = (
        '"""r"""\ndef filter(alerts):\n    return True\n\ndef refine(alert):\n'
        '    return alert["cutoutDifference"].box(7).elongation() < 1.1\n'
    )
    compiled = compile_filter(vec, "v.py")
    needed = columns_needed([ActiveFilter("u", compiled)], load_schema("11.1"))
    assert needed is not None and "cutoutDifference" in needed
    batch = decode_messages(v11_packets, needed).batch
    (a,) = InProcessRunner([("v", compiled)]).run(batch)
    (b,) = InProcessRunner([("r", compile_filter(ref, "r.py"))]).run(real[2])
    assert a.fault is None and b.fault is None, (a.fault, b.fault)
    assert (a.mask == b.mask).all() and 0 < a.passed < len(batch)


def test_cutout_helpers_refuse_bad_arguments(real) -> None:
    """Unknown cutouts, bad options and non-views are refused with a message."""
    view, store, _ = real
    with pytest.raises(KeyError):
        h.cutout_elongation(view, "cutoutNothing")
    with pytest.raises(ValueError):
        h.cutout_median(view, nan="drop")
    with pytest.raises(ValueError):
        h.cutout_centroid(view, half=-1)
    with pytest.raises(TypeError):
        h.cutout_elongation(view.diaSource.ra)
