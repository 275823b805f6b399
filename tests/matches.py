"""Real matches on a user's stream, written by the real Publisher (for the VO output tests)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import redis

from engine.config import load_config
from engine.decode import decode_messages
from engine.registry import ActiveFilter
from engine.sinks.streams import Publisher, read_packet, stream_key
from sandbox import Outcome, compile_filter

EVERYTHING = '''"""Every alert: a test filter that passes all it sees."""
def filter(alerts):
    return True
'''


def publish_packets(
    client: redis.Redis,
    user: str,
    packets: Sequence[bytes],
    *,
    name: str = "everything",
    source: str = EVERYTHING,
    rows: Sequence[int] | None = None,
) -> list[tuple[str, dict[bytes, bytes]]]:
    """Publish ``packets`` (one visit's real message bodies) as matches of filter ``name`` of
    ``user`` (all of them, or only ``rows``, with a cap that lets them all through) and return
    the match entries the stream gained, each with its stored packet put back as ``alert`` (as
    ``subscribe`` reads them)."""
    visit = decode_messages(packets)
    active = ActiveFilter(user, compile_filter(source, f"{name}.py"))
    mask = np.zeros(len(visit), bool)
    mask[list(range(len(visit))) if rows is None else list(rows)] = True
    before = client.xrevrange(stream_key(user), count=1)
    config = load_config(env={}, max_matches_per_visit=max(1, len(visit)))
    Publisher(client, config).publish(visit, [active], [Outcome(active.key, mask, 0.0)])
    start = f"({before[0][0].decode()}" if before else "-"
    entries = [
        (i.decode(), f)
        for i, f in client.xrange(stream_key(user), min=start)
        if f[b"kind"] == b"match"
    ]
    for _, fields in entries:
        fields[b"alert"] = read_packet(client, fields) or b""
    return entries


def delete_user_keys(client: redis.Redis, user: str) -> None:
    """Remove every key of ``user`` (old ``minibroker:user:<u>:`` and hash-tagged layouts)."""
    for pattern in (f"minibroker:user:{user}:*", f"minibroker:{{{user}}}:*"):
        keys = list(client.scan_iter(match=pattern.replace("{", "\\{").replace("}", "\\}")))
        if keys:
            client.delete(*keys)
    client.srem("minibroker:{!engine}:vtp_users", user)
