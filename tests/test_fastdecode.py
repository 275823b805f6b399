"""The generated C decoder equals the fastavro reference, and fails loudly on bad input."""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fastavro
import pyarrow as pa
import pytest
from alertdata import assert_same, packet_files
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.alerts.schema import AlertSchema, arrow_schema, available_versions, load_schema
from engine.alerts.wire import unframe
from engine.decode import _fast as fd
from engine.decode import decode_reference
from engine.decode._fast import build
from engine.errors import DecodeError

pytestmark = pytest.mark.skipif(
    not fd.available(), reason=f"fast decoder: {fd.unavailable_reason()}"
)

PROJECTIONS = {
    "full": None,
    "scalars": [
        "diaSource.snr",
        "diaSource.ra",
        "diaSource.psfFlux",
        "diaObject.nDiaSources",
        "diaSourceId",
    ],
    "lightcurve+cutout": [
        "prvDiaSources.psfFlux",
        "prvDiaSources.band",
        "cutoutScience",
        "diaObject",
    ],
    "rest": [
        "ssSource",
        "mpc_orbits",
        "MPCORB",
        "observation_reason",
        "prvDiaForcedSources",
        "alertId",
        "ssObject",
        "prvDiaNondetectionLimits",
    ],
}
PROJECTED_IDS = (1101, 900, 704)


# ---------------------------------------------------------------------------------------------
# helpers


def same_array(x: pa.Array, y: pa.Array, path: str) -> None:
    """Arrays equal value by value, struct children included even under null parents."""
    assert x.type == y.type, path
    assert_same(x.to_pylist(), y.to_pylist(), path)
    if pa.types.is_struct(x.type):
        for i, f in enumerate(x.type):
            same_array(x.field(i), y.field(i), f"{path}.{f.name}")
    if pa.types.is_list(x.type):
        same_array(x.values, y.values, f"{path}[]")


def assert_batches_equal(got: pa.RecordBatch, ref: pa.RecordBatch) -> None:
    """Same schema (nullability too), valid Arrow, same values."""
    assert got.schema == ref.schema
    got.validate(full=True)
    for name in ref.schema.names:
        same_array(got.column(name), ref.column(name), name)


def datums_of(folder: str = "") -> dict[int, list[bytes]]:
    """Shared packets grouped by schema id, wire header stripped."""
    out: dict[int, list[bytes]] = {}
    for path in packet_files(folder):
        sid, datum = unframe(path.read_bytes())
        out.setdefault(sid, []).append(bytes(datum))
    return out


@pytest.fixture(scope="module")
def shared() -> dict[int, list[bytes]]:
    """Every shared packet by schema id, with their decoders built (in parallel when cold)."""
    by_id = datums_of()
    jobs = [(sid, cols) for sid in PROJECTED_IDS for cols in PROJECTIONS.values()]
    jobs += [(v, None) for v in available_versions()]
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(lambda j: fd.decoder(load_schema(j[0]), j[1]), jobs))
    return by_id


# ---------------------------------------------------------------------------------------------
# equality with the reference on real data


@pytest.mark.parametrize("projection", list(PROJECTIONS))
def test_shared_packets_equal_reference(shared: dict[int, list[bytes]], projection: str) -> None:
    """Every shared packet equals fastavro: all versions in full, three of them projected too."""
    for sid, datums in shared.items():
        if projection != "full" and sid not in PROJECTED_IDS:
            continue  # every projected decoder is another compile; three versions suffice
        schema = load_schema(sid)
        cols = PROJECTIONS[projection]
        assert_batches_equal(
            fd.decode_datums(datums, schema, cols), decode_reference(datums, schema, cols)
        )


def test_block_equals_reference_and_slices_datums(shared: dict[int, list[bytes]]) -> None:
    """A night block decodes like its datums, and each raw slice is exactly one datum."""
    datums = shared[1101]
    schema = load_schema(1101)
    block = memoryview(b"".join(datums))
    for cols in PROJECTIONS.values():
        batch, raw = fd.decode_block(block, len(datums), schema, cols, where="visit 7")
        assert_batches_equal(batch, decode_reference(datums, schema, cols))
        assert [bytes(r) for r in raw] == datums


