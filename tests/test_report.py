"""``minibroker test --report``: the HTML page, its plots and cutouts, its warnings, and how
headless Chromium renders it."""

from __future__ import annotations

import base64
import dataclasses
import io
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import fastavro
import numpy as np
import pytest

from engine.alerts.schema import load_schema
from engine.alerts.wire import unframe
from engine.cli import main
from engine.config import Config
from engine.decode import decode_block
from engine.local import localtest
from engine.local.report import NullCounts, encode_png, findings, write_report
from engine.service.pipeline import NightReport
from engine.sources.night import night_info, read_night
from sandbox.view.image import parse_fits_image

BRIGHT = '''"""Bright <script>alert("owned")</script> & detections."""

def filter(alerts):
    return alerts.diaSource.snr > 20
'''
EVERYTHING = '"""Everything."""\ndef filter(alerts):\n    return alerts.diaSourceId >= 0\n'
FAULTY = '"""Forgets to compare."""\ndef filter(alerts):\n    return alerts.diaSource.snr\n'
CONFIG = Config(isolation="inprocess")


def run(tmp_path: Path, night: Path, source: str, name: str = "f") -> localtest.TestResult:
    """Run ``source`` as a filter over ``night``, quietly, collecting null counts."""
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    return localtest.test_filter(
        path, night, CONFIG, out=io.StringIO(), progress=False, report=NullCounts()
    )


@pytest.fixture(scope="module")
def bright(
    tmp_path_factory: pytest.TempPathFactory, small_night: Path
) -> tuple[localtest.TestResult, Path, str]:
    """The S/N > 20 filter's result over the small night, and its written report."""
    tmp = tmp_path_factory.mktemp("report")
    result = run(tmp, small_night, BRIGHT, "bright")
    page = write_report(tmp / "out" / "bright.html", result, night=small_night, config=CONFIG)
    return result, page, page.read_text()


def decode_png(data: bytes) -> np.ndarray:
    """A strict reader of the PNGs the report writes: 8-bit greyscale, checked CRCs."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "PNG signature"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert [k for k, _ in chunks][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, interlace) == (8, 0, 0)
    raw = zlib.decompress(b"".join(b for k, b in chunks if k == b"IDAT"))
    rows = np.frombuffer(raw, np.uint8).reshape(height, width + 1)
    assert not rows[:, 0].any(), "only filter type 0 is written"
    return rows[:, 1:]


def alert_of(body: bytes) -> dict:
    """The decoded alert of a Confluent-framed packet."""
    sid, datum = unframe(body)
    s = load_schema(sid)
    return fastavro.schemaless_reader(io.BytesIO(datum), s.avro, s.avro)


def test_encode_png_round_trips() -> None:
    """encode_png writes a valid greyscale PNG whose pixels read back exactly."""
    pixels = np.random.default_rng(3).integers(0, 256, size=(17, 31), dtype=np.uint8)
    assert np.array_equal(decode_png(encode_png(pixels)), pixels)


def test_page_has_every_section(bright) -> None:
    """The page has the header, totals, warnings, per-visit charts, sky map, matches and columns."""
    result, _, page = bright
    for section in ("summary", "warnings", "visits", "sky", "matches", "columns"):
        assert f'id="{section}"' in page
    assert '<h1 id="filter-name">bright</h1>' in page and result.filter.version in page
    assert page.count('<svg class="chart"') == 2  # pass counts and evaluation time
    assert 'class="skymap' in page
    total = sum(sum(v.passed.values()) for v in result.report.visits)
    assert f"{total:,}" in page and "900" in page


def test_one_lightcurve_per_shown_match(bright) -> None:
    """Each of the first matches gets a lightcurve SVG with its triggering point marked."""
    result, _, page = bright
    n = len(result.matches)
    assert n == 10
    assert page.count('<svg class="lightcurve"') == n
    assert page.count('class="trigger"') == n and page.count(">trigger (") == n


def test_cutouts_are_pngs_of_the_cutout_shape(bright) -> None:
    """Three cutouts per match, each a PNG data URI of the FITS image's shape, in order."""
    result, _, page = bright
    imgs = re.findall(
        r'<img class="cutout" data-kind="(\w+)" data-rows="(\d+)" data-cols="(\d+)" '
        r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"',
        page,
    )
    assert len(imgs) == 3 * len(result.matches)
    for k, body in enumerate(result.packets):
        alert = alert_of(body)
        for (kind, rows, cols, b64), key in zip(
            imgs[3 * k : 3 * k + 3],
            ("cutoutScience", "cutoutTemplate", "cutoutDifference"),
            strict=True,
        ):
            shape = parse_fits_image(alert[key]).shape
            pixels = decode_png(base64.b64decode(b64))
            assert pixels.shape == shape == (int(rows), int(cols)), (k, kind)
            assert pixels.max() > pixels.min(), "a stretched cutout is not flat"


