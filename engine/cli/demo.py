"""``minibroker demo``: the whole service on embedded defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.config import Config

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` verb to the command's sub-parsers."""
    d = sub.add_parser(
        "demo",
        help="the live service on embedded defaults: Kafka broker, Redis, night, serve, subscriber",
    )
    d.add_argument("--visits", type=int, default=10)
    d.add_argument("--alerts-per-visit", type=int, default=1000)
    d.add_argument("--filters", type=Path, help="default: the bundled sample filters")
    d.add_argument("--isolation", choices=("pool", "inprocess"))
    d.add_argument(
        "--visits-per-minute",
        type=float,
        default=20.0,
        help="pace at which the night is produced onto the embedded broker (Rubin: ~2)",
    )
    d.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    """Carry out ``minibroker demo``; returns the exit code."""
    from engine.local.demo import run_demo

    return run_demo(
        config,
        visits=args.visits,
        alerts_per_visit=args.alerts_per_visit,
        filters=args.filters,
        isolation=args.isolation,
        visits_per_minute=args.visits_per_minute,
    )
