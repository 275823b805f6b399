"""Publishing against a real server: caps, withheld counts, visit markers, one stored packet per
alert, idempotence across replays and crashes, statistics and suspension in the registry."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from engine.config import load_config
from engine.decode import VisitBatch, decode_block
from engine.registry import ActiveFilter, keys
from engine.registry.store import ActiveFilters, FilterStatus, Registry
from engine.sinks.streams import Publisher
from engine.sources.night import night_info, read_night
from engine.subscribe import follow
from sandbox import FilterFault, Outcome, compile_filter

ALL = '"""Everything."""\ndef filter(alerts):\n    return True\n'


@pytest.fixture(scope="module")
def visit(small_night) -> VisitBatch:
    """The small night's first visit (300 alerts), every column decoded."""
    schema, _ = night_info(small_night)
    return decode_block(next(iter(read_night(small_night))), schema)


def _filter(user: str, name: str = "all", source: str = ALL) -> ActiveFilter:
    return ActiveFilter(user, compile_filter(source, f"{name}.py"))


def _outcome(f: ActiveFilter, mask: np.ndarray) -> Outcome:
    return Outcome(f.key, mask, 0.001)


def _entries(client, user):
    return [f for _, f in client.xrange(keys.stream_key(user))]


def _config(**changes):
    return dataclasses.replace(load_config(env={}), **changes)


def test_cap_delivers_the_most_reliable_and_says_what_it_withheld(
    visit, redis_client, unique_user
) -> None:
    """Over the cap, the K most reliable alerts are delivered, then one withheld entry with
    the count, then the visit marker with passed/delivered/withheld per filter."""
    f = _filter(unique_user)
    report = Publisher(redis_client, _config(max_matches_per_visit=5)).publish(
        visit, [f], [_outcome(f, np.ones(len(visit), bool))]
    )
    assert report.delivered[f.key] == 5 and report.withheld[f.key] == len(visit) - 5
    assert report.capped == report.withheld
    entries = _entries(redis_client, unique_user)
    assert [e[b"kind"] for e in entries] == [b"match"] * 5 + [b"withheld", b"visit"]
    rel = visit.batch.column("diaSource").field("reliability").to_numpy(zero_copy_only=False)
    delivered = [float(e[b"reliability"]) for e in entries[:5]]
    assert delivered == sorted(np.sort(rel[~np.isnan(rel)])[-5:].tolist(), reverse=True)
    assert int(entries[5][b"count"]) == len(visit) - 5
    marker = entries[6]
    assert int(marker[b"alerts"]) == len(visit) and int(marker[b"visit"]) == visit.visit
    assert json.loads(marker[b"filters"]) == {
        "all": {"passed": len(visit), "delivered": 5, "withheld": len(visit) - 5, "faults": 0}
    }


def test_a_visit_with_no_match_still_gets_its_marker(visit, redis_client, unique_user) -> None:
    """Silence means nothing passed: the marker says the visit ran."""
    f = _filter(unique_user)
    Publisher(redis_client, _config()).publish(
        visit, [f], [_outcome(f, np.zeros(len(visit), bool))]
    )
    (marker,) = _entries(redis_client, unique_user)
    assert marker[b"kind"] == b"visit"
    assert json.loads(marker[b"filters"])["all"]["passed"] == 0


def test_replays_and_partial_publishes_write_each_match_once(
    visit, redis_client, unique_user
) -> None:
    """A visit published twice adds nothing; a crash half-way (one filter published) then the
    whole visit again gives each match exactly once per filter, withheld counted once."""
    one, two = (
        _filter(unique_user, "one"),
        _filter(unique_user, "two", ALL.replace("True", "True ")),
    )
    mask = np.zeros(len(visit), bool)
    mask[:30] = True
    outcomes = [_outcome(one, mask), _outcome(two, mask)]
    config = _config()
    Publisher(redis_client, config).publish(visit, [one], outcomes[:1])  # the crash
    again = Publisher(redis_client, config).publish(visit, [one, two], outcomes)
    assert again.duplicates == {one.key: 1} and again.delivered == {two.key: 20}
    before = redis_client.xlen(keys.stream_key(unique_user))
    replay = Publisher(redis_client, config).publish(visit, [one, two], outcomes)
    assert replay.total == 0 and redis_client.xlen(keys.stream_key(unique_user)) == before
    entries = _entries(redis_client, unique_user)
    for name in (b"one", b"two"):
        ids = [
            e[b"diaSourceId"] for e in entries if e[b"kind"] == b"match" and e[b"filter"] == name
        ]
        assert len(ids) == len(set(ids)) == 20
        assert [
            int(e[b"count"]) for e in entries if e[b"kind"] == b"withheld" and e[b"filter"] == name
        ] == [10]
    last = json.loads([e for e in entries if e[b"kind"] == b"visit"][-1][b"filters"])
    assert last["one"]["delivered"] == last["two"]["delivered"] == 20


