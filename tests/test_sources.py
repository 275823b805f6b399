"""Every form a scientist has alerts in opens as visits: foreign Avro container files (schema by
name, namespace or fields; any codec) and directories of single-alert files, written here with
fastavro from the real LSSTCam packets; and every broken input names its file."""

from __future__ import annotations

import functools
import io
import warnings
from collections import Counter
from pathlib import Path

import fastavro
import pytest
from alertdata import SHARED_ALERTS, packet_files

from engine.alerts.schema import load_schema
from engine.alerts.wire import unframe
from engine.decode import decode_block
from engine.errors import MinibrokerWarning, SourceError
from engine.sources.night import NightForm, _ordered, open_night

V11 = "lsstcam/v11_1"


@functools.cache
def _records(folder: str = V11) -> tuple[list[bytes], list[dict]]:
    """The datums and decoded records of a folder of shared packets (read once)."""
    datums, records = [], []
    for f in packet_files(folder):
        sid, datum = unframe(f.read_bytes())
        schema = load_schema(sid)
        datums.append(bytes(datum))
        records.append(fastavro.schemaless_reader(io.BytesIO(datum), schema.avro, schema.avro))
    return datums, records


def _expected(records: list[dict]) -> dict[int, list[int]]:
    """diaSourceIds per visit, in the order the files were read."""
    out: dict[int, list[int]] = {}
    for r in records:
        out.setdefault(r["diaSource"]["visit"], []).append(r["diaSourceId"])
    return out