def test_datums_decoded_where_they_lie(shared: dict[int, list[bytes]]) -> None:
    """bytes, memoryview slices and bytearrays mix in one call; nothing needs joining."""
    datums = shared[1101][:6]
    schema = load_schema(1101)
    framed = [b"\x00\x00\x00\x04\x4d" + d for d in datums]
    mixed = [datums[0], memoryview(framed[1])[5:], bytearray(datums[2]), *datums[3:]]
    assert_batches_equal(
        fd.decode_datums(mixed, schema, None), decode_reference(datums, schema, None)
    )


def test_every_schema_version_sample(shared: dict[int, list[bytes]]) -> None:
    """The official fakeAlert.avro OCF block of every installed schema version decodes right."""
    import lsst.alert.packet as packet

    root = Path(packet.get_schema_root())
    tried = 0
    for version in available_versions():
        schema = load_schema(version)
        path = (
            root
            / str(schema.version[0])
            / str(schema.version[1])
            / "sample_data"
            / "fakeAlert.avro"
        )
        if not path.exists():
            continue
        with open(path, "rb") as fo:
            for blk in fastavro.block_reader(fo):
                data = blk.bytes_.getvalue()
                batch, raw = fd.decode_block(
                    memoryview(data), blk.num_records, schema, None, "sample"
                )
                ref = decode_reference([bytes(r) for r in raw], schema, None)
                assert_batches_equal(batch, ref)
                tried += 1
    assert tried >= 10


def test_generated_night() -> None:
    """A simulated night (engine.local.simulate) decodes visit by visit exactly like the reference."""
    simulate = pytest.importorskip(
        "engine.local.simulate", reason="engine.local.simulate is not written yet"
    )
    import tempfile

    from engine.sources.night import read_night

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "night.avro"
        simulate.simulate_night(
            out, visits=2, alerts_per_visit=40, seed=3, schema_version="11.1", progress=False
        )
        schema = load_schema("11.1")
        for block in read_night(out):
            for cols in (None, PROJECTIONS["scalars"]):
                batch, raw = fd.decode_block(
                    block.data, block.count, schema, cols, f"visit {block.visit}"
                )
                assert_batches_equal(batch, decode_reference(raw, schema, cols))


def test_long_lightcurves(shared: dict[int, list[bytes]]) -> None:
    """An alert with 5,000 prvDiaSources (buffers grow mid-visit) still equals the reference."""
    schema = load_schema(1101)
    record = fastavro.schemaless_reader(io.BytesIO(shared[1101][0]), schema.avro, schema.avro)
    item = dict(record["diaSource"])
    record["prvDiaSources"] = [dict(item, diaSourceId=i) for i in range(5000)]
    record["prvDiaForcedSources"] = []
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema.avro, record)
    datums = [out.getvalue(), *shared[1101][:3]]
    for cols in (None, ["prvDiaSources.diaSourceId", "prvDiaForcedSources"]):
        assert_batches_equal(
            fd.decode_datums(datums, schema, cols), decode_reference(datums, schema, cols)
        )


# ---------------------------------------------------------------------------------------------
# property-based: edge values over a small schema that uses every construct, and the real one

EDGE_AVRO = {
    "type": "record",
    "name": "edge.alert",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "n", "type": ["null", "int"]},
        {"name": "flag", "type": ["boolean", "null"]},  # null second: the other union order
        {"name": "name", "type": ["null", "string"]},
        {"name": "blob", "type": ["null", "bytes"]},
        {"name": "when", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}]},
        {
            "name": "src",
            "type": {
                "type": "record",
                "name": "edge.src",
                "fields": [
                    {"name": "x", "type": "double"},
                    {"name": "f", "type": ["null", "float"]},
                    {"name": "tags", "type": ["null", {"type": "array", "items": "string"}]},
                    {
                        "name": "inner",
                        "type": [
                            "null",
                            {
                                "type": "record",
                                "name": "edge.inner",
                                "fields": [
                                    {"name": "k", "type": "int"},
                                    {"name": "b", "type": "boolean"},
                                ],
                            },
                        ],
                    },
                ],
            },
        },
        {"name": "obj", "type": ["null", "edge.src"]},
        {"name": "history", "type": ["null", {"type": "array", "items": "edge.src"}]},
        {
            "name": "matrix",
            "type": {"type": "array", "items": {"type": "array", "items": "double"}},
        },
        {"name": "cut", "type": "bytes"},
    ],
}


