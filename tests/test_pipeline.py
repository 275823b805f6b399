"""End to end against a real private Redis server: a night in, each user's matches out."""

from __future__ import annotations

import io
import json

import fastavro
import numpy as np
import pytest

from engine.alerts.schema import load_schema
from engine.alerts.wire import unframe
from engine.config import load_config
from engine.evaluate import Evaluator, columns_needed
from engine.formats.json import render_json
from engine.registry import discover
from engine.service.pipeline import run_visits
from engine.sinks.streams import Publisher, stream_key
from engine.sources.night import night_info, read_night
from engine.subscribe import follow

BRIGHT = '''"""Bright, reliable detections."""
def filter(alerts):
    return (alerts.diaSource.snr > 30) & (alerts.diaSource.reliability > 0.8)
'''
BROKEN = '''"""Fails on every visit."""
def filter(alerts):
    return alerts.diaSource.snr / 0 > "x"
'''
REJECTED = """import os
def filter(alerts):
    return True
"""


@pytest.fixture()
def filter_dir(tmp_path, unique_user):
    """DIR/<user>/*.py with one good, one failing and one rejected filter."""
    user = tmp_path / "filters" / unique_user
    user.mkdir(parents=True)
    (user / "bright.py").write_text(BRIGHT)
    (user / "broken.py").write_text(BROKEN)
    (user / "rejected.py").write_text(REJECTED)
    return tmp_path / "filters"


def _run(night, filters, client):
    config = load_config(env={}, isolation="inprocess")
    schema, _ = night_info(night)
    with Evaluator(filters, config) as ev:
        return run_visits(read_night(night), schema, filters, ev, Publisher(client, config))


def test_matches_reach_the_owner_stream_exactly_once(
    small_night, filter_dir, redis_client, unique_user
) -> None:
    """Every passing alert appears once on its owner's stream, with headline and full packet;
    running the night again (a replay) adds nothing."""
    fs = discover(filter_dir)
    assert sorted(f.compiled.name for f in fs.active) == ["bright", "broken"]
    assert list(fs.rejected) == [f"{unique_user}/rejected"]

    report = _run(small_night, fs.active, redis_client)
    cap = load_config(env={}).max_matches_per_visit
    expected = sum(min(v.passed[f"{unique_user}/bright"], cap) for v in report.visits)
    assert expected > 0

    entries = list(follow(redis_client, unique_user, since="0", block_ms=100, stop_when_idle=True))
    matches = [f for _, f in entries if f[b"kind"] == b"match"]
    faults = [f for _, f in entries if f[b"kind"] == b"fault"]
    assert len(matches) == expected
    assert len(faults) == len(report.visits)
    assert b"broken.py:3" in faults[0][b"message"]

    for fields in matches:
        schema_id, datum = unframe(fields[b"alert"])
        schema = load_schema(schema_id)
        alert = fastavro.schemaless_reader(io.BytesIO(datum), schema.avro, schema.avro)
        assert int(fields[b"diaSourceId"]) == alert["diaSourceId"]
        assert int(fields[b"visit"]) == alert["diaSource"]["visit"]
        assert float(fields[b"snr"]) == pytest.approx(alert["diaSource"]["snr"], rel=1e-6)
        assert alert["diaSource"]["snr"] > 30 and alert["diaSource"]["reliability"] > 0.8
        for key in (
            b"filter",
            b"filter_version",
            b"diaObjectId",
            b"ra",
            b"dec",
            b"band",
            b"midpointMjdTai",
        ):
            assert key in fields

    again = _run(small_night, fs.active, redis_client)
    assert again.published == 0
    assert redis_client.xlen(stream_key(unique_user)) == len(entries)


def test_subscriber_renders_json_lines(small_night, filter_dir, redis_client, unique_user) -> None:
    """`follow` + `render_json` give one JSON object per entry, ids as exact integers."""
    fs = discover(filter_dir)
    _run(small_night, fs.active, redis_client)
    lines = [
        render_json(i, f)
        for i, f in follow(redis_client, unique_user, since="0", block_ms=100, stop_when_idle=True)
    ]
    assert lines
    first = json.loads(lines[0])
    kinds = {json.loads(line)["kind"] for line in lines}
    assert kinds >= {"match", "fault", "visit"}
    match = next(json.loads(line) for line in lines if json.loads(line)["kind"] == "match")
    assert isinstance(match["diaSourceId"], int) and match["alert_bytes"] > 1000
    assert "id" in first


def test_projection_covers_filters_and_delivery() -> None:
    """Decoding reads the filters' columns plus the headline fields, nothing else."""
    from engine.registry import ActiveFilter
    from sandbox import compile_filter

    f = ActiveFilter("u", compile_filter(BRIGHT, "bright.py"))
    cols = columns_needed([f], load_schema())
    assert "diaSource.snr" in cols and "diaSource.reliability" in cols and "diaSource.ra" in cols
    assert not any(c.startswith(("prvDiaSources", "cutout", "diaObject")) for c in cols)


