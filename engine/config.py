"""Configuration, read in one place.

Precedence, lowest first: built-in defaults < a TOML file (``--config`` or ``MINIBROKER_CONFIG``)
< environment variables < command-line flags. The environment is passed in (``env=``) so that
tests need no monkeypatching.

=========================  ============================  =====================================
setting                    environment variable           default
=========================  ============================  =====================================
redis_url                  ``REDIS_URL``                  none: ``demo`` starts a private server
budget_s                   ``MINIBROKER_BUDGET_S``        0.5 s per filter per visit
max_matches_per_visit      ``MINIBROKER_MAX_MATCHES``     20 per filter per visit (the cap; an
                                                          admin may raise one filter's to 100)
stream_maxlen              ``MINIBROKER_STREAM_MAXLEN``   10000 entries kept per user stream
retention_s                ``MINIBROKER_RETENTION_S``     604800 (7 days): stream entries,
                                                          packets, dedup sets and counters
suspend_after_faults       ``MINIBROKER_SUSPEND_AFTER``   3 faulty visits among the last ``suspend_window``
suspend_window             ``MINIBROKER_FAULT_WINDOW``    5 visits (one rule: the pool and the registry)
isolation                  ``MINIBROKER_ISOLATION``       ``pool`` (worker processes) or ``inprocess``
workers                    ``MINIBROKER_WORKERS``         2 worker processes running at once (one per core;
                                                          two per core is faster with many users,
                                                          but budgets then count shared time)
shared_workers             ``MINIBROKER_SHARED_WORKERS``  1 more sharing a core, for quick users only
                                                          (filters under a tenth of their budget)
idle_workers               ``MINIBROKER_IDLE_WORKERS``    1024 users' workers kept between visits (stopped;
                                                          ~6 MB of private memory each, measured)
max_filters_per_user       ``MINIBROKER_MAX_FILTERS``     20 active filters run per user per visit
user_budget_s              ``MINIBROKER_USER_BUDGET_S``   2.0 s of evaluation per user per visit (never below budget_s)
idle_worker_rss_mb         ``MINIBROKER_IDLE_RSS_MB``     256 MB resident: an idle worker above is retired
cache_dir                  ``MINIBROKER_CACHE``           ``~/.cache/minibroker`` (sample nights, decoders)
decoder                    ``MINIBROKER_DECODER``         ``auto``: generated C when a compiler is
                                                          found, else fastavro; ``fast`` or ``reference``
compiler                   ``MINIBROKER_CC``, ``CC``      gcc or cc on ``PATH``
vo_authority               ``MINIBROKER_VO_AUTHORITY``    ``minibroker.local``: IVORN authority
vo_packet_url              ``MINIBROKER_VO_PACKET_URL``   ``ivo://{authority}/alerts#{diaSourceId}``
vtp_allow_private          ``MINIBROKER_VTP_PRIVATE``     false: VTP receivers must be public
=========================  ============================  =====================================
"""

from __future__ import annotations

import datetime as dt
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from engine.errors import ConfigError

__all__ = ["ENV_VARIABLES", "MAX_CAP", "Config", "load_config", "parse_utc"]

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
MAX_CAP = 100  # the most matches per visit an admin may allow one filter (`admin set-cap`)


@dataclass(frozen=True)
class Config:
    """Every setting of the engine; see the module docstring for sources and defaults."""

    redis_url: str | None = None
    budget_s: float = 0.5
    max_matches_per_visit: int = 20
    stream_maxlen: int = 10_000
    retention_s: int = 7 * 24 * 3600
    suspend_after_faults: int = 3
    isolation: str = "pool"
    workers: int = 2
    # One more worker may share a core, among quick users only: the cores then need not wait
    # for the engine between workers (~12 % less per visit at 1,000 users, measured).
    shared_workers: int = 1
    # Each idle worker costs ~6 MB of private memory (1,000 measured: 5.6 GB); one per active
    # user avoids a fork per user per visit, so the default covers a thousand users.
    idle_workers: int = 1024
    # Fair shares (sandbox.shares): one user's many or slow filters must not slow everyone; a
    # filter over its owner's share gets an "over-share" fault, other users never notice.
    max_filters_per_user: int = 20
    user_budget_s: float = 2.0
    # The pool suspends a filter after suspend_after_faults faults among its last suspend_window
    # visits, so a filter failing on 2 visits of 3 is caught too.
    suspend_window: int = 5
    # Idle workers are stopped but keep their memory: one that grew past this is retired.
    idle_worker_rss_mb: int = 256
    cache_dir: Path = Path("~/.cache/minibroker").expanduser()
    decoder: str = "auto"
    compiler: str | None = None
    # VOEvent naming: packets are ivo://<vo_authority>/<user>/<filter>#<diaSourceId>; set it to
    # the authority your IVOA registry entry names. Checked in engine.formats.voevent.
    vo_authority: str = "minibroker.local"
    # Where a VOEvent's Reference says the full Avro packet is ({authority}, {diaSourceId}, {schema_id}).
    vo_packet_url: str = "ivo://{authority}/alerts#{diaSourceId}"
    # Users name the hosts the VTP forwarder connects to: by default only public addresses, so
    # that no one can point it at the service's own network (Redis, metadata endpoints).
    vtp_allow_private: bool = False

    def __post_init__(self) -> None:
        if self.budget_s <= 0:
            raise ConfigError(f"budget_s must be positive, got {self.budget_s}")
        if self.max_matches_per_visit < 1:
            raise ConfigError(
                f"max_matches_per_visit must be at least 1, got {self.max_matches_per_visit}"
            )
        if self.stream_maxlen < 1 or self.retention_s < 1:
            raise ConfigError(
                f"stream_maxlen and retention_s must be positive, got {self.stream_maxlen}, {self.retention_s}"
            )
        if self.suspend_after_faults < 1:
            raise ConfigError(
                f"suspend_after_faults must be at least 1, got {self.suspend_after_faults}"
            )
        if self.suspend_window < self.suspend_after_faults:
            raise ConfigError(
                f"suspend_window must be at least suspend_after_faults ({self.suspend_after_faults}), "
                f"got {self.suspend_window}"
            )
        if self.max_filters_per_user < 1:
            raise ConfigError(
                f"max_filters_per_user must be at least 1, got {self.max_filters_per_user}"
            )
        if self.user_budget_s <= 0:
            raise ConfigError(f"user_budget_s must be positive, got {self.user_budget_s}")
        if self.idle_worker_rss_mb < 1:
            raise ConfigError(
                f"idle_worker_rss_mb must be at least 1, got {self.idle_worker_rss_mb}"
            )
        if self.isolation not in ("pool", "inprocess"):
            raise ConfigError(f"isolation must be 'pool' or 'inprocess', got {self.isolation!r}")
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")
        if self.shared_workers < 0:
            raise ConfigError(f"shared_workers must be 0 or more, got {self.shared_workers}")
        if self.decoder not in ("auto", "fast", "reference"):
            raise ConfigError(
                f"decoder must be 'auto', 'fast' or 'reference', got {self.decoder!r}"
            )
        if self.idle_workers < 0:
            raise ConfigError(f"idle_workers must be 0 or more, got {self.idle_workers}")


