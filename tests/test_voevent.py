"""VOEvent 2.0 packets of delivered matches: valid against the official schema (the XSD shipped
in PyPI ``comet``), readable by ``voevent-parse``, small, and with ids, position and time intact."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
import voeventparse
from cometbroker import VOEVENT_XSD
from lxml import etree
from matches import delete_user_keys, publish_packets

from engine.config import load_config
from engine.errors import ConfigError
from engine.evaluate import Evaluator
from engine.formats import voevent
from engine.formats.voevent import (
    Match,
    VOEventSettings,
    decode_packet,
    entry_packet,
    match_from_entry,
    packet_filename,
    render,
    render_entry,
    renderer,
)
from engine.registry import ActiveFilter
from engine.service.pipeline import run_visits
from engine.sinks.streams import Publisher, stream_key
from engine.sources.night import night_info, read_night
from sandbox import compile_filter

SCHEMA = etree.XMLSchema(etree.parse(str(VOEVENT_XSD)))
SETTINGS = VOEventSettings(authority="minibroker.test")
DOC = Path(__file__).resolve().parents[1] / "docs" / "vo-output.md"
MJD_EPOCH = dt.datetime(1858, 11, 17, tzinfo=dt.UTC)
TAI_MINUS_UTC_S = 37  # since 2017-01-01; an independent check of the ERFA conversion


def _valid(packet: bytes) -> etree._Element:
    root = etree.fromstring(packet)
    assert SCHEMA.validate(root), SCHEMA.error_log
    assert len(packet) < 20_000, len(packet)  # VTP peers drop 100 kB; these stay a few kB
    assert b"SIMPLE  =" not in packet  # never a FITS cutout
    return root


def _groups(root: etree._Element) -> dict[str, dict[str, str]]:
    return {
        g.get("name"): {p.get("name"): p.get("value") for p in g.iter("Param")}
        for g in root.iter("Group")
    }


@pytest.fixture()
def real_matches(redis_client, unique_user, v11_packets):
    """The 64 real LSSTCam v11.1 alerts as matches on a fresh user's stream."""
    entries = publish_packets(redis_client, unique_user, v11_packets)
    yield unique_user, entries
    delete_user_keys(redis_client, unique_user)


def test_real_alerts_render_valid_packets_that_read_back(real_matches) -> None:
    """Every real LSSTCam match renders a schema-valid VOEvent; voevent-parse reads back the
    IVORN, position (with its error) and UTC time; each source kind gets its Group."""
    user, entries = real_matches
    assert len(entries) == 64
    kinds = set()
    for entry_id, fields in entries:
        packet = render_entry(
            entry_id,
            fields,
            user=user,
            settings=SETTINGS,
            description="Every alert: a test filter that passes all it sees.",
        )
        root = _valid(packet)
        alert = decode_packet(entry_packet(fields))
        source = alert["diaSource"]

        event = voeventparse.loads(packet)
        assert (
            event.attrib["ivorn"]
            == f"ivo://minibroker.test/{user}/everything#{alert['diaSourceId']}"
        )
        assert event.attrib["role"] == "observation"
        pos = voeventparse.get_event_position(event)
        assert (pos.ra, pos.dec) == (source["ra"], source["dec"])
        assert (pos.units, pos.system) == ("deg", "UTC-ICRS-TOPO")
        assert pos.err == pytest.approx((source["raErr"] ** 2 + source["decErr"] ** 2) ** 0.5)
        when = voeventparse.get_event_time_as_utc(event)
        expected = MJD_EPOCH + dt.timedelta(days=source["midpointMjdTai"], seconds=-TAI_MINUS_UTC_S)
        assert abs(when - expected) < dt.timedelta(milliseconds=1)

        groups = _groups(root)
        dia = groups["diaSource"]
        assert int(dia["diaSourceId"]) == alert["diaSourceId"]
        assert (
            float(dia["psfFlux"]) == source["psfFlux"]
            and float(dia["psfFluxErr"]) == source["psfFluxErr"]
        )
        assert dia["band"] == source["band"]
        assert (
            float(dia["snr"]) == source["snr"]
            and float(dia["reliability"]) == source["reliability"]
        )
        assert groups["filter"] == {
            "owner": user,
            "name": "everything",
            "version": fields[b"filter_version"].decode(),
        }
        if alert["ssSource"]:
            assert int(groups["ssSource"]["ssObjectId"]) == alert["ssSource"]["ssObjectId"]
            assert "diaObject" not in groups
            kinds.add("ss")
        else:
            # Three real alerts have a diaObjectId but a null diaObject record.
            assert (
                int(groups["diaObject"]["diaObjectId"])
                == (alert["diaObject"] or source)["diaObjectId"]
            )
            assert "ssSource" not in groups
            kinds.add("dia")
        assert (
            root.findtext("Why/Description")
            == "Every alert: a test filter that passes all it sees."
        )
        assert (
            root.find("Reference").get("uri")
            == f"ivo://minibroker.test/alerts#{alert['diaSourceId']}"
        )
        assert f"band {source['band']}" in root.findtext("How/Description")
    assert kinds == {"ss", "dia"}