def test_cap_limits_matches_per_visit(small_night, filter_dir, redis_client, unique_user) -> None:
    """A filter passing more than the cap publishes only the cap, and says how many it dropped."""
    (filter_dir / unique_user / "all.py").write_text(
        '"""Everything."""\ndef filter(alerts):\n    return True\n'
    )
    fs = discover(filter_dir)
    config = load_config(env={}, isolation="inprocess", max_matches_per_visit=None)
    config = type(config)(**{**config.__dict__, "max_matches_per_visit": 5})
    schema, _ = night_info(small_night)
    block = next(read_night(small_night))
    from engine.decode import decode_block

    visit = decode_block(block, schema)
    with Evaluator(fs.active, config) as ev:
        outcomes = ev.evaluate(visit.batch)
    rep = Publisher(redis_client, config).publish(visit, fs.active, outcomes)
    key = f"{unique_user}/all"
    assert rep.published[key] == 5
    assert rep.capped[key] == block.count - 5
    assert np.sum([o.passed for o in outcomes if o.key == key]) == block.count


def test_worker_pool_delivers_what_in_process_does(
    small_night, filter_dir, redis_client, unique_user
) -> None:
    """The service's isolated worker pool publishes exactly the in-process matches and faults."""
    fs = discover(filter_dir)
    schema, _ = night_info(small_night)
    config = load_config(env={"MINIBROKER_SHARED_WORKERS": "0"}, isolation="pool")
    with Evaluator(fs.active, config) as ev:
        assert ev.runner.shared_workers == 0  # type: ignore[union-attr]  # the setting reaches it
        report = run_visits(
            read_night(small_night), schema, fs.active, ev, Publisher(redis_client, config)
        )
    reference = _run(small_night, fs.active, redis_client)  # replay in-process: all duplicates
    assert [v.passed for v in report.visits] == [v.passed for v in reference.visits]
    assert reference.published == 0
    assert all(f"{unique_user}/broken" in v.faults for v in report.visits)


def test_a_corrupt_visit_is_skipped_and_named_the_rest_is_published(
    small_night, tmp_path, filter_dir, redis_url, redis_client, unique_user, capsys
) -> None:
    """Corrupt bytes in one visit's block cost that visit only: the CLI names it, publishes the
    others and exits 1; a rerun on the repaired night adds the missing visit, duplicating nothing."""
    from engine.cli import main

    data = bytearray(small_night.read_bytes())
    _, visits = night_info(small_night)
    sync = bytes(data[-16:])  # every OCF block ends with the file's sync marker
    second = data.index(sync, data.index(sync) + 16) + 16  # start of the second visit's block
    data[second + 12 : second + 40] = b"\xff" * 28  # inside its first datum
    broken = tmp_path / "broken.avro"
    broken.write_bytes(bytes(data))

    def matches() -> list[dict]:
        return [
            f for _, f in redis_client.xrange(stream_key(unique_user)) if f[b"kind"] == b"match"
        ]

    args = [
        "run",
        "--night",
        str(broken),
        "--filters",
        str(filter_dir),
        "--redis-url",
        redis_url,
        "--isolation",
        "inprocess",
        "--no-progress",
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"visit {visits[1]} skipped" in err and "could not be decoded" in err
    first = {int(f[b"visit"]) for f in matches()}
    assert first and visits[1] not in first

    args[2] = str(small_night)
    assert main(args) == 0
    after = matches()
    assert visits[1] in {int(f[b"visit"]) for f in after}
    assert len({f[b"diaSourceId"] for f in after}) == len(after)


def test_times_users_give_are_utc_and_bad_ones_say_what_to_give() -> None:
    """`subscribe --from` and `replay --from/--to` read ISO times as UTC (one parser), and a bad
    time names the flag and what it takes."""
    from engine.cli.replay import parse_time
    from engine.errors import ConfigError
    from engine.subscribe import start_id

    assert start_id("2026-11-25T03:00") == "1795575600000-0"
    assert start_id("2026-11-25T04:00+01:00") == "1795575600000-0"
    assert parse_time("2026-11-25T03:00", "--from") == 1795575600.0
    assert parse_time("1795575600.5", "--to") == 1795575600.5
    with pytest.raises(
        ConfigError, match=r"--from 'yesterday': give 'now', '0' \(everything kept\)"
    ):
        start_id("yesterday")
    with pytest.raises(ConfigError, match=r"--to 'soon': give a UTC time .* or Unix seconds"):
        parse_time("soon", "--to")


def test_shared_workers_is_a_setting_and_refuses_negative_counts() -> None:
    """``shared_workers`` (``MINIBROKER_SHARED_WORKERS``) defaults to one; below zero it is
    refused with a line that names the setting."""
    from engine.errors import ConfigError

    assert load_config(env={}).shared_workers == 1
    with pytest.raises(ConfigError, match=r"shared_workers must be 0 or more, got -1"):
        load_config(env={"MINIBROKER_SHARED_WORKERS": "-1"})
