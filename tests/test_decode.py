"""Decoding equals fastavro, field by field, on every shared packet and on a generated night."""

from __future__ import annotations

import io

import fastavro
import pytest
from alertdata import assert_same, packet_files

from engine.alerts.schema import load_schema, project_schema
from engine.alerts.wire import frame, unframe
from engine.decode import decode_block, decode_messages
from engine.errors import DecodeError
from engine.sources.night import read_night


def _fastavro(body: bytes) -> dict:
    schema_id, datum = unframe(body)
    schema = load_schema(schema_id)
    return fastavro.schemaless_reader(io.BytesIO(datum), schema.avro, schema.avro)


@pytest.mark.parametrize("path", packet_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shared_packet_matches_fastavro(path) -> None:
    """Each real packet, of every schema version, decodes to exactly what fastavro reads."""
    body = path.read_bytes()
    visit = decode_messages([body])
    assert visit.batch.num_rows == 1
    assert_same(visit.batch.to_pylist()[0], _fastavro(body))
    assert visit.wire(0) == body


def test_a_whole_visit_of_real_packets_decodes_in_one_batch(v11_packets) -> None:
    """64 real v11.1 alerts decode into one 64-row batch, rows in message order."""
    visit = decode_messages(v11_packets)
    assert visit.batch.num_rows == len(v11_packets)
    assert visit.batch.schema == load_schema("11.1").arrow
    for row, body in zip(visit.batch.to_pylist(), v11_packets, strict=True):
        assert_same(row, _fastavro(body))


def test_projection_keeps_only_the_named_columns(v11_packets) -> None:
    """A projected decode has only the requested paths, with the same values."""
    cols = ["diaSourceId", "diaSource.snr", "diaObject.nDiaSources", "prvDiaSources.psfFlux"]
    visit = decode_messages(v11_packets, cols)
    assert visit.batch.schema == project_schema(load_schema("11.1").arrow, cols)
    assert visit.batch.schema.names == ["diaSourceId", "diaSource", "prvDiaSources", "diaObject"]
    for row, body in zip(visit.batch.to_pylist(), v11_packets, strict=True):
        ref = _fastavro(body)
        assert row["diaSource"] == {"snr": ref["diaSource"]["snr"]}
        assert row["diaObject"] == (
            None if ref["diaObject"] is None else {"nDiaSources": ref["diaObject"]["nDiaSources"]}
        )
        assert_same(
            row["prvDiaSources"],
            None
            if ref["prvDiaSources"] is None
            else [{"psfFlux": p["psfFlux"]} for p in ref["prvDiaSources"]],
        )


def test_generated_night_matches_fastavro(small_night) -> None:
    """Every alert of a generated night decodes to what fastavro's OCF reader returns."""
    with open(small_night, "rb") as fo:
        reference = list(fastavro.reader(fo))
    schema = load_schema("11.1")
    rows = []
    for block in read_night(small_night):
        visit = decode_block(block, schema)
        assert len({v for v in visit.batch.column("diaSource").field("visit").to_pylist()}) == 1
        assert visit.visit == visit.batch.column("diaSource").field("visit")[0].as_py()
        rows.extend(visit.batch.to_pylist())
    assert len(rows) == len(reference)
    for row, ref in zip(rows, reference, strict=True):
        assert_same(row, ref)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\x00\x00", "too short"),
        (b"\x01\x00\x00\x04M" + b"\x00" * 10, "magic byte"),
        (frame(b"\x02\x00", 1101), "corrupt"),
    ],
)
def test_bad_bodies_raise_a_clear_decode_error(body, message) -> None:
    """Malformed messages raise DecodeError naming the problem, not a crash."""
    with pytest.raises(DecodeError, match=message):
        decode_messages([body])


def test_truncated_real_packet_raises_decode_error(v11_packets) -> None:
    """A real packet cut short is reported as corrupt."""
    with pytest.raises(DecodeError):
        decode_messages([v11_packets[0][: len(v11_packets[0]) // 2]])


def test_unknown_schema_id_is_named() -> None:
    """A schema id lsst-alert-packet does not ship is reported with the id."""
    with pytest.raises(DecodeError, match="9999"):
        decode_messages([frame(b"\x00", 9999)])