def edge_schema(version: tuple[int, int]) -> AlertSchema:
    """The edge-case schema as an AlertSchema (a made-up version keys its decoder)."""
    parsed = fastavro.parse_schema(EDGE_AVRO)
    return AlertSchema(version=version, schema_id=0, avro=parsed, arrow=arrow_schema(parsed))


def strategy_for(avro: object, named: dict[str, object], depth: int = 0) -> st.SearchStrategy:
    """Hypothesis values for an Avro type: nulls, NaN/±inf, int extremes, unicode, empty."""
    if isinstance(avro, list):
        other = next(t for t in avro if t != "null")
        return st.one_of(st.none(), strategy_for(other, named, depth))
    if isinstance(avro, str) and avro in named:
        avro = named[avro]
    if isinstance(avro, dict):
        kind = avro["type"]
        if kind == "record":
            named[avro["name"]] = avro
            return st.fixed_dictionaries(
                {f["name"]: strategy_for(f["type"], named, depth + 1) for f in avro["fields"]}
            )
        if kind == "array":
            return st.lists(
                strategy_for(avro["items"], named, depth + 1), max_size=4 if depth < 2 else 2
            )
        if avro.get("logicalType") == "timestamp-micros":
            return st.integers(-62135596800 * 10**6, 253402300799 * 10**6)
        avro = kind
    return {
        "long": st.integers(-(2**63), 2**63 - 1),
        "int": st.integers(-(2**31), 2**31 - 1),
        "float": st.floats(width=32, allow_nan=True, allow_infinity=True),
        "double": st.floats(allow_nan=True, allow_infinity=True),
        "boolean": st.booleans(),
        "string": st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
        "bytes": st.binary(max_size=40),
    }[avro]


def encode(schema: AlertSchema, records: list[dict]) -> list[bytes]:
    """Schemaless datums of the given records."""
    out = []
    for record in records:
        bio = io.BytesIO()
        fastavro.schemaless_writer(bio, schema.avro, record)
        out.append(bio.getvalue())
    return out


EDGE = edge_schema((990, 1))
EDGE_RECORDS = st.lists(strategy_for(EDGE.avro, {}), min_size=0, max_size=6)
V11 = load_schema("11.1")
V11_RECORDS = st.lists(strategy_for(V11.avro, {}), min_size=1, max_size=3)
EDGE_PROJECTIONS = [
    None,
    ["src.f", "history.tags", "matrix", "flag"],
    ["obj.inner", "when", "blob"],
]


@settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(records=EDGE_RECORDS, which=st.sampled_from(range(len(EDGE_PROJECTIONS))))
def test_edge_values_equal_reference(records: list[dict], which: int) -> None:
    """Nulls vs empty lists, NaN/±inf, int64 extremes, unicode, empty bytes, nested lists."""
    cols = EDGE_PROJECTIONS[which]
    datums = encode(EDGE, records)
    assert_batches_equal(fd.decode_datums(datums, EDGE, cols), decode_reference(datums, EDGE, cols))
    batch, _ = fd.decode_block(memoryview(b"".join(datums)), len(datums), EDGE, cols, "visit 1")
    assert_batches_equal(batch, decode_reference(datums, EDGE, cols))


