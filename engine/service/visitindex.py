"""The visit index: which Kafka offsets hold which visit, kept in Redis by ``serve``.

``replay`` seeks by it instead of the broker's time index (Tansu's ``offsets_for_times`` was
unreliable, and Rubin's retention may differ from ours). Per topic, two kinds of key, one hash
tag so a cluster keeps them in one slot:

- ``minibroker:{visits.<topic>}:index``: sorted set, member = visit id, score = the visit's
  time in Unix seconds (UTC): when it was observed (the earliest ``diaSource.midpointMjdTai``
  of its alerts, TAI converted with astropy), else when its first alert was received; the
  earliest any engine recorded;
- ``minibroker:{visits.<topic>}:<visit>``: hash, field = partition, value = ``"first:last"``
  offsets; engines that each read some partitions of a visit merge their ranges.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from engine.sources.kafka import VisitMessages

__all__ = ["INDEX_TTL_S", "VisitSpan", "lookup", "observed_unix", "record"]

INDEX_TTL_S = 14 * 24 * 3600  # as long as the seen sets: replay never reaches further back

_RECORD = """
redis.call('ZADD', KEYS[1], 'LT', ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
for i = 4, #ARGV, 3 do
  local lo, hi = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local cur = redis.call('HGET', KEYS[2], ARGV[i])
  if cur then
    local a, b = string.match(cur, '^(%d+):(%d+)$')
    if a then lo = math.min(lo, tonumber(a)); hi = math.max(hi, tonumber(b)) end
  end
  redis.call('HSET', KEYS[2], ARGV[i], string.format('%d:%d', lo, hi))
end
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""


def _index_key(topic: str) -> str:
    return f"minibroker:{{visits.{topic}}}:index"


def _visit_key(topic: str, visit: int) -> str:
    return f"minibroker:{{visits.{topic}}}:{visit}"


def observed_unix(mjd_tai: float) -> float:
    """An MJD in TAI (how alerts give times) as Unix seconds in UTC."""
    from astropy.time import Time

    return float(Time(mjd_tai, format="mjd", scale="tai").unix)


def record(
    client: redis.Redis, topic: str, batch: VisitMessages, observed: float | None = None
) -> None:
    """Add one visit batch's time (``observed``, Unix seconds, else when it was received) and
    offset ranges to the index, merging with what other engines recorded."""
    when = batch.first_received if observed is None else observed
    args: list[float | int] = [when, batch.visit, INDEX_TTL_S]
    for p, (lo, hi) in sorted(batch.offsets.items()):
        args += [p, lo, hi]
    client.eval(_RECORD, 2, _index_key(topic), _visit_key(topic, batch.visit), *args)


@dataclass(frozen=True)
class VisitSpan:
    """One indexed visit: its time (Unix seconds, see the module doc) and where its messages lie."""

    visit: int
    time: float
    offsets: dict[int, tuple[int, int]]


def lookup(
    client: redis.Redis, topic: str, since: float, until: float | None = None
) -> list[VisitSpan]:
    """The indexed visits whose time lies between ``since`` and ``until`` (Unix seconds), oldest first."""
    hi = "+inf" if until is None else until
    found: list[tuple[bytes, float]] = client.zrangebyscore(  # type: ignore[assignment]
        _index_key(topic), since, hi, withscores=True
    )
    out = []
    for member, score in found:
        visit = int(member)
        ranges: dict[bytes, bytes] = client.hgetall(_visit_key(topic, visit))  # type: ignore[assignment]
        offsets = {}
        for p, r in ranges.items():
            a, b = r.decode().split(":")
            offsets[int(p)] = (int(a), int(b))
        out.append(VisitSpan(visit, float(score), offsets))
    return out
