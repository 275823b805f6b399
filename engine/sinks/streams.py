"""Publish: masks → entries on each user's Redis stream, exactly once per filter and alert.

Stream ``minibroker:user:<user>:stream`` holds two kinds of entry:

- ``kind=match``: ``filter``, ``filter_version``, ``visit``, ``diaSourceId``, ``diaObjectId``,
  ``ssObjectId``, ``ra``, ``dec``, ``band``, ``midpointMjdTai``, ``snr``, ``reliability``,
  ``schema_id`` and ``alert`` (the full packet, Confluent wire header + Avro datum);
- ``kind=fault``: ``filter``, ``filter_version``, ``visit``, ``reason``, ``message``.

Idempotence: each write is one server-side script that adds the alert id to a per-filter "seen"
set and appends only if it was new, so replays and crash recovery never duplicate an entry.
Retention: streams are trimmed to ``stream_maxlen`` (approximately, as Redis does cheaply).
Caps: at most ``max_matches_per_visit`` matches per filter per visit; the rest are counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import redis

from engine.alerts.fields import HEADLINE_FIELDS
from engine.config import Config
from engine.decode import VisitBatch
from engine.errors import PublishError
from engine.registry import ActiveFilter
from sandbox import Outcome

__all__ = ["PublishReport", "Publisher", "stream_key"]

SEEN_TTL_S = 14 * 24 * 3600  # as long as a user may want to replay

_ADD_ONCE = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return false end
redis.call('EXPIRE', KEYS[2], ARGV[3])
local args = {'XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*'}
for i = 4, #ARGV do args[#args + 1] = ARGV[i] end
return redis.call(unpack(args))
"""

def stream_key(user: str) -> str:
    """The Redis stream a user reads."""
    return f"minibroker:user:{user}:stream"


def _seen_key(user: str, filter_name: str) -> str:
    return f"minibroker:user:{user}:seen:{filter_name}"


@dataclass
class PublishReport:
    """What one visit's publishing did, per filter key."""

    published: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    capped: dict[str, int] = field(default_factory=dict)
    faults: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Entries written in this visit."""
        return sum(self.published.values())


def _headline(visit: VisitBatch, rows: np.ndarray) -> list[dict[str, object]]:
    """The headline fields of the given rows; only those few values are gathered (a visit's
    rows also hold lightcurves and cutouts, which are not copied)."""
    out: list[dict[str, object]] = [{} for _ in rows]
    if not len(rows):
        return out
    batch = visit.batch
    index = pa.array(rows)
    columns: dict[str, pa.Array] = {}
    if "diaSourceId" in batch.schema.names:
        columns["diaSourceId"] = batch.column("diaSourceId").take(index)
    if "diaSource" in batch.schema.names:
        struct = batch.column("diaSource")
        present = {f.name for f in struct.type}
        for name in HEADLINE_FIELDS:
            if name in present:
                columns[name] = struct.field(name).take(index)
    for key, values in columns.items():
        for i, v in enumerate(values.to_pylist()):
            out[i][key] = v
    return out


class Publisher:
    """Writes one visit's matches and faults to the owners' streams."""

    def __init__(self, client: redis.Redis, config: Config):
        self.client = client
        self.config = config
        self._add_once = client.register_script(_ADD_ONCE)

    def publish(
        self, visit: VisitBatch, filters: Sequence[ActiveFilter], outcomes: Sequence[Outcome]
    ) -> PublishReport:
        """Write every match (capped per filter) and every fault of one visit."""
        report = PublishReport()
        by_key = {f.key: f for f in filters}
        # Script objects in a pipeline make sure the server has the script before it runs.
        pipe = self.client.pipeline(transaction=False)
        pending: list[tuple[str, str]] = []
        maxlen = str(self.config.stream_maxlen).encode()
        ttl = str(SEEN_TTL_S).encode()
        visit_b = str(visit.visit).encode()
        schema_b = str(visit.schema.schema_id).encode()
        for outcome in outcomes:
            f = by_key[outcome.key]
            keys = [stream_key(f.user), _seen_key(f.user, f.compiled.name)]
            common = [b"filter", f.compiled.name.encode(), b"filter_version", f.compiled.version.encode(),
                      b"visit", visit_b]
            if outcome.fault is not None:
                report.faults[f.key] = str(outcome.fault)
                fields = [b"kind", b"fault", *common, b"reason", outcome.fault.reason.encode(),
                          b"message", str(outcome.fault).encode()]
                self._add_once(keys=keys, args=[b"fault:" + visit_b, maxlen, ttl, *fields], client=pipe)
                pending.append((f.key, "fault"))
                continue
            assert outcome.mask is not None
            rows = np.flatnonzero(outcome.mask)
            cap = self.config.max_matches_per_visit
            if len(rows) > cap:
                report.capped[f.key] = len(rows) - cap
                rows = rows[:cap]
            report.published.setdefault(f.key, 0)
            prefix = [b"kind", b"match", *common, b"schema_id", schema_b]
            for row, head in zip(rows.tolist(), _headline(visit, rows), strict=True):
                fields = list(prefix)
                for k, v in head.items():
                    fields += [k.encode(), b"" if v is None else str(v).encode()]
                fields += [b"alert", visit.wire(row)]
                member = b"alert:" + str(head["diaSourceId"]).encode()
                self._add_once(keys=keys, args=[member, maxlen, ttl, *fields], client=pipe)
                pending.append((f.key, "match"))
        try:
            results = pipe.execute()
        except redis.RedisError as exc:
            raise PublishError(
                f"visit {visit.visit}: writing {len(pending)} entries to Redis failed ({exc}); "
                "check the server and run the night again: entries already written are skipped"
            ) from exc
        for (key, kind), result in zip(pending, results, strict=True):
            if kind != "match":
                continue
            if result is None:
                report.duplicates[key] = report.duplicates.get(key, 0) + 1
            else:
                report.published[key] += 1
        return report