def test_engines_sharing_a_visit_share_the_cap(visit, redis_client, unique_user) -> None:
    """Two engines each publishing half of a visit deliver at most the cap between them; the
    whole visit replayed afterwards (cut differently) adds nothing, withheld counts included."""
    f = _filter(unique_user)
    half = len(visit) // 2
    parts = [
        VisitBatch(visit.visit, visit.schema, visit.batch.slice(a, b - a), visit.raw[a:b])
        for a, b in ((0, half), (half, len(visit)))
    ]
    config = _config()
    delivered = sum(
        Publisher(redis_client, config).publish(p, [f], [_outcome(f, np.ones(len(p), bool))]).total
        for p in parts
    )
    assert delivered == 20
    markers = [e for e in _entries(redis_client, unique_user) if e[b"kind"] == b"visit"]
    assert int(markers[-1][b"alerts"]) == len(visit)
    assert json.loads(markers[-1][b"filters"])["all"] == {
        "passed": len(visit),
        "delivered": 20,
        "withheld": len(visit) - 20,
        "faults": 0,
    }
    before = redis_client.xlen(keys.stream_key(unique_user))
    again = Publisher(redis_client, config).publish(
        visit, [f], [_outcome(f, np.ones(len(visit), bool))]
    )
    assert again.total == 0 and again.withheld[f.key] == 0
    assert redis_client.xlen(keys.stream_key(unique_user)) == before


def test_each_packet_is_stored_once_and_read_back(visit, redis_client, unique_user) -> None:
    """Three filters of two users matching the same alerts store each packet once; the
    subscriber gets the full packet back with every entry."""
    other = unique_user + "x"
    filters = [
        _filter(unique_user, "a"),
        _filter(unique_user, "b", ALL + "\n"),
        _filter(other, "c"),
    ]
    mask = np.zeros(len(visit), bool)
    mask[[3, 7, 11]] = True
    publisher = Publisher(redis_client, _config(retention_s=600))
    before = len(list(redis_client.scan_iter(match=keys.PACKET_PATTERN, count=1000)))
    publisher.publish(visit, filters, [_outcome(f, mask) for f in filters])
    after = len(list(redis_client.scan_iter(match=keys.PACKET_PATTERN, count=1000)))
    assert after - before <= 3
    got = [
        f
        for _, f in follow(redis_client, unique_user, since="0", block_ms=50, stop_when_idle=True)
        if f[b"kind"] == b"match"
    ]
    assert len(got) == 6
    wires = {visit.wire(r) for r in (3, 7, 11)}
    assert {f[b"alert"] for f in got} == wires
    token = got[0][b"packet"].decode()
    assert 0 < redis_client.ttl(keys.packet_key(token)) <= 600
    redis_client.delete(keys.stream_key(other))


def test_registry_statistics_and_suspension(visit, redis_client, unique_user) -> None:
    """Publishing adds to a registry filter's statistics; repeated faults suspend it (owner
    told on the stream), so the engine's active set drops it; enabling brings it back."""
    registry = Registry(redis_client)
    f = _filter(unique_user, "flaky")
    registry.add_version(unique_user, "flaky", ALL, "flaky.py", f.compiled.version)
    config = _config(suspend_after_faults=2, max_matches_per_visit=3)
    publisher = Publisher(redis_client, config)
    publisher.publish(visit, [f], [_outcome(f, np.ones(len(visit), bool))])
    stats = registry.get(unique_user, "flaky").stats
    assert (stats["visits"], stats["passed"], stats["delivered"], stats["withheld"]) == (
        1,
        300,
        3,
        297,
    )

    def fault_on(v: int) -> None:
        other = dataclasses.replace(visit, visit=v)
        publisher.publish(
            other, [f], [Outcome(f.key, None, 0.5, FilterFault("flaky.py:3: ZeroDivisionError"))]
        )

    fault_on(visit.visit + 1)
    assert registry.get(unique_user, "flaky").status is FilterStatus.ACTIVE
    fault_on(visit.visit + 2)
    record = registry.get(unique_user, "flaky")
    assert (
        record.status is FilterStatus.SUSPENDED and "2 faults in its last 3 visits" in record.reason
    )
    assert record.stats["faults"] == 2
    kinds = [e[b"kind"] for e in _entries(redis_client, unique_user)]
    assert kinds.count(b"fault") == 2 and kinds.count(b"suspended") == 1
    active = ActiveFilters(redis_client, compile=lambda src, name: compile_filter(src, name))
    active.refresh()
    epoch = registry.epoch()
    fault_on(visit.visit + 3)  # suspended: nothing counts, nothing changes
    assert registry.epoch() == epoch
    assert f.key not in {a.key for a in active.filters}
    registry.set_status(unique_user, "flaky", FilterStatus.ACTIVE)
    active.refresh()
    assert f.key in {a.key for a in active.filters}
    registry.set_cap(unique_user, "flaky", 50)
    active.refresh()
    assert active.caps[f.key] == 50
    registry.forget_user(unique_user)


def test_suspension_counts_faults_in_a_window(visit, redis_client, unique_user) -> None:
    """A filter that faults on every other visit is suspended once 3 of its last 5 visits
    faulted (the worker pool's rule too), not only after 3 faults in a row."""
    registry = Registry(redis_client)
    f = _filter(unique_user, "alternating")
    registry.add_version(unique_user, "alternating", ALL, "alternating.py", f.compiled.version)
    publisher = Publisher(redis_client, _config(suspend_after_faults=3, suspend_window=5))
    fault = FilterFault("alternating.py:3: ZeroDivisionError")
    for i, faulted in enumerate([True, False, True, False, True]):
        other = dataclasses.replace(visit, visit=visit.visit + 100 + i)
        outcome = (
            Outcome(f.key, None, 0.1, fault) if faulted else _outcome(f, np.zeros(len(visit), bool))
        )
        publisher.publish(other, [f], [outcome])
        status = registry.get(unique_user, "alternating").status
        assert status is (FilterStatus.SUSPENDED if i == 4 else FilterStatus.ACTIVE), i
    assert "3 faults in its last 5 visits" in registry.get(unique_user, "alternating").reason
    registry.forget_user(unique_user)
