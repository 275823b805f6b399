"""``minibroker subscribe``: print a user's matches as they arrive."""

from __future__ import annotations

import argparse

from engine.cli._common import connect_redis
from engine.config import Config

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``subscribe`` verb to the command's sub-parsers."""
    u = sub.add_parser("subscribe", help="print a user's matches as they arrive (Ctrl-C to stop)")
    u.add_argument("--user", required=True)
    u.add_argument("--redis-url")
    u.add_argument("--since", help="'now' (default), '0' for everything kept, a stream id or an ISO time")
    u.add_argument("--full", action="store_true", help="include the decoded alert (cutouts as sizes)")
    u.add_argument("--exit-when-idle", action="store_true", help="stop when no entry arrives for a second")
    u.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    """Carry out ``minibroker subscribe``; returns the exit code."""
    from engine.formats.json import render_json
    from engine.subscribe import follow

    client = connect_redis(config.redis_url)
    try:
        for entry_id, fields in follow(client, args.user, since=args.since, stop_when_idle=args.exit_when_idle):
            print(render_json(entry_id, fields, full=args.full), flush=True)
    except KeyboardInterrupt:
        pass
    return 0