# Whole alerts are large: hypothesis says so when it builds their repr (only shown on failure).
@pytest.mark.filterwarnings("ignore:Generating overly large repr")
@settings(
    max_examples=15,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(records=V11_RECORDS)
def test_generated_v11_alerts_equal_reference(records: list[dict]) -> None:
    """Random v11.1 alerts (every field nullable as the schema says) equal the reference."""
    datums = encode(V11, records)
    for cols in (None, PROJECTIONS["scalars"]):
        assert_batches_equal(
            fd.decode_datums(datums, V11, cols), decode_reference(datums, V11, cols)
        )


# ---------------------------------------------------------------------------------------------
# corrupt input


def test_every_truncation_raises(shared: dict[int, list[bytes]]) -> None:
    """Cutting a datum anywhere raises DecodeError naming the message and a byte offset."""
    schema = load_schema(1101)
    datum = shared[1101][0]
    for cut in [0, 1, 2, 10, 100, 500, 1000, 3000, len(datum) // 2, len(datum) - 1]:
        with pytest.raises(DecodeError, match=r"message 1: corrupt Avro datum: .* at byte \d+"):
            fd.decode_datums([datum, datum[:cut]], schema, None)
        with pytest.raises(DecodeError):
            fd.decode_datums([datum[:cut]], schema, PROJECTIONS["scalars"])


def test_truncated_block_names_visit_alert_and_offset(shared: dict[int, list[bytes]]) -> None:
    """A block missing its last bytes fails with the visit, the alert index and a byte offset."""
    datums = shared[1101][:3]
    block = b"".join(datums)
    with pytest.raises(
        DecodeError, match=r"^visit 42: alert 2 \(starting at byte \d+ of the block\)"
    ):
        fd.decode_block(memoryview(block[:-7]), 3, load_schema(1101), None, "visit 42")
    with pytest.raises(DecodeError, match="trailing bytes"):
        fd.decode_block(memoryview(block + b"\x00"), 3, load_schema(1101), None, "visit 42")


@settings(max_examples=200, deadline=None, database=None)
@given(data=st.data())
def test_corrupted_bytes_never_give_a_wrong_row(
    data: st.DataObject, shared: dict[int, list[bytes]]
) -> None:
    """Flipped bytes: DecodeError, or a batch equal to what the reference makes of them."""
    schema = load_schema(1101)
    datum = bytearray(data.draw(st.sampled_from(shared[1101][:8])))
    limit = min(len(datum), 6000)  # the cutouts are opaque bytes; corrupt the structure
    for _ in range(data.draw(st.integers(1, 3))):
        datum[data.draw(st.integers(0, limit - 1))] = data.draw(st.integers(0, 255))
    try:
        got = fd.decode_datums([bytes(datum)], schema, None)
    except DecodeError:
        return
    assert_batches_equal(got, decode_reference([bytes(datum)], schema, None))


def test_not_bytes_is_a_decode_error() -> None:
    """An item that is not bytes-like is reported as a DecodeError, not a crash."""
    with pytest.raises(DecodeError, match="bytes-like"):
        fd.decode_datums([b"\x00", 17], load_schema(1101), None)  # type: ignore[list-item]


# ---------------------------------------------------------------------------------------------
# compiler cache and availability


def test_cache_reuse_does_not_run_the_compiler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second load of a decoder comes from the disk cache: gcc does not run again."""
    monkeypatch.setenv("MINIBROKER_CACHE", str(tmp_path))
    schema, cols = edge_schema((991, 7)), ["src.x"]
    before = build.stats["compiles"]
    first = fd.decoder(schema, cols)
    assert build.stats["compiles"] == before + 1
    assert list((tmp_path / "fastdecode").glob("*.so"))
    fd._decoders.clear()  # a fresh process, as far as the in-memory table knows
    second = fd.decoder(schema, cols)
    assert second is not first
    assert build.stats["compiles"] == before + 1
    assert not [p for p in (tmp_path / "fastdecode").iterdir() if p.name.startswith(".")]


def test_no_compiler_means_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a C compiler available() is False and says why; the env switch turns it off."""
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("MINIBROKER_CC", raising=False)
    assert not fd.available()
    assert "compiler" in (fd.unavailable_reason() or "")
    monkeypatch.undo()
    monkeypatch.setenv("MINIBROKER_DECODER", "reference")
    assert not fd.available()


def test_batches_survive_buffer_reuse(shared: dict[int, list[bytes]]) -> None:
    """A batch still held keeps its values while later visits reuse pooled buffers."""
    schema = load_schema(1101)
    a = shared[1101][:10]
    b = shared[1101][10:20]
    first = fd.decode_datums(a, schema, None)
    for _ in range(4):
        fd.decode_datums(b, schema, None)
    assert_batches_equal(first, decode_reference(a, schema, None))
