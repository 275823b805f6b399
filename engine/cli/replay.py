"""``minibroker replay``: re-evaluate a past window of the topic into one user's stream."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.cli._common import connect_redis
from engine.cli.serve import add_kafka_args
from engine.config import Config, parse_utc

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``replay`` verb to the command's sub-parsers."""
    r = sub.add_parser(
        "replay", help="re-evaluate a past window of the topic into one user's stream"
    )
    add_kafka_args(r, group=False)
    r.add_argument("--user", required=True)
    r.add_argument(
        "--filter", dest="filter_name", help="only this filter of the user (default: all of theirs)"
    )
    r.add_argument(
        "--from", dest="since", required=True, help="UTC time (2026-11-25T03:00) or Unix seconds"
    )
    r.add_argument("--to", dest="until", help="UTC time or Unix seconds (default: now)")
    r.add_argument("--filters", required=True, type=Path, help="DIR with DIR/<user>/<name>.py")
    r.add_argument("--owner", default="demo", help="user owning filter files directly in DIR")
    r.add_argument("--redis-url", help="default: $REDIS_URL or redis://localhost:6379/0")
    r.add_argument("--isolation", choices=("pool", "inprocess"))
    r.set_defaults(run=run)


def parse_time(text: str, flag: str) -> float:
    """A UTC time (naive times are UTC) or Unix seconds → Unix seconds."""
    try:
        return float(text)
    except ValueError:
        return parse_utc(text, flag, "a UTC time like 2026-11-25T03:00 or Unix seconds")


def run(args: argparse.Namespace, config: Config) -> int:
    """Carry out ``minibroker replay``; returns the exit code."""
    from engine.service.replay import replay

    r = replay(
        connect_redis(config.redis_url),
        args.bootstrap,
        args.topic,
        user=args.user,
        filters=args.filters,
        owner=args.owner,
        filter_name=args.filter_name,
        since=parse_time(args.since, "--from"),
        until=None if args.until is None else parse_time(args.until, "--to"),
        config=config,
    )
    print(
        f"replayed {r.visits} visits ({r.alerts} alerts) for {args.user}: {r.published} entries published"
    )
    return 0
