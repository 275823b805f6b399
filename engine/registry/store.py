"""The filter registry in Redis: who owns which filter, its versions, status and statistics.

Per filter (keys in :mod:`engine.keys`, all under the owner's hash tag):

- ``minibroker:{alice}:filters``: set of her filter names;
- ``minibroker:{alice}:filter:<name>``: hash with ``status`` (:class:`FilterStatus`),
  ``reason`` (why suspended or disabled), ``version`` (the current version number k, from 1),
  ``hash`` (its code hash, the ``filter_version`` on stream entries), ``cap`` (an admin's
  per-filter cap, absent for the default), ``created``/``updated`` (UTC ISO times) and the
  running statistics written by :mod:`engine.publish`: ``visits``, ``passed``, ``delivered``,
  ``withheld``, ``faults``, ``eval_us``, and ``recent`` (the last visits' faults, which suspend it);
- ``minibroker:{alice}:filter:<name>:versions``: list of versions, oldest first, each JSON
  ``{"version", "hash", "time", "filename", "code"}``.

The engine's index (``minibroker:{!engine}:owners``) names the users with filters, and
``minibroker:{!engine}:epoch`` grows with every change, so :class:`ActiveFilters` re-reads the
registry between visits only when something changed (one ``GET`` per visit otherwise).
"""

from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import enum
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.config import MAX_CAP
from engine.errors import ConfigError
from engine.registry import keys
from engine.registry.directory import ActiveFilter
from sandbox import CompiledFilter, FilterKey, FilterRejected, safe_compile

__all__ = ["ActiveFilters", "FilterRecord", "FilterStatus", "FilterVersion", "Registry"]

_STATS = ("visits", "passed", "delivered", "withheld", "faults", "eval_us")


class FilterStatus(enum.StrEnum):
    """Whether a filter runs: ``active``; ``suspended`` by the engine after repeated faults;
    ``disabled`` by its owner."""

    ACTIVE = "active"
    SUSPENDED = "suspended"
    DISABLED = "disabled"


@dataclass(frozen=True)
class FilterVersion:
    """One submitted version of a filter."""

    version: int
    hash: str
    time: str
    filename: str
    code: str


@dataclass(frozen=True)
class FilterRecord:
    """A filter as the registry holds it (``stats``: see module doc)."""

    user: str
    name: str
    status: FilterStatus
    reason: str
    version: int
    hash: str
    cap: int | None
    created: str
    updated: str
    stats: dict[str, int]

    @property
    def key(self) -> str:
        """``"user/name"``, as :class:`engine.registry.ActiveFilter` names it."""
        return str(FilterKey(self.user, self.name))


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Registry:
    """Reads and changes the registry; the engine's credentials (users only read their own)."""

    def __init__(self, client: Any):
        self.client = client

    def _changed(self, user: str) -> None:
        self.client.sadd(keys.engine_key("owners"), user)
        self.client.incr(keys.engine_key("epoch"))

    def epoch(self) -> int:
        """Grows with every change to the registry."""
        return int(self.client.get(keys.engine_key("epoch")) or 0)

    def add_version(
        self, user: str, name: str, source: str, filename: str, code_hash: str
    ) -> FilterVersion:
        """Record a new version (active); resubmitting the current code returns it unchanged."""
        keys.validate_name(user)
        keys.validate_name(name, "filter name")
        current = self.get(user, name)
        if current is not None and current.hash == code_hash:
            if current.status is not FilterStatus.ACTIVE:
                self.set_status(user, name, FilterStatus.ACTIVE)
            return self.history(user, name)[-1]
        number = 1 if current is None else current.version + 1
        when = _now()
        version = FilterVersion(number, code_hash, when, filename, source)
        fkey = keys.filter_key(user, name)
        pipe = self.client.pipeline(transaction=False)
        pipe.rpush(keys.versions_key(user, name), json.dumps(dataclasses.asdict(version)))
        pipe.hset(
            fkey,
            mapping={
                "status": FilterStatus.ACTIVE.value,
                "reason": "",
                "version": number,
                "hash": code_hash,
                "updated": when,
                "recent": "",
            },
        )
        pipe.hsetnx(fkey, "created", when)
        pipe.sadd(keys.filters_key(user), name)
        pipe.execute()
        self._changed(user)
        return version

    def set_status(
        self, user: str, name: str, status: FilterStatus, reason: str = ""
    ) -> FilterRecord:
        """Enable, disable or suspend a filter; raise :class:`ConfigError` if it does not exist."""
        if self.get(user, name) is None:
            raise ConfigError(
                f"{user} has no filter named {name!r}; `minibroker filters list` shows them"
            )
        fields: dict[str, Any] = {"status": status.value, "reason": reason, "updated": _now()}
        if status is FilterStatus.ACTIVE:
            fields["recent"] = ""  # a fresh start: old faults no longer count
        self.client.hset(keys.filter_key(user, name), mapping=fields)
        self._changed(user)
        record = self.get(user, name)
        assert record is not None
        return record

    def set_cap(self, user: str, name: str, cap: int | None) -> None:
        """Set one filter's cap (1 to :data:`engine.config.MAX_CAP`); None restores the default."""
        if self.get(user, name) is None:
            raise ConfigError(f"{user} has no filter named {name!r}")
        if cap is None:
            self.client.hdel(keys.filter_key(user, name), "cap")
        elif not 1 <= cap <= MAX_CAP:
            raise ConfigError(f"cap {cap}: give 1 to {MAX_CAP} matches per visit")
        else:
            self.client.hset(keys.filter_key(user, name), "cap", cap)
        self._changed(user)

    def delete(self, user: str, name: str) -> None:
        """Remove a filter and its history (entries already delivered stay on the stream)."""
        if self.get(user, name) is None:
            raise ConfigError(
                f"{user} has no filter named {name!r}; `minibroker filters list` shows them"
            )
        self.client.delete(keys.filter_key(user, name), keys.versions_key(user, name))
        self.client.srem(keys.filters_key(user), name)
        self._changed(user)

    def forget_user(self, user: str) -> None:
        """Remove every filter of ``user`` (when the user is removed)."""
        for name in self.names(user):
            self.delete(user, name)
        self.client.srem(keys.engine_key("owners"), user)
        self.client.incr(keys.engine_key("epoch"))

    def names(self, user: str) -> list[str]:
        """The user's filter names, sorted."""
        return sorted(_text(v) for v in self.client.smembers(keys.filters_key(user)))

    def get(self, user: str, name: str) -> FilterRecord | None:
        """One filter, or None."""
        raw = {
            _text(k): _text(v) for k, v in self.client.hgetall(keys.filter_key(user, name)).items()
        }
        if "status" not in raw:
            return None
        return FilterRecord(
            user=user,
            name=name,
            status=FilterStatus(raw["status"]),
            reason=raw.get("reason", ""),
            version=int(raw.get("version", 0)),
            hash=raw.get("hash", ""),
            cap=int(raw["cap"]) if raw.get("cap") else None,
            created=raw.get("created", ""),
            updated=raw.get("updated", ""),
            stats={s: int(raw.get(s, 0)) for s in _STATS},
        )

    def records(self, user: str) -> list[FilterRecord]:
        """The user's filters, sorted by name."""
        return [r for r in (self.get(user, n) for n in self.names(user)) if r is not None]

    def history(self, user: str, name: str) -> list[FilterVersion]:
        """Every version of one filter, oldest first."""
        return [
            FilterVersion(**json.loads(v))
            for v in self.client.lrange(keys.versions_key(user, name), 0, -1)
        ]

    def describe(self, user: str, name: str, code_hash: str) -> str:
        """The docstring of the version of ``name`` whose hash is ``code_hash`` ("" if unknown):
        what a rendered match (VOEvent ``Why``) says the filter selects."""
        for version in reversed(self.history(user, name)):
            if version.hash == code_hash:
                try:
                    return (ast.get_docstring(ast.parse(version.code)) or "").strip()
                except (SyntaxError, ValueError, RecursionError, MemoryError):
                    return ""  # accepted code parses; a corrupted entry is not fatal here
        return ""

    def owners(self) -> list[str]:
        """Users who have filters."""
        return sorted(_text(v) for v in self.client.smembers(keys.engine_key("owners")))