def test_page_is_self_contained(bright) -> None:
    """No external URL, no script: only data: URIs, in-page anchors and the SVG namespace."""
    _, _, page = bright
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    urls = re.findall(r"(?:https?:)?//[^\s\"'<>)]+", text)
    assert set(urls) <= {"http://www.w3.org/2000/svg"}, urls
    assert all(
        v.startswith(("data:image/png;base64,", "#"))
        for v in re.findall(r'(?:src|href)="([^"]*)"', page)
    )
    assert "url(" not in page and "@import" not in page
    assert "<script" not in page.lower()


def test_filter_text_is_escaped(bright) -> None:
    """The filter's docstring (user text) is shown escaped, never as markup."""
    _, _, page = bright
    assert "&lt;script&gt;alert(&quot;owned&quot;)&lt;/script&gt; &amp; detections." in page


def test_warnings_fire_on_a_filter_that_passes_everything(tmp_path, small_night) -> None:
    """Passing every alert trips the design-rate warning, and the cap warning when over the cap."""
    result = run(tmp_path, small_night, EVERYTHING)  # 300 alerts per visit
    assert {f.kind for f in findings(result, Config(max_matches_per_visit=1000))} == {"matches"}
    page = write_report(
        tmp_path / "r.html", result, config=Config(max_matches_per_visit=200)
    ).read_text()
    assert "Too many matches" in page and "Over the match cap" in page
    assert "3 visits passed more than the cap of 200 matches per visit" in page


def test_slow_and_faulty_filters_are_flagged(tmp_path, small_night) -> None:
    """A visit over the (scaled) time budget and a filter that faults each get a warning."""
    bright = run(tmp_path, small_night, BRIGHT, "bright")
    assert "slow" not in {f.kind for f in findings(bright, CONFIG)}
    assert "slow" in {f.kind for f in findings(bright, Config(budget_s=1e-9))}
    faulty = run(tmp_path, small_night, FAULTY, "faulty")
    (fault,) = [f for f in findings(faulty, CONFIG) if f.kind == "fault"]
    assert "3 visits" in fault.message and "expected booleans" in fault.message


def test_first_visit_warm_up_alone_is_not_slow(bright) -> None:
    """A slow first visit (one-off warm-up) is excused when later visits are judged, not otherwise."""
    result, _, _ = bright
    first, *rest = result.report.visits
    warm = dataclasses.replace(first, evaluate_s=10.0)
    night = dataclasses.replace(result, report=NightReport([warm, *rest]))
    assert "slow" not in {f.kind for f in findings(night, CONFIG)}
    alone = dataclasses.replace(result, report=NightReport([warm]))
    assert "slow" in {f.kind for f in findings(alone, CONFIG)}


@pytest.mark.parametrize(
    ("cut", "column"),
    [
        ("alerts.diaSource.dipoleMeanFlux > 0", "diaSource.dipoleMeanFlux"),
        ("alerts.prvDiaSources.psfFlux.max() > 0", "prvDiaSources.psfFlux"),
    ],
)
def test_warns_on_a_mostly_null_column(tmp_path, small_night, cut, column) -> None:
    """A filter that reads a mostly-null column is told that the nulls swallow alerts."""
    result = run(
        tmp_path, small_night, f'"""Null-prone."""\ndef filter(alerts):\n    return {cut}\n'
    )
    (nulls,) = [f for f in findings(result, CONFIG) if f.kind == "nulls"]
    head, leaf = column.split(".")
    assert re.match(
        rf"{head}\.({leaf}|\{{[^}}]*\b{leaf}\b[^}}]*\}}) (is|are) missing", nulls.message
    ), nulls.message
    assert "snr" not in nulls.message
    page = write_report(tmp_path / "r.html", result).read_text()
    assert "Nulls that swallow alerts" in page and f'<tr class="flag"><td>{column}</td>' in page


