"""Decoding Kafka bodies in small batches: buffers are reused at once, headers checked in C,
and a message's visit is read from its first fields without decoding it."""

from __future__ import annotations

import gc

import pytest

from engine.alerts.schema import available_versions, load_schema
from engine.alerts.wire import frame
from engine.decode import _fast as fd
from engine.decode import decode_messages, decode_reference
from engine.errors import DecodeError
from engine.sources.kafka import peek_visit

needs_fast = pytest.mark.skipif(not fd.available(), reason="no fast decoder here")


@needs_fast
def test_a_dropped_batch_returns_its_buffers_without_the_cycle_collector(v11_packets) -> None:
    """With the cycle collector off, dropping a decoded batch puts its context back in the
    decoder's pool at once, and the next decode takes it from there."""
    schema = load_schema(1101)
    dec = fd.decoder(schema, None)
    gc.collect()
    gc.disable()
    try:
        visit = decode_messages(v11_packets[:8])
        pooled = len(dec._pool)
        del visit
        assert len(dec._pool) == pooled + 1
        visit = decode_messages(v11_packets[:8])
        assert len(dec._pool) == pooled
        del visit
    finally:
        gc.enable()


@needs_fast
def test_bad_headers_are_named_by_index(v11_packets) -> None:
    """The C header check names the message: magic byte, short body, another schema id."""
    good = v11_packets[0]
    for bad, words in (
        (b"\x01" + good[1:], "magic byte is 1"),
        (good[:3], "3 bytes is too short"),
        (frame(good[5:], 1100), "schema id 1100 differs"),
    ):
        with pytest.raises(DecodeError, match=f"message 2: {words}"):
            decode_messages([good, good, bad, good])


def test_framed_rows_keep_their_datums(v11_packets) -> None:
    """Each row's raw datum is the body without its header, and wire() gives the body back."""
    visit = decode_messages(v11_packets[:5], ["diaSourceId", "diaSource.visit"])
    assert [bytes(r) for r in visit.raw] == [b[5:] for b in v11_packets[:5]]
    assert visit.wire(3) == v11_packets[3]


@pytest.mark.parametrize("version", [v for v in available_versions() if float(v) >= 7.0])
def test_peek_visit_matches_the_decoded_visit(version: str) -> None:
    """Reading diaSource.visit from the first fields agrees with a full decode in every schema
    version that has a visit."""
    import tempfile
    from pathlib import Path

    from engine.local.simulate import simulate_night
    from engine.sources.night import read_night

    schema = load_schema(version)
    with tempfile.TemporaryDirectory() as tmp:
        night = simulate_night(
            Path(tmp) / "n.avro",
            visits=2,
            alerts_per_visit=3,
            seed=1,
            schema_version=version,
            progress=False,
        ).path
        for block in read_night(night):
            from engine.decode import decode_block

            for datum in decode_block(block, schema, ["diaSourceId"]).raw:
                body = frame(datum, schema.schema_id)
                assert peek_visit(body, schema) == block.visit
                ref = decode_reference([datum], schema, ["diaSource.visit"])
                assert ref.column("diaSource").field("visit")[0].as_py() == block.visit
