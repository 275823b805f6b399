"""Users: Redis ACL users that can read their own stream and write their own inbox, nothing else.

``minibroker admin add-user alice`` (engine credentials) creates the ACL user ``alice`` with a
random password and prints the ``REDIS_URL`` she works with. Her rules (:func:`acl_rules`):

- her stream ``minibroker:{alice}:stream``: read it (``XREAD``, ``XRANGE``, ``XREVRANGE``,
  ``XLEN``, ``XINFO``) and read it in her consumer groups (``XGROUP CREATE``/``SETID``/
  ``DESTROY``/``CREATECONSUMER``/``DELCONSUMER``, ``XREADGROUP``, ``XACK``, ``XPENDING``,
  ``XCLAIM``, ``XAUTOCLAIM``); never ``XADD``, ``XTRIM``, ``XDEL``, ``DEL`` (Redis counts the
  group commands as writes, so this key is read-write for those commands only);
- her inbox ``minibroker:{alice}:inbox``: ``XADD`` only (submissions and filter requests);
- her reply stream and her own registry entries (``...:filters``, ``...:filter:*``): read only
  (``%R~``), so she sees her filters' code, status and statistics;
- packets ``minibroker:packet:*``: ``GET`` only. Packets are shared by all users (one copy per
  alert), so they cannot sit under her hash tag; their names carry a keyed hash of the alert id
  (:func:`engine.publish.packet_token`) that only the engine can compute, she has no ``SCAN`` or
  ``KEYS``, so she can read exactly the packets her entries name (and no list of what matched
  anyone else). What a packet holds is the public alert that every data-rights holder receives.
- connection housekeeping (``PING``, ``HELLO``, ``CLIENT SETNAME/SETINFO``, ``COMMAND``,
  ``CLUSTER SLOTS/SHARDS/INFO``, needed by cluster clients); no scripts, no admin commands, no
  other keys. Each key rule is an ACL *selector* (Redis 7+, Valkey), so a command is allowed
  only together with its keys.

On a Redis Cluster, ACL users are per node: every rule is applied on every node.

Connecting: :func:`connect` takes a ``REDIS_URL``. A cluster is found by itself (any node's URL
will do: the client asks it for the others), or named explicitly with the URL option
``?cluster=yes`` (``?cluster=no`` forces a single server).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster

from engine.errors import ConfigError
from engine.registry import keys
from engine.registry.store import Registry

__all__ = [
    "UserInfo",
    "acl_rules",
    "add_user",
    "connect",
    "is_cluster",
    "list_users",
    "remove_user",
    "url_user",
]

_HOUSEKEEPING = (
    "+ping",
    "+hello",
    "+auth",
    "+client|setname",
    "+client|setinfo",
    "+client|id",
    "+command",
    "+command|docs",
    "+command|info",
    "+command|count",
    "+cluster|slots",
    "+cluster|shards",
    "+cluster|info",
    "+cluster|nodes",
    "+cluster|myid",
    "+readonly",
)
_STREAM_READ = (
    "+xread",
    "+xrange",
    "+xrevrange",
    "+xlen",
    "+xinfo|stream",
    "+xinfo|groups",
    "+xinfo|consumers",
    "+exists",
    "+type",
)
_GROUP = (
    "+xreadgroup",
    "+xack",
    "+xpending",
    "+xclaim",
    "+xautoclaim",
    "+xgroup|create",
    "+xgroup|createconsumer",
    "+xgroup|delconsumer",
    "+xgroup|setid",
    "+xgroup|destroy",
)
_REGISTRY_READ = (
    "+smembers",
    "+scard",
    "+sismember",
    "+hgetall",
    "+hget",
    "+hmget",
    "+lrange",
    "+llen",
)


def acl_rules(user: str, password: str) -> list[str]:
    """The ``ACL SETUSER`` arguments that confine ``user`` (see module doc)."""
    keys.validate_name(user)
    stream, inbox, reply = keys.stream_key(user), keys.inbox_key(user), keys.reply_key(user)
    return [
        "reset",
        "on",
        f">{password}",
        "resetchannels",
        "-@all",
        *_HOUSEKEEPING,
        f"(~{stream} {' '.join(_STREAM_READ + _GROUP)})",
        f"(~{inbox} +xadd)",
        f"(%R~{reply} %R~{keys.filters_key(user)} %R~{keys.filter_key(user, '*')} "
        f"{' '.join(_STREAM_READ + _REGISTRY_READ)})",
        f"(%R~{keys.PACKET_PATTERN} +get)",
    ]


def _split_url(url: str) -> tuple[str, bool | None]:
    """The URL without minibroker's own options, and ``cluster`` if the URL says."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    cluster = None
    rest = []
    for k, v in query:
        if k == "cluster":
            if v.lower() not in ("yes", "no", "true", "false", "1", "0"):
                raise ConfigError(f"REDIS_URL option cluster={v!r}: give cluster=yes or cluster=no")
            cluster = v.lower() in ("yes", "true", "1")
        else:
            rest.append((k, v))
    return urlunsplit(parts._replace(query=urlencode(rest))), cluster


