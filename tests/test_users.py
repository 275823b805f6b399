"""Users and their ACLs, tried against a real server with each user's own credentials."""

from __future__ import annotations

import uuid

import pytest
import redis

from engine.errors import ConfigError
from engine.registry import keys
from engine.registry.users import add_user, connect, list_users, remove_user, url_user


@pytest.fixture()
def two_users(redis_client, redis_url):
    """Users A and B (fresh names), each with a connection made from the URL add-user printed."""
    names = [f"a{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}"]
    urls = [add_user(redis_client, redis_url, n) for n in names]
    clients = [connect(u) for u in urls]
    redis_client.xadd(keys.stream_key(names[1]), {"kind": "match", "secret": "b's"})
    redis_client.hset(keys.filter_key(names[1], "f"), mapping={"status": "active"})
    redis_client.rpush(keys.versions_key(names[1], "f"), "{}")
    yield names, urls, clients
    for c in clients:
        c.close()
    for n in names:
        remove_user(redis_client, n)


def test_add_user_prints_a_working_url(two_users) -> None:
    """The printed REDIS_URL names the user and logs in as them."""
    (a, _), (url_a, _), (client_a, _) = two_users
    assert url_user(url_a) == a
    assert client_a.ping()


def test_user_reads_and_acknowledges_own_stream(two_users, redis_client) -> None:
    """A reads her stream, reads it in a consumer group and acknowledges, and submits to her inbox."""
    (a, _), _, (client_a, _) = two_users
    redis_client.xadd(keys.stream_key(a), {"kind": "visit"})
    assert len(client_a.xrange(keys.stream_key(a))) == 1
    assert client_a.xread({keys.stream_key(a): "0"}, count=1)
    client_a.xgroup_create(keys.stream_key(a), "g", id="0")
    ((_, entries),) = client_a.xreadgroup("g", "c", {keys.stream_key(a): ">"})
    assert client_a.xack(keys.stream_key(a), "g", entries[0][0]) == 1
    assert client_a.xinfo_stream(keys.stream_key(a))["length"] == 1
    assert client_a.xadd(keys.inbox_key(a), {"op": "submit"})
    redis_client.xadd(keys.reply_key(a), {"status": "done"})
    assert client_a.xrange(keys.reply_key(a))


REFUSED = {
    "read B's stream": lambda c, a, b: c.xrange(keys.stream_key(b)),
    "read B's stream with XREAD": lambda c, a, b: c.xread({keys.stream_key(b): "0"}),
    "trim B's stream": lambda c, a, b: c.xtrim(keys.stream_key(b), maxlen=0),
    "delete from B's stream": lambda c, a, b: c.xdel(keys.stream_key(b), "0-1"),
    "delete B's stream": lambda c, a, b: c.delete(keys.stream_key(b)),
    "write B's stream": lambda c, a, b: c.xadd(keys.stream_key(b), {"kind": "match"}),
    "write own stream": lambda c, a, b: c.xadd(keys.stream_key(a), {"kind": "match"}),
    "trim own stream": lambda c, a, b: c.xtrim(keys.stream_key(a), maxlen=0),
    "delete own stream": lambda c, a, b: c.delete(keys.stream_key(a)),
    "group on B's stream": lambda c, a, b: c.xgroup_create(keys.stream_key(b), "g", id="0"),
    "write B's inbox": lambda c, a, b: c.xadd(keys.inbox_key(b), {"op": "delete", "name": "f"}),
    "read own inbox": lambda c, a, b: c.xrange(keys.inbox_key(a)),
    "write own reply": lambda c, a, b: c.xadd(keys.reply_key(a), {"status": "accepted"}),
    "read B's reply": lambda c, a, b: c.xrange(keys.reply_key(b)),
    "read B's filter stats": lambda c, a, b: c.hgetall(keys.filter_key(b, "f")),
    "read B's filter code": lambda c, a, b: c.lrange(keys.versions_key(b, "f"), 0, -1),
    "list B's filters": lambda c, a, b: c.smembers(keys.filters_key(b)),
    "change own filter": lambda c, a, b: c.hset(keys.filter_key(a, "f"), "status", "active"),
    "read the engine's secret": lambda c, a, b: c.get(keys.engine_key("secret")),
    "read the engine's user list": lambda c, a, b: c.smembers(keys.engine_key("users")),
    "write a packet": lambda c, a, b: c.set(keys.packet_key("x"), b"forged"),
    "list keys": lambda c, a, b: c.keys("*"),
    "scan keys": lambda c, a, b: c.scan(0),
    "run a script": lambda c, a, b: c.eval("return 1", 0),
    "call a function": lambda c, a, b: c.execute_command("FCALL", "f", 0),
    "load a function": lambda c, a, b: c.execute_command("FUNCTION", "LIST"),
    "read the config": lambda c, a, b: c.config_get("*"),
    "change ACLs": lambda c, a, b: c.execute_command("ACL", "SETUSER", a, "+@all"),
    "list ACLs": lambda c, a, b: c.execute_command("ACL", "LIST"),
    "flush everything": lambda c, a, b: c.flushall(),
    "read other keys": lambda c, a, b: c.get("some:key"),
    "subscribe to channels": lambda c, a, b: c.publish("minibroker", "x"),
}