def _read(path: Path, **kw) -> tuple[object, dict[int, list[int]]]:
    """Open a night quietly; its schema and diaSourceIds per visit, decoded by the engine."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        night = open_night(path, **kw)
        got = {
            b.visit: decode_block(b, night.schema).batch.column("diaSourceId").to_pylist()
            for b in night.blocks()
        }
    slow = [w for w in seen if issubclass(w.category, MinibrokerWarning)]
    assert len(slow) == 1 and "slower" in str(slow[0].message), [str(w.message) for w in seen]
    assert str(path) in str(slow[0].message)
    return night, got


def _schema_as(form: str, version: str = "11.1") -> dict:
    """The official schema as other tools write it: full name, namespace, or fields only."""
    plain = _ordered(load_schema(version).avro)  # full names throughout, as fastavro parses it
    if form == "name":
        return plain  # "lsst.v11_1.alert", no separate namespace
    major, minor = version.split(".")
    if form == "namespace":
        return {**plain, "name": "alert", "namespace": f"lsst.v{major}_{minor}"}
    return {**plain, "name": "archive.saved_alert"}  # fields only


@pytest.mark.parametrize("form", ["name", "namespace", "fields"])
def test_container_schema_identified_by_name_namespace_or_fields(tmp_path: Path, form: str) -> None:
    """A container of the 64 real v11.1 alerts opens whichever way its schema names itself,
    regrouped by visit with every alert in place."""
    _, records = _records()
    path = tmp_path / "alerts.avro"
    with open(path, "wb") as fo:
        fastavro.writer(fo, fastavro.parse_schema(_schema_as(form)), records)
    night, got = _read(path)
    assert night.schema.name == "11.1" and night.form is NightForm.CONTAINER
    assert got == _expected(records)
    assert night.visits == sorted(got)


@pytest.mark.parametrize("codec", ["null", "deflate", "bzip2", "xz", "snappy", "zstandard", "lz4"])
def test_container_any_codec(tmp_path: Path, codec: str) -> None:
    """Containers compressed with each codec fastavro reads (snappy, zstandard and lz4 through
    the fastavro extras minibroker depends on) open alike."""
    records = _records()[1][::4]  # 16 alerts of 7 visits: xz and bzip2 are slow on cutouts
    path = tmp_path / f"alerts-{codec}.avro"
    with open(path, "wb") as fo:
        fastavro.writer(
            fo,
            fastavro.parse_schema(_schema_as("name")),
            records,
            codec=codec,
            sync_interval=50_000,
        )
    _, got = _read(path)
    assert got == _expected(records)


def test_container_of_an_older_version(tmp_path: Path) -> None:
    """The real v10.0 alerts in a container open as schema 10.0."""
    _, records = _records("lsstcam/v10_0")
    path = tmp_path / "v10.avro"
    with open(path, "wb") as fo:
        fastavro.writer(
            fo, fastavro.parse_schema(_schema_as("namespace", "10.0")), records, codec="deflate"
        )
    night, got = _read(path)
    assert night.schema.name == "10.0" and got == _expected(records)


def test_directory_of_kafka_message_bodies() -> None:
    """The shared folder itself (Confluent-framed packets as Kafka carries them) opens as a night."""
    folder = SHARED_ALERTS / V11
    _, records = _records()
    night, got = _read(folder)
    assert night.form is NightForm.PACKETS and night.schema.name == "11.1"
    assert got == _expected(records)


def test_directory_of_bare_datums(tmp_path: Path) -> None:
    """Schemaless datums (no wire header) open: the version is the one that reads every file
    exactly, or the one the caller gives."""
    datums, records = _records("lsstcam/v10_0")
    for i, d in enumerate(datums):
        (tmp_path / f"{i:03d}.avro").write_bytes(d)
    night, got = _read(tmp_path)
    assert night.schema.name == "10.0" and got == _expected(records)
    night, _ = _read(tmp_path, schema=load_schema("10.0"))
    assert night.schema.name == "10.0"


def test_directory_of_one_record_containers(tmp_path: Path) -> None:
    """One fastavro container per alert, as some archives save them, opens regrouped by visit."""
    _, records = _records()
    schema = fastavro.parse_schema(_schema_as("name"))
    for i, r in enumerate(records):
        with open(tmp_path / f"alert-{i:03d}.avro", "wb") as fo:
            fastavro.writer(fo, schema, [r])
    (tmp_path / "README.md").write_text("notes beside the alerts are ignored")
    _, got = _read(tmp_path)
    assert got == _expected(records)


def test_directory_mixing_versions_is_refused(tmp_path: Path) -> None:
    """Files of two schema versions in one directory are named, with what to do."""
    for folder in ("lsstcam/v10_0", V11):
        f = packet_files(folder)[0]
        (tmp_path / f"{folder[-5:]}-{f.name}").write_bytes(f.read_bytes())
    with pytest.raises(
        SourceError, match=r"different schema versions: 10\.0 \(1 file, .*11\.1 \(1 file, .*own"
    ):
        open_night(tmp_path)


def test_directory_without_alert_files(tmp_path: Path) -> None:
    """An empty directory, or one of subdirectories, says what a packet directory is."""
    with pytest.raises(SourceError, match="must hold single-alert files"):
        open_night(tmp_path)
    with pytest.raises(SourceError, match=r"subdirectories v10_0, v11_1, v9_0: give one of them"):
        open_night(SHARED_ALERTS / "lsstcam")


def test_truncated_and_foreign_packets_name_the_file(tmp_path: Path) -> None:
    """A packet cut short says truncated and where the file ends; a file of random bytes says
    it is not an alert; both name the file."""
    body = packet_files(V11)[0].read_bytes()
    cut = tmp_path / "cut" / "a.avro"
    cut.parent.mkdir()
    cut.write_bytes(body[:1000])
    with pytest.raises(SourceError, match=rf"{cut}: truncated: the file ends at byte 1000"):
        open_night(cut.parent)
    junk = tmp_path / "junk" / "b.avro"
    junk.parent.mkdir()
    junk.write_bytes(bytes(range(1, 255)) * 10)
    with pytest.raises(SourceError, match=rf"{junk}: not an alert packet"):
        open_night(junk.parent)


def test_truncated_night_says_where_it_ends(small_night: Path, tmp_path: Path) -> None:
    """A minibroker night cut inside its header, a block, or between blocks names the file, says
    truncated and gives its real end (never an offset past it)."""
    data = small_night.read_bytes()
    for cut in (20, len(data) // 2, len(data) - 3):
        path = tmp_path / f"cut-{cut}.avro"
        path.write_bytes(data[:cut])
        with pytest.raises(SourceError, match=rf"{path}: truncated: the file ends at byte {cut}\b"):
            list(open_night(path).blocks())


def test_truncated_container_says_where_it_ends(tmp_path: Path) -> None:
    """A foreign container cut short says truncated, with its size."""
    _, records = _records()
    path = tmp_path / "a.avro"
    with open(path, "wb") as fo:
        fastavro.writer(fo, fastavro.parse_schema(_schema_as("name")), records, codec="deflate")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        SourceError, match=rf"{path}: truncated: the file ends at byte {len(data) // 2}"
    ):
        open_night(path)


def test_not_an_alert_file(tmp_path: Path) -> None:
    """Random bytes, an empty file and a missing path each get a message naming the path."""
    junk = tmp_path / "junk.avro"
    junk.write_bytes(b"\x13" * 5000)
    with pytest.raises(SourceError, match=rf"{junk}: not an Avro object container file"):
        open_night(junk)
    empty = tmp_path / "empty.avro"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match=rf"{empty}: empty file"):
        open_night(empty)
    with pytest.raises(SourceError, match=rf"{tmp_path / 'none.avro'}: no such night file"):
        open_night(tmp_path / "none.avro")


def test_container_of_other_records_is_refused(tmp_path: Path) -> None:
    """A container of records that are not LSST alerts says so, naming the file."""
    path = tmp_path / "other.avro"
    schema = {"type": "record", "name": "thing", "fields": [{"name": "x", "type": "long"}]}
    with open(path, "wb") as fo:
        fastavro.writer(fo, schema, [{"x": 1}])
    with pytest.raises(
        SourceError, match=rf"{path}: its schema \(name 'thing'\) matches none of the LSST"
    ):
        open_night(path)


def test_minibroker_night_reads_in_place_without_a_warning(small_night: Path) -> None:
    """The fast form stays fast and quiet: blocks are the visits its header lists."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        night = open_night(small_night)
        counts = Counter(b.visit for b in night.blocks())
    assert (
        night.form is NightForm.MINIBROKER
        and list(counts) == night.visits
        and set(counts.values()) == {1}
    )


def test_a_walked_night_is_walked_once_for_its_visits_then_its_blocks(tmp_path: Path) -> None:
    """night_info then read_night (as `produce` does) walk a foreign file once and warn once;
    a changed file is walked again."""
    from engine.sources import night_info, read_night

    _, records = _records()
    path = tmp_path / "a.avro"
    with open(path, "wb") as fo:
        fastavro.writer(fo, fastavro.parse_schema(_schema_as("name")), records[:10])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _, visits = night_info(path)
        assert [b.visit for b in read_night(path)] == visits
        assert len(seen) == 1
        with open(path, "wb") as fo:
            fastavro.writer(fo, fastavro.parse_schema(_schema_as("name")), records[:20])
        assert sum(b.count for b in read_night(path)) == 20 and len(seen) == 2


def test_one_packet_file_is_a_night() -> None:
    """A single Kafka message body given as the night opens as its one visit."""
    path = packet_files(V11)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one alert: nothing slow to say
        night = open_night(path)
    assert night.form is NightForm.PACKETS and [b.count for b in night.blocks()] == [1]