class ActiveFilters:
    """The registry's active filters, compiled, refreshed between visits.

    :meth:`refresh` costs one ``GET`` when nothing changed; after a change it re-reads the
    registry and compiles only new versions, each in a throwaway process
    (:func:`sandbox.safe_compile`). A stored version that no longer compiles (the policy grew
    stricter) is suspended with the reason, never fatal.
    """

    def __init__(self, client: Any, compile: Callable[[str, str], CompiledFilter] = safe_compile):
        self.registry = Registry(client)
        self._compile = compile
        self._epoch: int | None = None
        self._compiled: dict[tuple[str, str, str], CompiledFilter] = {}
        self.filters: list[ActiveFilter] = []
        self.caps: dict[str, int] = {}

    def refresh(self) -> bool:
        """Pick up new, changed, disabled and deleted filters; True if the set changed."""
        epoch = self.registry.epoch()
        if epoch == self._epoch:
            return False
        self._epoch = epoch
        active: list[ActiveFilter] = []
        caps: dict[str, int] = {}
        seen: set[tuple[str, str, str]] = set()
        for user in self.registry.owners():
            for record in self.registry.records(user):
                if record.status is not FilterStatus.ACTIVE:
                    continue
                ident = (user, record.name, record.hash)
                seen.add(ident)
                compiled = self._compiled.get(ident)
                if compiled is None:
                    version = self.registry.history(user, record.name)[-1]
                    try:
                        compiled = self._compile(version.code, version.filename)
                    except FilterRejected as exc:
                        self.registry.set_status(
                            user,
                            record.name,
                            FilterStatus.SUSPENDED,
                            f"version {version.version} no longer compiles: {exc}",
                        )
                        continue
                    compiled = dataclasses.replace(compiled, name=record.name)
                    self._compiled[ident] = compiled
                active.append(ActiveFilter(user, compiled))
                if record.cap is not None:
                    caps[record.key] = record.cap
        self._compiled = {k: v for k, v in self._compiled.items() if k in seen}
        changed = [(f.key, f.compiled.version) for f in active] != [
            (f.key, f.compiled.version) for f in self.filters
        ] or caps != self.caps
        self.filters, self.caps = active, caps
        return changed
