"""The engine's side of the control plane: check and answer what users put in their inboxes.

A submission is accepted as the filter's next version only if it

1. compiles under the policy, in a throwaway process (:func:`sandbox.safe_compile`);
2. runs over the reference visit within the time budget and returns a proper mask (the same
   runner as the service: the worker pool unless ``config.isolation`` is ``inprocess``);
3. passes at most :data:`MAX_PASS_FRACTION` of that visit (a filter that passes more is
   refused with the numbers; a user who needs more may ask the admin to raise its cap).

Otherwise it is rejected with every problem as ``file:line`` and its rule. Disable, enable and
delete requests change the registry. Every request gets one answer on the reply stream.

Inboxes are read in the consumer group ``engine`` (several engines share the work; a request
taken by an engine that dies is taken again after :data:`RECLAIM_MS`). ``serve`` calls
:func:`process_pending` once per visit; ``admin process-submissions`` calls
:func:`process_until_idle`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from typing import Any

import redis

from engine.config import Config
from engine.decode import VisitBatch
from engine.errors import ConfigError
from engine.evaluate import Evaluator
from engine.registry import keys
from engine.registry.directory import ActiveFilter
from engine.registry.inbox import Op, Reply, Status
from engine.registry.store import FilterStatus, Registry
from sandbox import FilterRejected, safe_compile

__all__ = ["GROUP", "MAX_PASS_FRACTION", "process_pending", "process_until_idle", "validate"]

log = logging.getLogger(__name__)
GROUP = "engine"
MAX_PASS_FRACTION = 0.05
RECLAIM_MS = 60_000


def validate(
    user: str, name: str, filename: str, source: str, reference: VisitBatch, config: Config
) -> tuple[Reply, str | None]:
    """Check one submission (see module doc): the answer (no request id yet) and, if accepted,
    the code hash of the new version."""
    try:
        compiled = safe_compile(source, filename)
    except FilterRejected as exc:
        return Reply(
            "",
            Status.REJECTED,
            f"{filename}: rejected by the policy",
            problems=[(p.filename, p.line, p.rule, p.message) for p in exc.problems],
        ), None
    compiled = dataclasses.replace(compiled, name=name)
    with Evaluator([ActiveFilter(user, compiled)], config) as evaluator:
        (outcome,) = evaluator.evaluate(reference.batch)
    n = len(reference)
    if outcome.fault is not None:
        return Reply(
            "",
            Status.REJECTED,
            f"{filename}: failed its dry run on reference visit {reference.visit}",
            problems=[(filename, None, f"dry-run-{outcome.fault.reason}", str(outcome.fault))],
        ), None
    if outcome.passed > MAX_PASS_FRACTION * n:
        return Reply(
            "",
            Status.REJECTED,
            f"{filename}: passes too many alerts",
            passed=outcome.passed,
            alerts=n,
            problems=[
                (
                    filename,
                    None,
                    "selectivity",
                    f"passes {outcome.passed} of the {n} alerts of reference visit {reference.visit} "
                    f"({100 * outcome.passed / n:.1f}%); at most {MAX_PASS_FRACTION:.0%} may pass "
                    f"(and at most {config.max_matches_per_visit} per visit are delivered): "
                    "make it stricter, or ask the admin to raise its cap",
                )
            ],
        ), None
    return Reply("", Status.ACCEPTED, "", passed=outcome.passed, alerts=n), compiled.version


def _answer(
    client: Any, user: str, fields: dict[str, str], reference: VisitBatch, config: Config
) -> Reply:
    registry = Registry(client)
    request_id = fields.get("request", "")
    op, name = fields.get("op", ""), fields.get("name", "")
    try:
        keys.validate_name(name, "filter name")
        kind = Op(op)
    except (ConfigError, ValueError) as exc:
        return Reply(request_id, Status.REFUSED, f"bad request: {exc}")
    if kind is Op.SUBMIT:
        filename = os.path.basename(fields.get("filename") or f"{name}.py")
        reply, code_hash = validate(user, name, filename, fields.get("code", ""), reference, config)
        if code_hash is None:
            return dataclasses.replace(reply, request=request_id)
        version = registry.add_version(user, name, fields.get("code", ""), filename, code_hash)
        return dataclasses.replace(
            reply,
            request=request_id,
            version=version.version,
            message=f"{name}: accepted as version {version.version} ({reply.passed} of {reply.alerts} "
            f"alerts of reference visit {reference.visit} passed)",
        )
    try:
        if kind is Op.DELETE:
            registry.delete(user, name)
            return Reply(request_id, Status.DONE, f"{name}: deleted")
        status = FilterStatus.DISABLED if kind is Op.DISABLE else FilterStatus.ACTIVE
        record = registry.set_status(
            user, name, status, "disabled by its owner" if kind is Op.DISABLE else ""
        )
        return Reply(
            request_id, Status.DONE, f"{name}: {record.status.value} (version {record.version})"
        )
    except ConfigError as exc:
        return Reply(request_id, Status.REFUSED, str(exc))


def process_pending(
    client: Any, reference: VisitBatch, config: Config, *, consumer: str | None = None
) -> int:
    """Answer every request waiting in every user's inbox once; return how many were answered."""
    consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
    users = sorted(v.decode() for v in client.smembers(keys.engine_key("users")))
    pipe = client.pipeline(transaction=False)
    for user in users:
        pipe.xautoclaim(keys.inbox_key(user), GROUP, consumer, RECLAIM_MS, count=10)
        pipe.xreadgroup(GROUP, consumer, {keys.inbox_key(user): ">"}, count=10)
    results = pipe.execute(raise_on_error=False)
    answered = 0
    for i, user in enumerate(users):
        claimed, fresh = results[2 * i], results[2 * i + 1]
        if isinstance(claimed, redis.ResponseError) or isinstance(fresh, redis.ResponseError):
            _ensure_group(client, user)
            continue
        items = list(claimed[1]) if claimed else []
        items += list(fresh[0][1]) if fresh else []
        for entry_id, raw in items:
            if not raw:
                continue  # deleted meanwhile
            fields = {k.decode(): v.decode("utf-8", "replace") for k, v in raw.items()}
            reply = _answer(client, user, fields, reference, config)
            client.xadd(keys.reply_key(user), reply.fields(), maxlen=1000, approximate=True)
            client.xack(keys.inbox_key(user), GROUP, entry_id)
            client.xdel(keys.inbox_key(user), entry_id)  # the code now lives in the registry
            log.info("%s %s %s: %s", user, fields.get("op"), fields.get("name"), reply.status.value)
            answered += 1
    return answered


def _ensure_group(client: Any, user: str) -> None:
    try:
        client.xgroup_create(keys.inbox_key(user), GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def process_until_idle(
    client: Any, reference: VisitBatch, config: Config, idle_s: float, *, poll_s: float = 0.2
) -> int:
    """Answer requests until none has arrived for ``idle_s`` seconds; return how many."""
    total = 0
    last = time.monotonic()
    while True:
        n = process_pending(client, reference, config)
        total += n
        now = time.monotonic()
        if n:
            last = now
        elif now - last >= idle_s:
            return total
        else:
            time.sleep(min(poll_s, max(0.0, idle_s - (now - last))))
