"""The live service on a real Kafka-protocol broker (Tansu) and a real Redis: produce → serve →
user streams, compared with a clean offline run of the same night and filters."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from kafka_fixtures import (
    committed,
    delete_keys,
    filter_dir,
    live_config,
    reference_matches,
    serve_command,
    serve_env,
    stream_matches,
)

from engine.alerts.wire import frame
from engine.local.ports import free_port
from engine.service.produce import produce_night
from engine.service.serve import DEADLETTER_STREAM, ServeSettings, serve
from engine.service.visitindex import lookup
from engine.sinks.streams import stream_key
from engine.sources.kafka import KafkaSettings

PARTITIONS = 4


@pytest.fixture()
def users(tmp_path: Path, redis_client, unique_user: str, kafka_names):  # type: ignore[no-untyped-def]
    """Two filter trees with the same filters: ``live`` for serve, ``ref`` for the offline run."""
    live, ref = f"{unique_user}l", f"{unique_user}r"
    dirs = filter_dir(tmp_path / "live", live), filter_dir(tmp_path / "ref", ref)
    yield live, ref, dirs[0], dirs[1]
    delete_keys(redis_client, live, ref, kafka_names.topic)
    for entry_id, fields in redis_client.xrange(DEADLETTER_STREAM):
        if fields.get(b"topic") == kafka_names.topic.encode():
            redis_client.xdel(DEADLETTER_STREAM, entry_id)


def _serve_here(
    bootstrap: str,
    names,
    filters: Path,
    client,
    idle_s: float = 2.0,  # type: ignore[no-untyped-def]
    metrics_port: int | None = None,
) -> None:
    settings = ServeSettings(
        KafkaSettings(bootstrap, names.topic, names.group, linger_s=0.5),
        filters,
        metrics_port=metrics_port,
    )
    config = live_config()
    assert serve(settings, config, client, idle_exit_s=idle_s, handle_signals=False) == 0


def test_serve_delivers_what_an_offline_run_delivers(
    kafka_bootstrap, kafka_names, redis_client, users, small_night
) -> None:
    """Kafka → serve → Redis gives every user the same matches, once each, as `run --night`;
    offsets are committed to the end, the visit index lists each visit's offset ranges, and the
    Prometheus endpoint counts the visits and alerts."""
    live, ref, live_dir, ref_dir = users
    produced = produce_night(
        small_night, kafka_bootstrap, kafka_names.topic, partitions=PARTITIONS, progress=False
    )
    port, scraped = free_port(), []
    done = threading.Event()
    scraper = threading.Thread(target=_scrape, args=(port, scraped, done))
    scraper.start()
    try:
        _serve_here(kafka_bootstrap, kafka_names, live_dir, redis_client, metrics_port=port)
    finally:
        done.set()
        scraper.join()
    assert scraped and "minibroker_visits_total 3.0" in scraped[-1]
    assert f"minibroker_alerts_total {float(produced.alerts)}" in scraped[-1]
    assert "minibroker_visit_own_latency_seconds_count 3.0" in scraped[-1]
    expected = reference_matches(redis_client, small_night, ref_dir, ref)
    got = stream_matches(redis_client, live)
    assert expected and sum(expected.values()) > 20
    assert got == expected
    assert (
        committed(kafka_bootstrap, kafka_names.topic, kafka_names.group, PARTITIONS)
        == produced.per_partition
    )
    spans = lookup(redis_client, kafka_names.topic, 0)
    assert [s.visit for s in spans] == produced.visits
    assert all(len(s.offsets) == PARTITIONS for s in spans)


def _scrape(port: int, out: list[str], done: threading.Event) -> None:
    """Keep the latest /metrics page until ``done`` (the server goes away when serve returns)."""
    import urllib.request

    while not done.is_set():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as page:
                out.append(page.read().decode())
                del out[:-1]
        except OSError:
            pass
        done.wait(0.2)


def test_bad_messages_go_to_the_dead_letter_stream(
    kafka_bootstrap, kafka_names, redis_client, users, small_night, v11_packets
) -> None:
    """Junk, an unknown schema id, a truncated and a corrupt datum are dead-lettered with their
    reason and coordinates; the good alerts around them are still delivered."""
    from confluent_kafka import Producer

    live, ref, live_dir, ref_dir = users
    produced = produce_night(
        small_night, kafka_bootstrap, kafka_names.topic, partitions=1, progress=False
    )
    good = v11_packets[0]
    bad = {
        "not_avro": b"hello, not an alert",
        "unknown_schema": frame(good[5:], 4242),
        "truncated": good[:9],
        "corrupt": good[: len(good) // 2],
    }
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    for body in bad.values():
        p.produce(kafka_names.topic, body, partition=0)
    p.flush(10)
    _serve_here(kafka_bootstrap, kafka_names, live_dir, redis_client)
    letters = {}
    for _id, f in redis_client.xrange(DEADLETTER_STREAM):
        if f[b"topic"] == kafka_names.topic.encode():
            letters[int(f[b"offset"])] = (f[b"reason"].decode(), f[b"body"], f[b"detail"].decode())
    first = produced.alerts
    assert {o: r for o, (r, _b, _d) in letters.items()} == {first + i: r for i, r in enumerate(bad)}
    assert [b for _r, b, _d in letters.values()] == list(bad.values())
    assert stream_matches(redis_client, live) == reference_matches(
        redis_client, small_night, ref_dir, ref
    )
    assert committed(kafka_bootstrap, kafka_names.topic, kafka_names.group, 1) == {
        0: first + len(bad)
    }


def test_a_schema_version_change_mid_topic_is_served(
    kafka_bootstrap, kafka_names, redis_client, users, tmp_path
) -> None:
    """A topic carrying a v10.0 night and then a v11.1 night is decoded with each message's own
    schema; both nights deliver what their offline runs deliver."""
    from engine.local.simulate import simulate_night

    live, ref, live_dir, ref_dir = users
    # Two nights a day apart (their visits and alert ids differ), the older schema first.
    nights = [
        simulate_night(
            tmp_path / f"v{v}.avro",
            visits=2,
            alerts_per_visit=100,
            seed=5 + i,
            schema_version=v,
            start_mjd=61000.0 + i,
            progress=False,
        ).path
        for i, v in enumerate(("10.0", "11.1"))
    ]
    for night in nights:
        produce_night(night, kafka_bootstrap, kafka_names.topic, partitions=2, progress=False)
    _serve_here(kafka_bootstrap, kafka_names, live_dir, redis_client)
    for night in nights:  # the reference stream accumulates both nights
        expected = reference_matches(redis_client, night, ref_dir, ref)
    got = stream_matches(redis_client, live)
    schema_ids = {
        f[b"schema_id"]
        for _i, f in redis_client.xrange(stream_key(live))
        if f.get(b"kind") == b"match"
    }
    assert schema_ids == {b"1000", b"1101"}
    assert got == expected and len(got) > 5


def test_sigterm_drains_the_open_visit_and_exits_0(
    kafka_bootstrap, kafka_names, redis_url, redis_client, users, small_night
) -> None:
    """SIGTERM while a visit is still open (long linger and quiet times): the visit is published, its offsets
    committed, and serve exits 0 within a few seconds."""
    live, ref, live_dir, ref_dir = users
    produced = produce_night(
        small_night, kafka_bootstrap, kafka_names.topic, partitions=PARTITIONS, progress=False
    )
    proc = subprocess.Popen(
        serve_command(
            kafka_bootstrap,
            kafka_names.topic,
            kafka_names.group,
            live_dir,
            redis_url,
            "--linger-s",
            "600",
            "--quiet-s",
            "600",
        ),
        stderr=subprocess.PIPE,
        text=True,
        env=serve_env(),
    )
    try:
        # The first two visits close when every partition has moved on to the next one; the
        # last one stays open (nothing follows it, the waits are long) until SIGTERM.
        deadline = time.monotonic() + 60
        while committed(kafka_bootstrap, kafka_names.topic, kafka_names.group, PARTITIONS) != {
            p: 2 * n // 3 for p, n in produced.per_partition.items()
        }:
            assert time.monotonic() < deadline and proc.poll() is None, (
                "serve did not publish visits 1-2"
            )
            time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert stream_matches(redis_client, live) == reference_matches(
        redis_client, small_night, ref_dir, ref
    )
    assert (
        committed(kafka_bootstrap, kafka_names.topic, kafka_names.group, PARTITIONS)
        == produced.per_partition
    )


def test_shards_split_the_users_and_each_reads_every_partition(
    kafka_bootstrap, kafka_names, redis_client, unique_user, small_night, tmp_path
) -> None:
    """`serve --shard I/2` in two groups: each shard runs only its users' filters over every
    partition, and every user gets what an offline run gives them."""
    from engine.service.serve import shard_of

    names = iter(f"{unique_user}{k}" for k in range(100))
    users = [next(u for u in names if shard_of(u, 2) == shard) for shard in (0, 1)]
    live, ref = tmp_path / "live", tmp_path / "ref"
    for user in users:
        filter_dir(live, user)
        filter_dir(ref, f"{user}r")
    try:
        produce_night(
            small_night, kafka_bootstrap, kafka_names.topic, partitions=PARTITIONS, progress=False
        )
        config = live_config()
        seen: dict[int, set[str]] = {}
        for shard in (0, 1):
            settings = ServeSettings(
                KafkaSettings(
                    kafka_bootstrap, kafka_names.topic, f"{kafka_names.group}-{shard}", linger_s=0.5
                ),
                live,
                shard=(shard, 2),
            )
            before = {u: sum(stream_matches(redis_client, u).values()) for u in users}
            assert serve(settings, config, redis_client, idle_exit_s=2.0, handle_signals=False) == 0
            seen[shard] = {
                u for u in users if sum(stream_matches(redis_client, u).values()) > before[u]
            }
        assert seen == {0: {users[0]}, 1: {users[1]}}
        reference_matches(redis_client, small_night, ref, f"{users[0]}r")  # runs both users
        for user in users:
            assert stream_matches(redis_client, user) == stream_matches(redis_client, f"{user}r")
    finally:
        delete_keys(redis_client, *users, kafka_names.topic)


def test_redis_refusing_writes_pauses_the_visit_and_loses_nothing(
    kafka_bootstrap, kafka_names, redis_client, users, small_night, caplog
) -> None:
    """While Redis refuses writes (min-replicas-to-write with no replica), serve retries the
    visit with backoff and commits nothing; once Redis takes writes again every match arrives,
    once each."""
    live, ref, live_dir, ref_dir = users
    produced = produce_night(
        small_night, kafka_bootstrap, kafka_names.topic, partitions=PARTITIONS, progress=False
    )
    redis_client.config_set("min-replicas-to-write", 1)
    worker = threading.Thread(
        target=_serve_here,
        args=(kafka_bootstrap, kafka_names, live_dir, redis_client),
        kwargs={"idle_s": 2.0},
    )
    try:
        worker.start()
        deadline = time.monotonic() + 30
        while '"event": "redis_unavailable"' not in caplog.text:  # joined, read, retrying visit 1
            assert time.monotonic() < deadline, "serve never tried to publish"
            time.sleep(0.1)
        time.sleep(1.0)  # a few retries
        assert stream_matches(redis_client, live) == {}
        assert set(
            committed(kafka_bootstrap, kafka_names.topic, kafka_names.group, PARTITIONS).values()
        ) == {-1001}
    finally:
        redis_client.config_set("min-replicas-to-write", 0)
    worker.join(60)
    assert not worker.is_alive()
    assert stream_matches(redis_client, live) == reference_matches(
        redis_client, small_night, ref_dir, ref
    )
    assert (
        committed(kafka_bootstrap, kafka_names.topic, kafka_names.group, PARTITIONS)
        == produced.per_partition
    )


def test_without_filters_dir_serve_runs_the_registry(
    kafka_bootstrap, kafka_names, small_night, tmp_path
) -> None:
    """With no --filters, serve evaluates the registry's active filters (a private Redis, so
    no other test's registry takes part) and delivers what an offline run of them delivers."""
    import hashlib

    import redis

    from engine.local.redis_server import PrivateRedis
    from engine.registry import Registry

    user, ref = "alice", "alicer"
    ref_dir = filter_dir(tmp_path / "ref", ref)
    with PrivateRedis() as server:
        client = redis.Redis.from_url(server.url)
        registry = Registry(client)
        for path in sorted((ref_dir / ref).glob("*.py")):
            source = path.read_text()
            registry.add_version(
                user, path.stem, source, path.name, hashlib.sha256(source.encode()).hexdigest()
            )
        produce_night(
            small_night, kafka_bootstrap, kafka_names.topic, partitions=PARTITIONS, progress=False
        )
        settings = ServeSettings(
            KafkaSettings(kafka_bootstrap, kafka_names.topic, kafka_names.group, linger_s=0.5), None
        )
        assert serve(settings, live_config(), client, idle_exit_s=2.0, handle_signals=False) == 0
        got = stream_matches(client, user)
        expected = reference_matches(client, small_night, ref_dir, ref)
        assert got and got == expected