@pytest.mark.parametrize("what", sorted(REFUSED))
def test_the_server_refuses(two_users, what) -> None:
    """With A's own credentials the server refuses each thing outside A's rules."""
    (a, b), _, (client_a, _) = two_users
    with pytest.raises(redis.exceptions.NoPermissionError):
        REFUSED[what](client_a, a, b)


def test_names_are_validated_once() -> None:
    """User names: letters, digits, '-', '_', '.', not starting with '-'."""
    for good in ("alice", "a.b-c_d", "_x", "9"):
        assert keys.validate_name(good) == good
    for bad in ("-x", "a b", "a{b}", "a*", "", "é", "a:b", ".."):
        with pytest.raises(ConfigError):
            keys.validate_name(bad)


def test_list_and_remove_users(redis_client, redis_url) -> None:
    """list-users shows an added user; remove-user deletes the ACL user and their keys."""
    name = f"u{uuid.uuid4().hex[:8]}"
    url = add_user(redis_client, redis_url, name)
    redis_client.xadd(keys.stream_key(name), {"kind": "visit"})
    assert any(u.name == name and u.acl for u in list_users(redis_client))
    assert remove_user(redis_client, name)
    assert not redis_client.exists(keys.stream_key(name))
    assert name not in {u.name for u in list_users(redis_client)}
    with pytest.raises(ConfigError, match="refused the credentials"):
        connect(url)


def test_admin_commands(redis_url, redis_client, capsys) -> None:
    """`admin add-user` prints a URL, `list-users` shows the user, `set-cap` sets a filter's cap
    (refusing more than 100), `remove-user` removes them; a bad name is refused with exit 1."""
    from engine.cli import main
    from engine.registry.store import Registry

    name = f"c{uuid.uuid4().hex[:8]}"
    assert main(["admin", "add-user", name, "--redis-url", redis_url]) == 0
    assert url_user(capsys.readouterr().out.strip()) == name
    assert main(["admin", "list-users", "--redis-url", redis_url]) == 0
    assert any(line.startswith(name) for line in capsys.readouterr().out.splitlines())
    Registry(redis_client).add_version(name, "f", '"""F."""\n', "f.py", "abc")
    assert main(["admin", "set-cap", name, "f", "50", "--redis-url", redis_url]) == 0
    assert Registry(redis_client).get(name, "f").cap == 50
    assert main(["admin", "set-cap", name, "f", "500", "--redis-url", redis_url]) == 1
    assert "give 1 to 100" in capsys.readouterr().err
    assert main(["admin", "remove-user", name, "--redis-url", redis_url]) == 0
    assert main(["admin", "remove-user", name, "--redis-url", redis_url]) == 1
    assert main(["admin", "add-user", "--redis-url", redis_url, "--", "-bad"]) == 1
    assert main(["admin", "add-user", "a b", "--redis-url", redis_url]) == 1
    assert "is not valid" in capsys.readouterr().err