def test_sample_night_matches_render_valid_unique_packets(
    small_night, redis_client, unique_user
) -> None:
    """Matches of two filters over a generated night all validate; IVORNs are unique per
    (filter, alert) even where both filters pass the same alert; rendering is repeatable."""
    bright = '"""Bright."""\ndef filter(alerts):\n    return alerts.diaSource.snr > 20\n'
    brighter = '"""Brighter."""\ndef filter(alerts):\n    return alerts.diaSource.snr > 40\n'
    filters = [
        ActiveFilter(unique_user, compile_filter(bright, "bright.py")),
        ActiveFilter(unique_user, compile_filter(brighter, "brighter.py")),
    ]
    config = load_config(env={}, isolation="inprocess")
    schema, _ = night_info(small_night)
    try:
        with Evaluator(filters, config) as ev:
            run_visits(
                read_night(small_night), schema, filters, ev, Publisher(redis_client, config)
            )
        entries = [
            (i.decode(), f)
            for i, f in redis_client.xrange(stream_key(unique_user))
            if f[b"kind"] == b"match"
        ]  # not the withheld counts and visit markers
        ivorns, alerts = set(), {}
        for entry_id, fields in entries:
            packet = render_entry(entry_id, fields, user=unique_user, settings=SETTINGS)
            _valid(packet)
            assert packet == render_entry(entry_id, fields, user=unique_user, settings=SETTINGS)
            ivorns.add(etree.fromstring(packet).get("ivorn"))
            alerts.setdefault(fields[b"diaSourceId"], set()).add(fields[b"filter"])
        assert len(ivorns) == len(entries) > 0
        assert any(len(by) == 2 for by in alerts.values())  # the same alert under two IVORNs
    finally:
        delete_user_keys(redis_client, unique_user)


def test_headline_fields_alone_make_a_valid_packet(real_matches) -> None:
    """An entry without its packet (only the headline fields) still renders a valid VOEvent,
    with the documented conservative error radius."""
    user, entries = real_matches
    # a diaObject's alert (entries come most reliable first; the first may be a solar-system one)
    entry_id, fields = next(e for e in entries if e[1].get(b"ssObjectId") in (b"", b"0"))
    headline = {k: v for k, v in fields.items() if k != b"alert"}
    match = match_from_entry(entry_id, headline, user=user)
    assert match.alert is None
    root = _valid(render(match, SETTINGS))
    pos = voeventparse.get_event_position(voeventparse.loads(etree.tostring(root)))
    assert pos.err == voevent.UNKNOWN_ERROR_DEG
    assert (pos.ra, pos.dec) == (float(fields[b"ra"]), float(fields[b"dec"]))
    assert set(_groups(root)) == {"diaSource", "diaObject", "filter"}


def test_out_dir_file_names_are_unique_and_safe(real_matches, tmp_path) -> None:
    """One file per match named after its IVORN (``<user>.<filter>.<diaSourceId>.xml``):
    writing them all gives as many files, each holding its packet; the ``(entry_id, fields)``
    renderer subscribe takes gives the same packets, with the filter's description."""
    user, entries = real_matches
    render_one = renderer(user, SETTINGS, describe=lambda u, f, v: f"{u}'s {f} at {v}")
    for entry_id, fields in entries:
        packet = render_entry(
            entry_id,
            fields,
            user=user,
            settings=SETTINGS,
            description=f"{user}'s everything at {fields[b'filter_version'].decode()}",
        )
        assert render_one(entry_id, fields) == packet
        name = packet_filename(etree.fromstring(packet).get("ivorn"))
        assert re.fullmatch(r"[\w.-]+\.xml", name) and name.startswith(f"{user}.everything.")
        (tmp_path / name).write_bytes(packet)
    assert len(list(tmp_path.iterdir())) == len(entries)


