"""The user's side of the control plane: requests into the inbox, answers from the reply stream.

A user can write only to ``minibroker:{alice}:inbox`` and read only ``minibroker:{alice}:reply``
(see :mod:`engine.users`), so every change a user makes (submit a filter; disable, enable or
delete one) is a request the engine checks and answers (:mod:`engine.submissions`).

Inbox entry fields: ``request`` (a random id), ``op`` (:class:`Op`), ``name``, and for ``submit``
``filename`` and ``code``. Reply entry fields: ``request``, ``status`` (:class:`Status`),
``message``, and for submissions ``version``, ``passed``, ``alerts`` and ``problems`` (JSON list
of ``[file, line, rule, message]``).
"""

from __future__ import annotations

import enum
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from engine.errors import ConfigError
from engine.registry import keys
from sandbox import read_filter_source

__all__ = ["Op", "Reply", "Status", "request", "submit_file"]


class Op(enum.StrEnum):
    """What a request asks for."""

    SUBMIT = "submit"
    DISABLE = "disable"
    ENABLE = "enable"
    DELETE = "delete"


class Status(enum.StrEnum):
    """How the engine answered: a submission ``accepted`` or ``rejected``; another request
    ``done`` or ``refused``."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DONE = "done"
    REFUSED = "refused"


@dataclass(frozen=True)
class Reply:
    """The engine's answer to one request."""

    request: str
    status: Status
    message: str
    version: int | None = None
    passed: int | None = None
    alerts: int | None = None
    problems: list[tuple[str, int | None, str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Accepted or done."""
        return self.status in (Status.ACCEPTED, Status.DONE)

    def fields(self) -> dict[str, str]:
        """As stream entry fields."""
        out = {
            "request": self.request,
            "status": self.status.value,
            "message": self.message,
            "problems": json.dumps(self.problems),
        }
        for name in ("version", "passed", "alerts"):
            value = getattr(self, name)
            if value is not None:
                out[name] = str(value)
        return out

    @classmethod
    def from_fields(cls, raw: dict[bytes, bytes]) -> Reply:
        """From stream entry fields."""
        f = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            request=f["request"],
            status=Status(f["status"]),
            message=f.get("message", ""),
            version=int(f["version"]) if "version" in f else None,
            passed=int(f["passed"]) if "passed" in f else None,
            alerts=int(f["alerts"]) if "alerts" in f else None,
            problems=[(a, b, c, d) for a, b, c, d in json.loads(f.get("problems") or "[]")],
        )


def request(
    client: Any, user: str, op: Op, name: str, *, wait_s: float = 60.0, **extra: str
) -> Reply:
    """Send one request to ``user``'s inbox and wait up to ``wait_s`` for the engine's answer."""
    keys.validate_name(name, "filter name")
    request_id = secrets.token_hex(8)
    try:
        sent = client.xadd(
            keys.inbox_key(user), {"request": request_id, "op": op.value, "name": name, **extra}
        )
    except redis.exceptions.NoPermissionError as exc:
        raise ConfigError(
            f"the server refused to let these credentials write {keys.inbox_key(user)} "
            f"({exc}); use the REDIS_URL `minibroker admin add-user {user}` printed"
        ) from None
    last = sent.decode() if isinstance(sent, bytes) else str(sent)  # answers come after the request
    deadline = time.monotonic() + wait_s
    while (left := deadline - time.monotonic()) > 0:
        batch = client.xread(
            {keys.reply_key(user): last}, block=max(1, int(min(left, 1.0) * 1000)), count=100
        )
        for entry_id, fields in batch[0][1] if batch else []:
            last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            if fields.get(b"request") == request_id.encode():
                return Reply.from_fields(fields)
    raise ConfigError(
        f"no answer to {op.value} {name!r} within {wait_s:g} s: the engine is not processing "
        "requests (ask the operator to run `minibroker serve` or `minibroker admin "
        "process-submissions`); the request stays in your inbox and will be answered"
    )


def submit_file(
    client: Any, user: str, path: str | Path, name: str | None = None, *, wait_s: float = 60.0
) -> Reply:
    """Submit a filter file (named after the file unless ``name``) and wait for the verdict."""
    path = Path(path)
    source = read_filter_source(path)
    return request(
        client, user, Op.SUBMIT, name or path.stem, wait_s=wait_s, filename=path.name, code=source
    )
