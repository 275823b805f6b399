"""Publish: masks → entries on each user's Redis stream, exactly once per filter version and alert.

Keys are named in :mod:`engine.registry.keys`. A user's stream ``minibroker:{alice}:stream`` holds:

- ``kind=match``: ``filter``, ``filter_version``, ``visit``, ``diaSourceId``, ``packet`` (the
  token of the stored packet, see below), ``schema_id`` and the headline fields
  :data:`engine.alerts.fields.HEADLINE_FIELDS` (``diaObjectId``, ``ssObjectId``, ``ra``,
  ``dec``, ``band``, ``midpointMjdTai``, ``snr``, ``reliability``; empty when null);
- ``kind=withheld``: ``filter``, ``filter_version``, ``visit``, ``count`` (matches over the
  cap that were not delivered), ``cap``;
- ``kind=fault``: ``filter``, ``filter_version``, ``visit``, ``reason``, ``message``;
- ``kind=suspended``: ``filter``, ``filter_version``, ``visit``, ``message`` (the filter stops
  running after ``suspend_after_faults`` faulty visits among its last ``suspend_window``, the
  same rule as the worker pool's; resubmit or enable it);
- ``kind=visit`` (the visit marker, one per user per visit, after that visit's other entries):
  ``visit``, ``alerts`` (evaluated), ``filters`` (JSON: filter name → ``passed``,
  ``delivered``, ``withheld``, ``faults``). Silence between markers means nothing passed.

Caps: each filter delivers at most its cap per visit (``max_matches_per_visit``, default 20;
an admin may set one filter's cap up to :data:`engine.config.MAX_CAP`). The first ``cap``
alerts are delivered in this order: **highest** ``diaSource.reliability`` first (nulls last), ties by
position in the visit; the rest are counted in one ``withheld`` entry.

Packets: each delivered alert's packet is stored once, ``minibroker:packet:{token}`` with a TTL
of ``retention_s``, however many users and filters match it; entries carry the token, and
:mod:`engine.subscribe` reads the packet back. The token is a keyed hash of the alert id (the
key is an engine secret in Redis), so users, who may read packet keys, cannot guess which
alerts matched someone else's filter.

Idempotence and several engines: one script per user per visit (its keys share the user's
hash slot) does that user's part of the visit atomically. Each filter version has a seen set
holding every alert it passed, delivered or withheld; only alerts new to it count, against the
cap kept in a per-visit hash (``minibroker:{alice}:visit:<visit>``) shared by every engine. So
a visit published twice, after a crash half-way, or cut into parts differently on a replay adds
no match, no withheld count and no marker twice (a marker is written only when something new
was counted, or a filter first ran in that visit). A visit split across engines shares the
caps (the order above then holds within each part); each part adds its own ``withheld`` entry
and a marker with the running totals, so the last marker of a visit has its totals (``alerts``
sums the parts, each counted once per distinct part). Packets are written before the scripts
(same connection, in order), so no entry refers to a packet not yet stored.

Retention: streams are trimmed to ``stream_maxlen`` entries and to ``retention_s`` of age
(both approximate, as Redis trims cheaply); packets, seen sets and visit counters expire after
``retention_s``. A replay older than ``retention_s`` can deliver again. An entry that outlives
its packet (a long stream with a short ``retention_s`` cannot, as entries are trimmed by the
same age) comes out of :mod:`engine.subscribe` marked ``packet_expired``.

Statistics: for filters in the Redis registry (:mod:`engine.registry.store`), the same script
adds to the filter's statistics (visits, passed, delivered, withheld, faults, evaluation time)
and keeps the filter's last ``suspend_window`` visits (``recent``: ``1`` faulted, ``0`` ran),
suspending it once ``suspend_after_faults`` of them faulted. Kept in Redis, the count survives
restarts and is shared by every engine.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import redis

from engine.alerts.fields import HEADLINE_FIELDS
from engine.config import Config
from engine.decode import VisitBatch
from engine.errors import PublishError
from engine.registry import keys
from engine.registry.directory import ActiveFilter
from engine.registry.keys import stream_key
from sandbox import Outcome

__all__ = ["PublishReport", "Publisher", "packet_token", "read_packet", "stream_key"]


# KEYS: stream, visit hash, then per filter: seen set, registry hash.
# ARGV: visit, maxlen, ttl, minid, portion, alerts, "max_faults:window", schema_id, H, H headline names,
#       F, then per filter: name, version, kind, cap, eval_us, and either (fault) reason,
#       message or (match) a JSON list of candidates [id, token, H values] in delivery order and
#       a JSON list of the ids of the other passing alerts (one argument each, not one per
#       value: packing arguments dominates the client's time).
_PUBLISH_USER = """
local stream, vkey = KEYS[1], KEYS[2]
local visit, maxlen, ttl, minid = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local portion, alerts, schema = ARGV[5], ARGV[6], ARGV[8]
local maxfaults, window = string.match(ARGV[7], '(%d+):(%d+)')
maxfaults, window = tonumber(maxfaults), tonumber(window)
-- the filter's last `window` visits, newest last: '1' faulted, '0' ran
local function remember(fkey, faulted, new_visit)
  local r = redis.call('HGET', fkey, 'recent') or ''
  if not new_visit then r = string.sub(r, 1, -2) end  -- another part of a visit already counted
  r = string.sub(r .. (faulted and '1' or '0'), -window)
  redis.call('HSET', fkey, 'recent', r)
  local _, n = string.gsub(r, '1', '')
  return n, #r