def test_authority_and_packet_url_come_from_the_configuration() -> None:
    """MINIBROKER_VO_AUTHORITY and MINIBROKER_VO_PACKET_URL name the packets; unusable values
    are refused with a message saying what to give."""
    config = load_config(
        env={
            "MINIBROKER_VO_AUTHORITY": "vo.example.org",
            "MINIBROKER_VO_PACKET_URL": "https://alerts.example.org/{diaSourceId}.avro",
        }
    )
    settings = VOEventSettings.from_config(config)
    match = Match(
        user="u",
        filter="f",
        filter_version="1",
        visit=1,
        diaSourceId=7,
        ra=1.0,
        dec=2.0,
        midpointMjdTai=61000.0,
    )
    root = _valid(render(match, settings))
    assert root.get("ivorn") == "ivo://vo.example.org/u/f#7"
    assert root.findtext("Who/AuthorIVORN") == "ivo://vo.example.org/minibroker"
    assert root.find("Reference").get("uri") == "https://alerts.example.org/7.avro"
    with pytest.raises(ConfigError, match="not an IVOA authority"):
        VOEventSettings(authority="a/b")
    with pytest.raises(ConfigError, match="may use only"):
        VOEventSettings(packet_url="https://x/{alertId}")


def test_units_agree_with_the_rubin_apdb_schema() -> None:
    """Every unit Rubin's APDB schema (lsst-sdm-schemas) gives is the unit the packets state."""
    yaml = pytest.importorskip("yaml")
    from importlib.resources import files

    tables = yaml.safe_load(files("lsst.sdm.schemas").joinpath("apdb.yaml").read_text())["tables"]
    units: dict[str, str | None] = {}
    for table in tables:
        if table["name"] in ("DiaSource", "DiaObject", "SSSource"):
            for column in table["columns"]:
                name = (
                    column["name"].split("_", 1)[1]
                    if column["name"].startswith("i_")
                    else column["name"]
                )
                units.setdefault(name, column.get("ivoa:unit") or column.get("fits:tunit"))
    checked = 0
    for name, spec in voevent._FIELDS.items():
        if units.get(name):
            assert spec.unit == units[name], name
            checked += 1
    assert checked >= 20


def _doc_example(v11_packets: list[bytes]) -> bytes:
    alert = decode_packet(v11_packets[0])
    source = alert["diaSource"]
    match = Match(
        user="alice",
        filter="young_transients",
        filter_version="3f2a9c41d0b7",
        visit=source["visit"],
        diaSourceId=alert["diaSourceId"],
        ra=source["ra"],
        dec=source["dec"],
        midpointMjdTai=source["midpointMjdTai"],
        band=source["band"],
        schema_id=1101,
        alert=alert,
        filter_description="New, reliable, point-like transients seen fewer than three times.",
        published=dt.datetime(2026, 1, 1, 5, 20, 3, tzinfo=dt.UTC),
    )
    return render(match, VOEventSettings(authority="sfs.example.org"))


def test_the_documented_example_is_what_the_code_renders(v11_packets) -> None:
    """docs/vo-output.md shows, byte for byte, the packet the code renders for the first real
    alert, and that packet validates."""
    packet = _doc_example(v11_packets)
    _valid(packet)
    text = DOC.read_text()
    shown = re.search(
        r"<!-- example: begin -->\n```xml\n(.*?)```\n<!-- example: end -->", text, re.S
    )
    assert shown, "docs/vo-output.md lost its example markers"
    assert shown.group(1) == packet.decode(), "regenerate the example: python tests/test_voevent.py"


if __name__ == "__main__":  # print the documented example, to paste into docs/vo-output.md
    import sys

    from alertdata import packet_files

    sys.stdout.write(_doc_example([f.read_bytes() for f in packet_files("lsstcam/v11_1")]).decode())
