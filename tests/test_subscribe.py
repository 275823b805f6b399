"""`subscribe` as the user: consumer groups, replay, filtering, files, clear refusals."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid

import fastavro
import numpy as np
import pytest

from engine.cli import main
from engine.config import load_config
from engine.decode import decode_block
from engine.registry import ActiveFilter, keys
from engine.registry.users import add_user, connect, remove_user
from engine.sinks.streams import Publisher
from engine.sources.night import night_info, read_night
from engine.subscribe import follow
from sandbox import Outcome, compile_filter

ALL = '"""Everything."""\ndef filter(alerts):\n    return True\n'


@pytest.fixture(scope="module")
def published(small_night, redis_url):
    """A user with 20 matches of filter `a`, 5 of filter `b` and a visit marker; their URL."""
    import redis

    admin = redis.Redis.from_url(redis_url)
    user = f"r{uuid.uuid4().hex[:8]}"
    url = add_user(admin, redis_url, user)
    schema, _ = night_info(small_night)
    visit = decode_block(next(iter(read_night(small_night))), schema)
    filters = [
        ActiveFilter(user, compile_filter(ALL, "a.py")),
        ActiveFilter(user, compile_filter(ALL, "b.py")),
    ]
    mask_b = np.zeros(len(visit), bool)
    mask_b[:5] = True
    Publisher(admin, load_config(env={})).publish(
        visit,
        filters,
        [
            Outcome(filters[0].key, np.ones(len(visit), bool), 0.0),
            Outcome(filters[1].key, mask_b, 0.0),
        ],
    )
    yield user, url
    remove_user(admin, user)
    admin.close()


def test_a_restarted_subscriber_continues_where_it_stopped(published) -> None:
    """In a consumer group, a second session starts after what the first acknowledged; `since`
    moves the group back to replay what is retained."""
    user, url = published
    client = connect(url)
    group = f"g{uuid.uuid4().hex[:6]}"
    first = []
    for entry_id, _ in follow(client, user, group=group, block_ms=50, stop_when_idle=True):
        first.append(entry_id)
        if len(first) == 5:
            break  # stops while handling the 5th: it is not acknowledged
    rest = [i for i, _ in follow(client, user, group=group, block_ms=50, stop_when_idle=True)]
    everything = [i.decode() for i, _ in client.xrange(keys.stream_key(user))]
    assert rest[0] == first[-1] and first[:-1] + rest == everything
    again = [
        i for i, _ in follow(client, user, group=group, since="0", block_ms=50, stop_when_idle=True)
    ]
    assert again == everything


def _subscribe(url: str, *args: str) -> int:
    """``minibroker subscribe`` as ``url``'s user, until the stream is idle."""
    return main(["subscribe", "--redis-url", url, *args, "--exit-when-idle"])


def test_filter_option_and_files(published, tmp_path, capsys) -> None:
    """--filter keeps one filter's entries; --out writes one JSON or Avro file per match with
    the full alert read back from its stored packet."""
    user, url = published
    assert _subscribe(url, "--no-group", "--from", "0", "--filter", "b") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["kind"] for e in lines] == ["match"] * 5 + ["visit"]
    assert all(e["filter"] == "b" for e in lines[:5])

    for fmt in ("json", "avro", "voevent"):
        out = tmp_path / fmt
        assert (
            _subscribe(url, "--group", fmt, "--filter", "b", "--format", fmt, "--out", str(out))
            == 0
        )
        files = sorted(out.iterdir())
        suffix = ".xml" if fmt == "voevent" else f".{fmt}"
        assert len(files) == 5 and all(f.suffix == suffix for f in files)
        if fmt == "voevent":
            assert b"<voe:VOEvent" in files[0].read_bytes() and b"Why" in files[0].read_bytes()
            # Named after the packet's id: <user>.<filter>.<diaSourceId>.xml
            assert all(f.name.startswith(f"{user}.b.") for f in files)
            continue
        if fmt == "avro":
            (record,) = list(fastavro.reader(io.BytesIO(files[0].read_bytes())))
        else:
            record = json.loads(files[0].read_text())["alert"]
        assert files[0].name == f"b-{record['diaSourceId']}.{fmt}"
    capsys.readouterr()


def test_voevent_on_standard_output(published, capsys) -> None:
    """--format voevent without --out prints one VOEvent packet per match; markers go to stderr."""
    from lxml import etree

    user, url = published
    assert _subscribe(url, "--no-group", "--from", "0", "--filter", "b", "--format", "voevent") == 0
    captured = capsys.readouterr()
    packets = [p for p in captured.out.split("<?xml") if p.strip()]
    assert len(packets) == 5
    ivorns = {etree.fromstring(("<?xml" + p).strip().encode()).get("ivorn") for p in packets}
    assert len(ivorns) == 5 and all(i.startswith("ivo://") for i in ivorns)
    assert '"kind": "visit"' in captured.err


def test_clear_messages_for_no_stream_and_no_permission(published, redis_url, capsys) -> None:
    """A user without a stream is told so (or waits with --wait); reading another user's stream
    is refused by the server and explained."""
    import redis

    user, url = published
    admin = redis.Redis.from_url(redis_url)
    newcomer = f"n{uuid.uuid4().hex[:8]}"
    new_url = add_user(admin, redis_url, newcomer)
    try:
        assert main(["subscribe", "--redis-url", new_url]) == 1
        assert "has no stream yet" in capsys.readouterr().err
        assert _subscribe(new_url, "--user", user, "--no-group") == 1
        err = capsys.readouterr().err
        assert "refused" in err and keys.stream_key(user) in err and "Traceback" not in err
    finally:
        remove_user(admin, newcomer)
        admin.close()


def test_a_closed_pipe_ends_quietly(published) -> None:
    """`subscribe | head -1` prints one line and subscribe exits 0 without a traceback."""
    user, url = published
    cmd = (
        f"set -o pipefail; {sys.executable} -m engine.cli subscribe --redis-url '{url}' "
        "--no-group --from 0 --wait | head -1"
    )
    proc = subprocess.run(
        ["bash", "-c", cmd], capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["kind"] == "match"
    assert proc.stderr == ""