def url_user(url: str) -> str | None:
    """The user name in a ``REDIS_URL`` (None for the default user)."""
    name = urlsplit(url).username
    return None if name in (None, "", "default") else name


def connect(url: str, *, timeout_s: float = 3.0) -> Any:
    """A client for ``url``: :class:`redis.Redis`, or :class:`redis.cluster.RedisCluster` when
    the server is a cluster node (found by asking it, or forced by ``?cluster=yes|no``).

    Raises :class:`ConfigError` when the server cannot be reached or refuses the credentials.
    """
    plain, cluster = _split_url(url)
    try:
        if cluster is None:
            probe = redis.Redis.from_url(plain, socket_connect_timeout=timeout_s)
            try:
                cluster = is_cluster(probe)
            finally:
                probe.close()
        if cluster:
            return RedisCluster.from_url(plain, socket_connect_timeout=timeout_s)
        client = redis.Redis.from_url(plain, socket_connect_timeout=timeout_s)
        client.ping()
        return client
    except redis.AuthenticationError as exc:
        raise ConfigError(
            f"Redis at {_safe(url)} refused the credentials ({exc}); check REDIS_URL"
        ) from None
    except (redis.RedisError, ValueError, IndexError) as exc:
        raise ConfigError(
            f"cannot reach Redis at {_safe(url)} ({exc}); start one, set REDIS_URL, or try `minibroker demo`"
        ) from None


def is_cluster(client: Any) -> bool:
    """Whether ``client``'s server runs in cluster mode."""
    if isinstance(client, RedisCluster):
        return True
    try:
        info = client.execute_command("CLUSTER", "INFO")
    except redis.ResponseError:
        return False  # "cluster support disabled"
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:" in text


def _safe(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (
        f":{parts.port}" if parts.port else ""
    )
    return urlunsplit(parts._replace(netloc=netloc))


def _acl(client: Any, *args: str) -> Any:
    """Run one ACL command on the server, or on every node of a cluster (ACLs are per node)."""
    if isinstance(client, RedisCluster):
        replies = client.execute_command("ACL", *args, target_nodes=RedisCluster.ALL_NODES)
        return next(iter(replies.values())) if isinstance(replies, dict) else replies
    return client.execute_command("ACL", *args)


def add_user(client: Any, engine_url: str, user: str) -> str:
    """Create (or reset the password of) ACL user ``user``; return the REDIS_URL they use."""
    keys.validate_name(user)
    if user == "default":
        raise ConfigError("'default' is Redis's own user; pick another name")
    password = secrets.token_urlsafe(24)
    rules = acl_rules(user, password)
    while True:
        try:
            _acl(client, "SETUSER", user, *rules)
            break
        except redis.ResponseError as exc:
            # An older server (Redis 7.0) does not know a housekeeping command such as
            # CLIENT SETINFO: leave that one out; anything else is a real error.
            unknown = re.search(r"modifier '(\+[a-z|]+)': Unknown command", str(exc))
            if unknown is None or unknown.group(1) not in _HOUSEKEEPING:
                raise
            rules.remove(unknown.group(1))
    client.sadd(keys.engine_key("users"), user)
    try:  # the engine reads submissions in a consumer group of the inbox
        client.xgroup_create(keys.inbox_key(user), "engine", id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    parts = urlsplit(engine_url)
    host = parts.hostname or "localhost"
    netloc = f"{quote(user)}:{quote(password)}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def remove_user(client: Any, user: str) -> bool:
    """Delete ACL user ``user``, their filters and all their keys; False if unknown."""
    keys.validate_name(user)
    known = bool(client.srem(keys.engine_key("users"), user))
    deleted = _acl(client, "DELUSER", user)
    Registry(client).forget_user(user)
    for key in list(client.scan_iter(match=keys.user_pattern(user), count=1000)):
        client.delete(key)
    return known or bool(deleted)


@dataclass(frozen=True)
class UserInfo:
    """One user as ``admin list-users`` shows them."""

    name: str
    acl: bool
    filters: int
    stream_entries: int


def list_users(client: Any) -> list[UserInfo]:
    """Users created by ``add-user``, with whether their ACL user exists on the server."""
    names = sorted(v.decode() for v in client.smembers(keys.engine_key("users")))
    acl = {v.decode() if isinstance(v, bytes) else str(v) for v in _acl(client, "USERS")}
    out = []
    for name in names:
        out.append(
            UserInfo(
                name,
                name in acl,
                int(client.scard(keys.filters_key(name))),
                int(client.xlen(keys.stream_key(name)))
                if client.exists(keys.stream_key(name))
                else 0,
            )
        )
    return out