end
local h = tonumber(ARGV[9])
local names = {}
for j = 1, h do names[j] = ARGV[9 + j] end
local nf = tonumber(ARGV[10 + h])
local p = 11 + h
local out, changed = {}, false
local function add(fields)
  local args = {'XADD', stream, 'MAXLEN', '~', maxlen, '*'}
  for _, v in ipairs(fields) do args[#args + 1] = v end
  return redis.call(unpack(args))
end
redis.call('HSET', vkey, 'alerts|' .. portion, alerts)
for i = 1, nf do
  local seen, fkey = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local name, version, kind, cap, eval_us = ARGV[p], ARGV[p + 1], ARGV[p + 2], tonumber(ARGV[p + 3]), ARGV[p + 4]
  p = p + 5
  local skip = redis.call('HSETNX', vkey, 'done|' .. portion .. '|' .. name .. '|' .. version, 1) == 0
  local registered = (not skip) and redis.call('EXISTS', fkey) == 1
  local delivered, withheld, suspended, first = 0, 0, 0, false
  if not skip then
    -- the first time this visit reaches this filter: the marker must say it ran
    first = redis.call('HSETNX', vkey, 'counted|' .. name, 1) == 1
    changed = changed or first
    if registered then
      redis.call('HINCRBY', fkey, 'eval_us', eval_us)
      if first then redis.call('HINCRBY', fkey, 'visits', 1) end
    end
  end
  if kind == 'f' then
    local reason, message = ARGV[p], ARGV[p + 1]
    p = p + 2
    if not skip and redis.call('HSETNX', vkey, 'fault|' .. name .. '|' .. version, 1) == 1 then
      changed = true
      redis.call('HINCRBY', vkey, 'c|faults|' .. name, 1)
      redis.call('HINCRBY', vkey, 'c|passed|' .. name, 0)
      add({'kind', 'fault', 'filter', name, 'filter_version', version, 'visit', visit, 'reason', reason, 'message', message})
      if registered then
        redis.call('HINCRBY', fkey, 'faults', 1)
        local c, seen_visits = remember(fkey, true, first)
        if c >= maxfaults and redis.call('HGET', fkey, 'status') == 'active' then
          local why = 'suspended after ' .. c .. ' faults in its last ' .. seen_visits .. ' visits (last: ' .. message .. ')'
          redis.call('HSET', fkey, 'status', 'suspended', 'reason', why)
          add({'kind', 'suspended', 'filter', name, 'filter_version', version, 'visit', visit, 'message',
               why .. '; fix it and submit it again, or `minibroker filters enable ' .. name .. '`'})
          suspended = 1
        end
      end
    end
  else
    local candidates, rest = ARGV[p], ARGV[p + 1]
    p = p + 2
    if not skip then
      -- the seen set holds every alert this filter version passed, delivered or withheld:
      -- an alert counts once however the visit is replayed or cut into parts
      local passed = 0
      local dv = tonumber(redis.call('HGET', vkey, 'c|delivered|' .. name) or '0')
      for _, c in ipairs(cjson.decode(candidates)) do
        if redis.call('SADD', seen, c[1]) == 1 then
          passed = passed + 1
          if dv < cap then
            local f = {'kind', 'match', 'filter', name, 'filter_version', version, 'visit', visit,
                       'diaSourceId', c[1], 'packet', c[2], 'schema_id', schema}
            for j = 1, h do f[#f + 1] = names[j]; f[#f + 1] = c[2 + j] end
            add(f)
            dv = dv + 1
            delivered = delivered + 1
          end
        end
      end
      local ids = cjson.decode(rest)
      for k = 1, #ids, 4000 do
        passed = passed + redis.call('SADD', seen, unpack(ids, k, math.min(k + 3999, #ids)))
      end
      withheld = passed - delivered
      changed = changed or passed > 0
      if passed > 0 then redis.call('EXPIRE', seen, ttl) end
      redis.call('HINCRBY', vkey, 'c|passed|' .. name, passed)
      redis.call('HSET', vkey, 'c|delivered|' .. name, dv)
      redis.call('HINCRBY', vkey, 'c|withheld|' .. name, withheld)
      if withheld > 0 then
        add({'kind', 'withheld', 'filter', name, 'filter_version', version, 'visit', visit,
             'count', withheld, 'cap', cap})
      end
      if registered then
        redis.call('HINCRBY', fkey, 'passed', passed)
        redis.call('HINCRBY', fkey, 'delivered', delivered)
        redis.call('HINCRBY', fkey, 'withheld', withheld)
        if first then remember(fkey, false, true) end
      end
    end
  end
  out[#out + 1] = delivered
  out[#out + 1] = withheld
  out[#out + 1] = skip and 1 or 0
  out[#out + 1] = suspended
end
if changed then
  local total, per = 0, {}
  local all = redis.call('HGETALL', vkey)
  for k = 1, #all, 2 do
    local f, v = all[k], all[k + 1]
    if string.sub(f, 1, 7) == 'alerts|' then
      total = total + tonumber(v)
    elseif string.sub(f, 1, 2) == 'c|' then
      local bar = string.find(f, '|', 3, true)
      local stat, name = string.sub(f, 3, bar - 1), string.sub(f, bar + 1)
      per[name] = per[name] or {passed = 0, delivered = 0, withheld = 0, faults = 0}
      per[name][stat] = tonumber(v)
    end
  end
  add({'kind', 'visit', 'visit', visit, 'alerts', total, 'filters', cjson.encode(per)})
  redis.call('EXPIRE', vkey, ttl)
  if minid ~= '' then redis.call('XTRIM', stream, 'MINID', '~', minid) end
end
return out
"""


@dataclass
class PublishReport:
    """What one visit's publishing did, per filter key (``"user/name"``).

    ``delivered`` counts match entries written now, ``withheld`` the matches over the cap,
    ``duplicates`` the filters whose part of this visit had been published before (a replay:
    nothing written), ``faults`` the fault messages and ``suspended`` the filters suspended now.
    """

    delivered: dict[str, int] = field(default_factory=dict)
    withheld: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    faults: dict[str, str] = field(default_factory=dict)
    suspended: list[str] = field(default_factory=list)

    @property
    def published(self) -> dict[str, int]:
        """Old name of :attr:`delivered`."""
        return self.delivered

    @property
    def capped(self) -> dict[str, int]:
        """Old name of :attr:`withheld`."""
        return self.withheld

    @property
    def total(self) -> int:
        """Match entries written in this visit."""
        return sum(self.delivered.values())

    def add(self, other: PublishReport) -> None:
        """Add another visit's figures to these (for a night's totals)."""
        for mine, theirs in (
            (self.delivered, other.delivered),
            (self.withheld, other.withheld),
            (self.duplicates, other.duplicates),
        ):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        self.faults.update(other.faults)
        self.suspended.extend(other.suspended)


def _engine_secret(client: Any) -> bytes:
    """The key of packet tokens, created once per Redis deployment."""
    name = keys.engine_key("secret")
    client.set(name, secrets.token_hex(16), nx=True)
    value = client.get(name)
    assert value is not None
    return value if isinstance(value, bytes) else str(value).encode()


def packet_token(secret: bytes, dia_source_id: int | str) -> str:
    """The token naming an alert's stored packet (a keyed hash of its id: not guessable)."""
    return hashlib.blake2b(str(dia_source_id).encode(), key=secret, digest_size=12).hexdigest()


def read_packet(client: Any, fields: Mapping[bytes, bytes]) -> bytes | None:
    """The full packet (Confluent-framed Avro) a match entry refers to; None once it expired.
    Entries written before packets were stored apart carry it as ``alert``."""
    token = fields.get(b"packet")
    if not token:
        return fields.get(b"alert") or None
    value = client.get(keys.packet_key(token.decode()))
    return bytes(value) if value is not None else None


def _order(reliability: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``rows`` sorted by reliability, highest first (nulls last), ties by row."""
    if not len(reliability):
        return rows
    rel = reliability[rows]
    rel = np.where(np.isnan(rel), -np.inf, rel)
    return rows[np.lexsort((rows, -rel))]


class Publisher:
    """Writes one visit's matches, withheld counts, faults and markers to the owners' streams.

    Parameters
    ----------
    client : redis.Redis or redis.cluster.RedisCluster
        The engine's connection.
    config : Config
        Caps, retention and fault limit.
    caps : mapping of filter key to cap, optional
        Per-filter caps set by an admin (the registry supplies them); others use
        ``config.max_matches_per_visit``.

    Attributes
    ----------
    totals : PublishReport
        Every visit's figures added up since this publisher was made.
    """

    def __init__(self, client: Any, config: Config, caps: Mapping[str, int] | None = None):
        self.client = client
        self.config = config
        self.caps: dict[str, int] = dict(caps or {})
        self.totals = PublishReport()
        self._script = client.register_script(_PUBLISH_USER)
        client.script_load(
            _PUBLISH_USER
        )  # on a cluster: on every primary (cluster pipelines cannot load)
        self._secret = _engine_secret(client)

    def publish(
        self, visit: VisitBatch, filters: Sequence[ActiveFilter], outcomes: Sequence[Outcome]
    ) -> PublishReport:
        """Write every match (capped per filter), fault and visit marker of one visit."""
        try:
            return self._publish(visit, filters, outcomes)
        except redis.exceptions.NoScriptError:
            # The server restarted (or failed over) and forgot the script: load it and publish
            # the visit again; what the first attempt wrote is not written twice.
            self.client.script_load(_PUBLISH_USER)
            return self._publish(visit, filters, outcomes)

    def _publish(
        self, visit: VisitBatch, filters: Sequence[ActiveFilter], outcomes: Sequence[Outcome]
    ) -> PublishReport:
        by_key = {f.key: f for f in filters}
        by_user: dict[str, list[tuple[ActiveFilter, Outcome]]] = {}
        for f in filters:
            by_user.setdefault(f.user, [])
        for outcome in outcomes:
            f = by_key[outcome.key]
            by_user[f.user].append((f, outcome))
        reliability = self._column(visit, "reliability")
        ids = self._ids(visit)
        chosen: dict[str, np.ndarray] = {}  # passing rows in delivery order
        caps = {f.key: self.caps.get(f.key, self.config.max_matches_per_visit) for f in filters}
        for user_items in by_user.values():
            for f, o in user_items:
                if o.mask is not None:
                    chosen[f.key] = _order(reliability, np.flatnonzero(o.mask))
        # Packets only for those that may be delivered: the first `cap` of each filter.
        firsts = [rows[: caps[key]] for key, rows in chosen.items()]
        rows_all = np.unique(np.concatenate(firsts)) if firsts else np.array([], int)
        heads = self._headlines(visit, rows_all)
        tokens = {int(r): packet_token(self._secret, ids[r]) for r in rows_all.tolist()}
        rows_json = {r: json.dumps([str(ids[r]), token, *heads[r]]) for r, token in tokens.items()}

        pipe = self.client.pipeline(transaction=False)
        ttl = self.config.retention_s
        for row, token in tokens.items():
            pipe.set(keys.packet_key(token), visit.wire(row), ex=ttl)
        minid = f"{int((time.time() - ttl) * 1000)}-0"
        portion = f"{ids[0]}+{len(ids)}" if len(ids) else "0"  # which part of the visit this is
        common = [
            str(visit.visit),
            str(self.config.stream_maxlen),
            str(ttl),
            minid,
            portion,
            str(len(visit)),
            f"{self.config.suspend_after_faults}:{self.config.suspend_window}",
            str(visit.schema.schema_id),
            str(len(HEADLINE_FIELDS)),
            *HEADLINE_FIELDS,
        ]
        order: list[list[tuple[str, Outcome]]] = []  # per script call: its filters, in order
        for user, items in by_user.items():
            script_keys = [keys.stream_key(user), keys.visit_key(user, visit.visit)]
            args: list[Any] = [*common, len(items)]
            for f, o in items:
                name, version = f.compiled.name, f.compiled.version
                script_keys += [keys.seen_key(user, name, version), keys.filter_key(user, name)]
                args += [name, version, "f" if o.fault else "m", caps[f.key], int(o.seconds * 1e6)]
                if o.fault is not None:
                    args += [o.fault.reason, str(o.fault)]
                    continue
                rows = chosen[f.key]
                args += [
                    "[" + ",".join(rows_json[r] for r in rows[: caps[f.key]].tolist()) + "]",
                    json.dumps([str(ids[r]) for r in rows[caps[f.key] :].tolist()]),
                ]
            self._script(keys=script_keys, args=args, client=pipe)
            order.append([(f.key, o) for f, o in items])
        try:
            results = pipe.execute()
        except redis.exceptions.NoScriptError:
            raise
        except redis.RedisError as exc:
            raise PublishError(
                f"visit {visit.visit}: publishing to Redis failed ({exc}); check the server and "
                "run the visit again: what was already written is not written twice"
            ) from exc
        report = PublishReport()
        for called, result in zip(order, results[len(tokens) :], strict=True):
            for i, (key, outcome) in enumerate(called):
                delivered, withheld, skip, suspended = (int(x) for x in result[4 * i : 4 * i + 4])
                if skip:
                    report.duplicates[key] = 1
                    continue
                if outcome.fault is not None:
                    report.faults[key] = str(outcome.fault)
                else:
                    report.delivered[key] = delivered
                    report.withheld[key] = withheld
                if suspended:
                    report.suspended.append(key)
        if report.suspended:  # the registry changed: engines re-read it before the next visit
            self.client.incr(keys.engine_key("epoch"))
        self.totals.add(report)
        return report

    @staticmethod
    def _column(visit: VisitBatch, name: str) -> np.ndarray:
        batch = visit.batch
        if "diaSource" not in batch.schema.names:
            return np.array([], float)
        struct = batch.column("diaSource")
        if name not in {f.name for f in struct.type}:
            return np.full(len(visit), np.nan)
        return struct.field(name).to_numpy(zero_copy_only=False).astype(float)

    @staticmethod
    def _ids(visit: VisitBatch) -> list[int]:
        return visit.batch.column("diaSourceId").to_pylist()

    @staticmethod
    def _headlines(visit: VisitBatch, rows: np.ndarray) -> dict[int, list[str]]:
        """The headline values of the given rows as strings ("" for null); only those few values
        are gathered (a visit's rows also hold lightcurves and cutouts, which are not copied)."""
        if not len(rows):
            return {}
        batch = visit.batch
        index = pa.array(rows)
        present = (
            {f.name for f in batch.column("diaSource").type}
            if "diaSource" in batch.schema.names
            else set()
        )
        values = []
        for name in HEADLINE_FIELDS:
            if name in present:
                values.append(batch.column("diaSource").field(name).take(index).to_pylist())
            else:
                values.append([None] * len(rows))
        return {
            int(r): ["" if v[i] is None else str(v[i]) for v in values]
            for i, r in enumerate(rows.tolist())
        }
