"""Subscribe: read a user's stream, with the stored packets put back into match entries
(rendering is :mod:`engine.formats`).

Two ways to read:

- with a consumer group (``group=``, what ``minibroker subscribe`` does): the group keeps the
  position in Redis, so a restarted subscriber continues where it stopped; entries handed out but
  not acknowledged (the subscriber died while handling them) come again first. An entry is
  acknowledged when the caller asks for the next one. A new group starts at the oldest entry
  retained; ``since`` moves the group to that point.
- without a group: from ``since`` (default: new entries only), nothing remembered.

``since`` is ``now``/``$`` (new only), ``0`` (everything retained), a stream id or a UTC time
(``2026-11-25T03:00``). Match entries refer to a stored packet (see :mod:`engine.publish`);
they come out with ``alert`` set to the packet (Confluent-framed Avro), or to ``b""`` with
``packet_expired`` when the packet outlived its retention.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from typing import Any

import redis

from engine.config import parse_utc
from engine.errors import ConfigError
from engine.registry import keys

__all__ = ["follow", "start_id"]

Entry = tuple[str, dict[bytes, bytes]]


def start_id(since: str | None) -> str:
    """Stream id to read after: ``$`` (new only), ``0`` (all), an id, or an ISO time."""
    if since is None or since in ("$", "0", "now"):
        return "$" if since in (None, "now") else since
    if "-" in since and since.split("-")[0].isdigit() and len(since.split("-")) == 2:
        return since
    seconds = parse_utc(
        since, "--from", "'now', '0' (everything kept), a stream id or a time like 2026-11-25T03:00"
    )
    return f"{int(seconds * 1000)}-0"


def _refused(user: str, exc: redis.RedisError) -> ConfigError:
    return ConfigError(
        f"the server refused to let these credentials read {keys.stream_key(user)} ({exc}); "
        f"use the REDIS_URL printed by `minibroker admin add-user {user}`"
    )


def follow(
    client: Any,
    user: str,
    *,
    since: str | None = None,
    group: str | None = None,
    consumer: str = "main",
    filter_name: str | None = None,
    block_ms: int = 1000,
    stop_when_idle: bool = False,
    wait: bool = True,
    alive: Callable[[], bool] | None = None,
) -> Generator[Entry, None, None]:
    """Yield ``(entry_id, fields)`` from a user's stream as they arrive (see module doc).

    ``filter_name`` keeps only that filter's entries (and visit markers); ``wait=False`` raises
    :class:`ConfigError` at once when the user has no stream yet; ``alive`` is asked after
    every ``block_ms`` without news, and False ends the iteration (the reader went away).
    """
    idle = (lambda: True) if stop_when_idle else (lambda: alive is not None and not alive())
    key = keys.stream_key(user)
    try:
        if not wait and not client.exists(key):
            raise ConfigError(
                f"{user} has no stream yet: none of their filters has run (submit one with "
                "`minibroker submit FILE`), or pass --wait to wait for the first entry"
            )
        if group is None:
            yield from _plain(client, key, start_id(since), block_ms, idle, filter_name)
        else:
            yield from _grouped(client, key, group, consumer, since, block_ms, idle, filter_name)
    except redis.exceptions.NoPermissionError as exc:
        raise _refused(user, exc) from None
    except redis.exceptions.AuthenticationError as exc:
        raise ConfigError(
            f"the server did not accept these credentials ({exc}); check REDIS_URL"
        ) from None


def _keep(fields: dict[bytes, bytes], filter_name: str | None) -> bool:
    return (
        filter_name is None or fields.get(b"filter", filter_name.encode()) == filter_name.encode()
    )


def _plain(
    client: Any,
    key: str,
    last: str,
    block_ms: int,
    stop: Callable[[], bool],
    filter_name: str | None,
) -> Iterator[Entry]:
    while True:
        batch = client.xread({key: last}, block=block_ms, count=500)
        if not batch:
            if stop():
                return
            continue
        entries = _with_packets(client, batch[0][1])
        for entry_id, fields in entries:
            last = entry_id
            if _keep(fields, filter_name):
                yield entry_id, fields


def _grouped(
    client: Any,
    key: str,
    group: str,
    consumer: str,
    since: str | None,
    block_ms: int,
    stop: Callable[[], bool],
    filter_name: str | None,
) -> Iterator[Entry]:
    start = "0" if since is None else start_id(since)
    try:
        client.xgroup_create(key, group, id=start, mkstream=True)
    except redis.exceptions.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
        if since is not None:
            client.xgroup_setid(key, group, id=start)
    position = "0"  # first what this consumer was handed and never acknowledged
    while True:
        batch = client.xreadgroup(
            group, consumer, {key: position}, count=100, block=None if position == "0" else block_ms
        )
        items = batch[0][1] if batch else []
        if position == "0" and not items:
            position = ">"
            continue
        if not items:
            if stop():
                return
            continue
        for entry_id, fields in _with_packets(client, items):
            if _keep(fields, filter_name):
                yield entry_id, fields
            client.xack(key, group, entry_id)


def _with_packets(client: Any, items: list[Any]) -> list[Entry]:
    """Decode ids and put each match entry's stored packet back as ``alert``."""
    out: list[Entry] = []
    pipe = client.pipeline(transaction=False)
    wanted: list[int] = []
    for entry_id, fields in items:
        out.append(
            (entry_id.decode() if isinstance(entry_id, bytes) else entry_id, dict(fields or {}))
        )
        token = out[-1][1].get(b"packet")
        if token:
            pipe.get(keys.packet_key(token.decode()))
            wanted.append(len(out) - 1)
    if wanted:
        for index, packet in zip(wanted, pipe.execute(), strict=True):
            fields = out[index][1]
            fields[b"alert"] = packet or b""
            if packet is None:
                fields[b"packet_expired"] = b"1"
    return out