def test_null_counts_match_a_direct_count(tmp_path, small_night) -> None:
    """NullCounts agrees with counting the fully decoded night by hand (struct, list, NaN)."""
    source = (
        '"""Reads three kinds of column."""\ndef filter(alerts):\n    ds = alerts.diaSource\n'
        "    return (ds.snr > 5) & (ds.dipoleMeanFlux > 0) & (alerts.prvDiaSources.psfFlux.count() > 1)\n"
    )
    result = run(tmp_path, small_night, source)
    schema, _ = night_info(small_night)
    expected = {"diaSource.snr": 0, "diaSource.dipoleMeanFlux": 0, "prvDiaSources.psfFlux": 0}
    for block in read_night(small_night):
        for alert in decode_block(block, schema).batch.to_pylist():
            ds = alert["diaSource"]
            for name in ("snr", "dipoleMeanFlux"):
                expected[f"diaSource.{name}"] += ds[name] is None or ds[name] != ds[name]
            fluxes = [
                p["psfFlux"] for p in alert["prvDiaSources"] or () if p["psfFlux"] is not None
            ]
            expected["prvDiaSources.psfFlux"] += not fluxes
    assert result.nulls is not None and result.nulls.alerts == 900
    assert {k: result.nulls.missing[k] for k in expected} == expected


def test_cli_writes_the_report_and_keeps_the_table(tmp_path, small_night, capsys) -> None:
    """`test --report PATH` prints the usual table, then says where the page went."""
    f = tmp_path / "bright.py"
    f.write_text(BRIGHT)
    out = tmp_path / "reports" / "bright.html"
    assert (
        main(["test", str(f), "--night", str(small_night), "--no-progress", "--report", str(out)])
        == 0
    )
    text = capsys.readouterr().out
    assert "filter bright: 900 alerts in 3 visits" in text and "diaSourceId" in text
    assert text.rstrip().endswith(f"report written to {out}")
    assert out.read_text().startswith("<!DOCTYPE html>")


def _chromium() -> str:
    """The Chromium binary; fails in CI and skips elsewhere when it is missing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    how = "install it with `apt-get update && apt-get install -y chromium` (Debian's chromium package)"
    if os.environ.get("CI"):
        pytest.fail(f"headless Chromium is needed to render the report; {how}")
    pytest.skip(f"chromium is not installed; {how}")


def _headless(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


# Appended to a copy of the page only (the page itself forbids scripts): reports what the
# browser actually decoded and laid out.
_PROBE = """<script>
addEventListener("load", () => {
  const imgs = [...document.querySelectorAll("img.cutout")];
  const svgs = [...document.querySelectorAll("svg.lightcurve")];
  const p = document.createElement("p");
  p.id = "probe";
  p.dataset.decoded = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  p.dataset.shapes = imgs.every(i => i.naturalWidth == i.dataset.cols && i.naturalHeight == i.dataset.rows);
  p.dataset.drawn = svgs.filter(s => s.getBoundingClientRect().width > 100).length;
  p.dataset.warnings = document.querySelectorAll("#warnings .finding").length;
  document.body.append(p);
});
</script>"""


def test_chromium_renders_the_page(bright, tmp_path) -> None:
    """Headless Chromium shows the page: text, decoded cutouts of the right size, drawn plots."""
    binary = _chromium()
    result, page_path, page = bright
    n = len(result.matches)

    shot = tmp_path / "shot.png"
    done = _headless(
        binary,
        tmp_path / "profile",
        f"--screenshot={shot}",
        "--window-size=1280,2400",
        page_path.resolve().as_uri(),
    )
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    width, height = struct.unpack(">II", shot.read_bytes()[16:24])
    assert (width, height) == (
        1280,
        2400,
    ) and shot.stat().st_size > 50_000  # a blank page is a few kB

    dom = _headless(binary, tmp_path / "profile", "--dump-dom", page_path.resolve().as_uri()).stdout
    assert '<h1 id="filter-name">bright</h1>' in dom and "Too many matches" in dom
    assert dom.count('<img class="cutout"') == 3 * n and dom.count('<svg class="lightcurve"') == n
    assert "<script>alert" not in dom  # the docstring stayed text

    probe_page = tmp_path / "probe.html"
    csp = re.compile(r'<meta http-equiv="Content-Security-Policy"[^>]*>')
    probe_page.write_text(csp.sub("", page).replace("</body>", _PROBE + "</body>"))
    dom = _headless(binary, tmp_path / "profile", "--dump-dom", probe_page.as_uri()).stdout
    probe = dict(
        re.findall(r'data-(\w+)="([^"]*)"', re.search(r'<p id="probe"[^>]*>', dom).group(0))
    )
    # Two warnings: more matches than the cap of 20 per visit, and than the design figure.
    assert probe == {"decoded": str(3 * n), "shapes": "true", "drawn": str(n), "warnings": "2"}
