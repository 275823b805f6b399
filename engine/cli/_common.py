"""What several verbs share: connecting to Redis (a server or a cluster), knowing who the user
is, and the options a verb accepts before or after its action."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from engine.config import DEFAULT_REDIS_URL, Config
from engine.errors import ConfigError

__all__ = ["add_common_options", "connect_redis", "reference_visit", "whoami"]


def connect_redis(url: str | None) -> Any:
    """A client of the server or cluster at ``url`` (default: the configured one), checked:
    see :func:`engine.registry.users.connect` for how a URL names a cluster."""
    from engine.registry.users import connect

    return connect(url or DEFAULT_REDIS_URL)


def whoami(args: argparse.Namespace, config: Config) -> str:
    """The user a command acts for: ``--user``, else the user named in ``REDIS_URL``."""
    from engine.registry.keys import validate_name
    from engine.registry.users import url_user

    user = getattr(args, "user", None) or url_user(config.redis_url or DEFAULT_REDIS_URL)
    if not user:
        raise ConfigError(
            "which user? Put the REDIS_URL printed by `minibroker admin add-user NAME` "
            "in the environment, or pass --user NAME"
        )
    return validate_name(user)


def add_common_options(parent: Any, children: Any, *, user: bool, wait: bool) -> None:
    """Options accepted before or after the action (``filters --user a list`` and
    ``filters list --user a``); the action's copies default to "not given"."""
    for p in (parent, *children.choices.values()):
        default = None if p is parent else argparse.SUPPRESS
        p.add_argument(
            "--redis-url", default=default, help="default: $REDIS_URL or redis://localhost:6379/0"
        )
        if user:
            p.add_argument(
                "--user", default=default, help="whose filters (default: the user in REDIS_URL)"
            )
        if wait:
            p.add_argument(
                "--wait",
                type=float,
                default=60.0 if p is parent else argparse.SUPPRESS,
                metavar="SECONDS",
                help="how long to wait for the engine's answer",
            )


def reference_visit(night: Path | None, config: Config) -> Any:
    """The first visit of ``night`` (default: the cached sample night), every column decoded:
    the visit submissions are dry-run on."""
    from engine.decode import decode_block
    from engine.local.localtest import default_night
    from engine.sources.night import night_info, read_night

    night = night or default_night(config, progress=False)
    schema, _ = night_info(night)
    return decode_block(next(iter(read_night(night))), schema)
