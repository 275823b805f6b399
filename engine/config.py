"""Configuration, read in one place.

Precedence, lowest first: built-in defaults < a TOML file (``--config`` or ``MINIBROKER_CONFIG``)
< environment variables < command-line flags. The environment is passed in (``env=``) so that
tests need no monkeypatching.

=========================  ============================  =====================================
setting                    environment variable           default
=========================  ============================  =====================================
redis_url                  ``REDIS_URL``                  none: ``demo`` starts a private server
budget_s                   ``MINIBROKER_BUDGET_S``        0.5 s per filter per visit
max_matches_per_visit      ``MINIBROKER_MAX_MATCHES``     200 per filter per visit
stream_maxlen              ``MINIBROKER_STREAM_MAXLEN``   100000 entries kept per user stream
isolation                  ``MINIBROKER_ISOLATION``       ``pool`` (worker processes) or ``inprocess``
workers                    ``MINIBROKER_WORKERS``         2 worker processes running at once
idle_workers               ``MINIBROKER_IDLE_WORKERS``    256 users' workers kept between visits
cache_dir                  ``MINIBROKER_CACHE``           ``~/.cache/minibroker`` (sample nights, decoders)
decoder                    ``MINIBROKER_DECODER``         ``auto``: generated C when a compiler is
                                                          found, else fastavro; ``fast`` or ``reference``
compiler                   ``MINIBROKER_CC``, ``CC``      gcc or cc on ``PATH``
=========================  ============================  =====================================
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from engine.errors import ConfigError

__all__ = ["Config", "load_config"]

DEFAULT_REDIS_URL = "redis://localhost:6379/0"


@dataclass(frozen=True)
class Config:
    """Every setting of the engine; see the module docstring for sources and defaults."""

    redis_url: str | None = None
    budget_s: float = 0.5
    max_matches_per_visit: int = 200
    stream_maxlen: int = 100_000
    isolation: str = "pool"
    workers: int = 2
    # Each idle worker costs ~6 MB; one per active user avoids a fork per user per visit.
    idle_workers: int = 256
    cache_dir: Path = Path("~/.cache/minibroker").expanduser()
    decoder: str = "auto"
    compiler: str | None = None

    def __post_init__(self) -> None:
        if self.budget_s <= 0:
            raise ConfigError(f"budget_s must be positive, got {self.budget_s}")
        if self.max_matches_per_visit < 1:
            raise ConfigError(f"max_matches_per_visit must be at least 1, got {self.max_matches_per_visit}")
        if self.isolation not in ("pool", "inprocess"):
            raise ConfigError(f"isolation must be 'pool' or 'inprocess', got {self.isolation!r}")
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")
        if self.decoder not in ("auto", "fast", "reference"):
            raise ConfigError(f"decoder must be 'auto', 'fast' or 'reference', got {self.decoder!r}")
        if self.idle_workers < 0:
            raise ConfigError(f"idle_workers must be 0 or more, got {self.idle_workers}")


_ENV = {
    "REDIS_URL": "redis_url",
    "MINIBROKER_BUDGET_S": "budget_s",
    "MINIBROKER_MAX_MATCHES": "max_matches_per_visit",
    "MINIBROKER_STREAM_MAXLEN": "stream_maxlen",
    "MINIBROKER_ISOLATION": "isolation",
    "MINIBROKER_WORKERS": "workers",
    "MINIBROKER_IDLE_WORKERS": "idle_workers",
    "MINIBROKER_CACHE": "cache_dir",
    "MINIBROKER_DECODER": "decoder",
    # CC first: the more specific MINIBROKER_CC, read later, wins.
    "CC": "compiler",
    "MINIBROKER_CC": "compiler",
}


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = {f.name: f.type for f in fields(Config)}[name]
    try:
        if kind == "float":
            return float(value)
        if kind == "int":
            return int(value)
        if kind == "Path":
            return Path(str(value)).expanduser()
        return str(value) if value is not None else None
    except (TypeError, ValueError):
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
                raise ConfigError(f"config file {file}: unknown setting {key!r}; known: {', '.join(sorted(known))}")
            values[key] = _coerce(key, value, str(file))
    for var, name in _ENV.items():
        if env.get(var):
            values[name] = _coerce(name, env[var], var)
    for name, value in flags.items():
        if value is not None:
            values[name] = _coerce(name, value, f"--{name.replace('_', '-')}")
    return replace(Config(), **values)