_ENV = {
    "REDIS_URL": "redis_url",
    "MINIBROKER_BUDGET_S": "budget_s",
    "MINIBROKER_MAX_MATCHES": "max_matches_per_visit",
    "MINIBROKER_STREAM_MAXLEN": "stream_maxlen",
    "MINIBROKER_RETENTION_S": "retention_s",
    "MINIBROKER_SUSPEND_AFTER": "suspend_after_faults",
    "MINIBROKER_FAULT_WINDOW": "suspend_window",
    "MINIBROKER_MAX_FILTERS": "max_filters_per_user",
    "MINIBROKER_USER_BUDGET_S": "user_budget_s",
    "MINIBROKER_IDLE_RSS_MB": "idle_worker_rss_mb",
    "MINIBROKER_ISOLATION": "isolation",
    "MINIBROKER_WORKERS": "workers",
    "MINIBROKER_SHARED_WORKERS": "shared_workers",
    "MINIBROKER_IDLE_WORKERS": "idle_workers",
    "MINIBROKER_CACHE": "cache_dir",
    "MINIBROKER_DECODER": "decoder",
    # CC first: the more specific MINIBROKER_CC, read later, wins.
    "CC": "compiler",
    "MINIBROKER_CC": "compiler",
    "MINIBROKER_VO_AUTHORITY": "vo_authority",
    "MINIBROKER_VO_PACKET_URL": "vo_packet_url",
    "MINIBROKER_VTP_PRIVATE": "vtp_allow_private",
}

#: Every environment variable :func:`load_config` reads (caches of a Config compare these).
ENV_VARIABLES = ("MINIBROKER_CONFIG", *_ENV)


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = {f.name: f.type for f in fields(Config)}[name]
    try:
        if kind == "float":
            return float(value)
        if kind == "int":
            return int(value)
        if kind == "Path":
            return Path(str(value)).expanduser()
        if kind == "bool":
            if isinstance(value, bool):
                return value
            return {
                "1": True,
                "true": True,
                "yes": True,
                "on": True,
                "0": False,
                "false": False,
                "no": False,
                "off": False,
            }[str(value).strip().lower()]
        return str(value) if value is not None else None
    except (TypeError, ValueError, KeyError):
        raise ConfigError(f"{source}: {name} = {value!r} is not a valid {kind}") from None


def load_config(
    env: Mapping[str, str] | None = None,
    file: str | os.PathLike[str] | None = None,
    **flags: Any,
) -> Config:
    """Build the configuration: defaults < ``file`` < ``env`` < ``flags`` (None flags are ignored)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    file = file or env.get("MINIBROKER_CONFIG")
    if file:
        try:
            data = tomllib.loads(Path(file).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {file} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file}: {exc}") from None
        known = {f.name for f in fields(Config)}
        for key, value in data.items():
            if key not in known:
                raise ConfigError(
                    f"config file {file}: unknown setting {key!r}; known: {', '.join(sorted(known))}"
                )
            values[key] = _coerce(key, value, str(file))
    for var, name in _ENV.items():
        if env.get(var):
            values[name] = _coerce(name, env[var], var)
    for name, value in flags.items():
        if value is not None:
            values[name] = _coerce(name, value, f"--{name.replace('_', '-')}")
    return replace(Config(), **values)


def parse_utc(text: str, flag: str, expected: str) -> float:
    """A time a user gave (ISO 8601; a time without a zone is UTC) → Unix seconds.

    Raises :class:`ConfigError` ``"<flag> '<text>': give <expected>"`` when it is not one.
    """
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: give {expected}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()
