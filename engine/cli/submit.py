"""``minibroker submit FILE``: send a filter to the engine and wait for its verdict."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.cli._common import connect_redis, whoami
from engine.config import Config
from engine.registry.inbox import Reply

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``submit`` verb to the command's sub-parsers."""
    s = sub.add_parser("submit", help="submit a filter file; waits for the engine's verdict")
    s.add_argument("file", type=Path)
    s.add_argument("--name", help="filter name (default: the file's name without .py)")
    s.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the answer",
    )
    s.add_argument("--user", help="whose filter (default: the user in REDIS_URL)")
    s.add_argument("--redis-url")

    s.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    """``minibroker submit FILE``: exit 0 when accepted, 1 when rejected (every problem listed)."""
    from engine.registry.inbox import submit_file

    reply = submit_file(
        connect_redis(config.redis_url),
        whoami(args, config),
        args.file,
        args.name,
        wait_s=args.wait,
    )
    if reply.ok:
        print(reply.message)
        return 0
    print(f"minibroker: {reply.message}", file=sys.stderr)
    _print_problems(reply)
    return 1


def _print_problems(reply: Reply) -> None:
    for file, line, rule, message in reply.problems:
        where = f"{file}:{line}" if line else file
        print(f"{where}: {message} [{rule}]", file=sys.stderr)
