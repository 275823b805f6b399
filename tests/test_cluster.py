"""Everything a user does also works on a 3-node Redis Cluster (started here on loopback):
publish with caps and markers, the registry, submissions, ACLs on every node, subscribe."""

from __future__ import annotations

import json
import threading
import uuid

import numpy as np
import pytest
import redis
from cluster import PrivateCluster
from redis.cluster import RedisCluster

from engine.config import load_config
from engine.decode import decode_block
from engine.registry import ActiveFilter, ActiveFilters, Registry, keys
from engine.registry.inbox import Status, submit_file
from engine.registry.users import add_user, connect, remove_user
from engine.service.submissions import process_pending
from engine.sinks.streams import Publisher
from engine.sources.night import night_info, read_night
from engine.subscribe import follow
from sandbox import Outcome, compile_filter

ALL = '"""Everything."""\ndef filter(alerts):\n    return True\n'
GOOD = '"""Bright."""\ndef filter(alerts):\n    return (alerts.diaSource.snr > 50) & (alerts.diaSource.reliability > 0.8)\n'


@pytest.fixture(scope="module")
def cluster_url():
    """A private 3-node cluster for this file; the URL of one node."""
    with PrivateCluster() as cluster:
        yield cluster.url


@pytest.fixture(scope="module")
def admin(cluster_url):
    """The engine's client: found to be a cluster from the URL of one node."""
    client = connect(cluster_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def visit(small_night):
    """The small night's first visit."""
    schema, _ = night_info(small_night)
    return decode_block(next(iter(read_night(small_night))), schema)


@pytest.fixture()
def users(admin, cluster_url):
    """Two users A and B with their own cluster connections."""
    names = [f"ca{uuid.uuid4().hex[:6]}", f"cb{uuid.uuid4().hex[:6]}"]
    urls = [add_user(admin, cluster_url, n) for n in names]
    clients = [connect(u) for u in urls]
    yield names, urls, clients
    for c in clients:
        c.close()
    for n in names:
        remove_user(admin, n)


def test_a_node_url_finds_the_cluster(admin, cluster_url) -> None:
    """Any node's URL gives a cluster client; ?cluster=no forces a single-node client."""
    assert isinstance(admin, RedisCluster)
    assert len(admin.get_primaries()) == 3
    assert not isinstance(connect(cluster_url + "?cluster=no"), RedisCluster)


def test_users_keys_spread_over_nodes_but_each_user_in_one_slot() -> None:
    """Hash tags put all of one user's keys in one slot; different users land on different slots."""
    from redis.crc import key_slot

    user_keys = [
        keys.stream_key("alice"),
        keys.seen_key("alice", "f", "v"),
        keys.visit_key("alice", 1),
        keys.filter_key("alice", "f"),
        keys.inbox_key("alice"),
        keys.reply_key("alice"),
    ]
    assert len({key_slot(k.encode()) for k in user_keys}) == 1
    assert len({key_slot(keys.stream_key(f"user{i}").encode()) for i in range(20)}) > 10


def test_publish_caps_markers_and_replays(admin, users, visit) -> None:
    """Caps, withheld entries, markers, packets read back and replay idempotence on a cluster."""
    (a, b), _, (client_a, _) = users
    filters = [
        ActiveFilter(a, compile_filter(ALL, "all.py")),
        ActiveFilter(b, compile_filter(ALL, "all.py")),
    ]
    outcomes = [Outcome(f.key, np.ones(len(visit), bool), 0.0) for f in filters]
    publisher = Publisher(admin, load_config(env={}))
    report = publisher.publish(visit, filters, outcomes)
    assert report.delivered == {f.key: 20 for f in filters}
    assert publisher.publish(visit, filters, outcomes).total == 0
    got = list(follow(client_a, a, group="g", block_ms=50, stop_when_idle=True))
    kinds = [f[b"kind"] for _, f in got]
    assert kinds == [b"match"] * 20 + [b"withheld", b"visit"]
    assert all(f[b"alert"][:1] == b"\x00" and len(f[b"alert"]) > 1000 for _, f in got[:20])
    assert json.loads(got[-1][1][b"filters"])["all"]["withheld"] == len(visit) - 20


def test_acls_hold_on_every_node(users) -> None:
    """On a cluster, A is refused B's stream, B's registry, engine keys, scripts and admin commands."""
    (a, b), _, (client_a, _) = users
    client_a.xadd(keys.inbox_key(a), {"op": "noop"})
    for attempt in (
        lambda: client_a.xrange(keys.stream_key(b)),
        lambda: client_a.xadd(keys.stream_key(b), {"x": "y"}),
        lambda: client_a.delete(keys.stream_key(b)),
        lambda: client_a.hgetall(keys.filter_key(b, "f")),
        lambda: client_a.get(keys.engine_key("secret")),
        lambda: client_a.eval("return 1", 0),
        lambda: client_a.config_get("*"),
        lambda: client_a.execute_command("ACL", "LIST"),
        lambda: client_a.flushall(),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
    for port in {n.port for n in client_a.get_nodes()}:  # the user exists on each node
        node = redis.Redis(host="127.0.0.1", port=port)
        assert a.encode() in node.execute_command("ACL", "USERS")
        node.close()


def test_submissions_and_registry(admin, users, visit, tmp_path) -> None:
    """A submission made as the user on a cluster is validated, versioned and picked up."""
    (a, _), _, (client_a, _) = users
    path = tmp_path / "bright.py"
    path.write_text(GOOD)
    config = load_config(env={}, isolation="inprocess")
    stop = threading.Event()

    def engine() -> None:
        while not stop.is_set():
            process_pending(admin, visit, config)
            stop.wait(0.05)

    thread = threading.Thread(target=engine, daemon=True)
    thread.start()
    try:
        reply = submit_file(client_a, a, path, wait_s=20)
    finally:
        stop.set()
        thread.join(10)
    assert reply.status is Status.ACCEPTED and reply.version == 1
    active = ActiveFilters(admin)
    active.refresh()
    assert f"{a}/bright" in {f.key for f in active.filters}
    assert Registry(client_a).get(a, "bright").version == 1
