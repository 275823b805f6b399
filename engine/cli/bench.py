"""``minibroker bench``: measure decode, evaluate and whole-visit speed on this machine."""

from __future__ import annotations

import argparse

from engine.config import Config
from engine.errors import ConfigError

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``bench`` verb to the command's sub-parsers."""
    b = sub.add_parser(
        "bench", help="measure decode, evaluate and whole-visit speed on this machine"
    )
    b.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    b.add_argument("--rounds", type=int, default=5, help="repetitions per figure (more = steadier)")
    b.add_argument("--isolation", choices=("pool", "inprocess"))
    b.add_argument(
        "--live-visits",
        type=int,
        default=4,
        help="10,000-alert visits for the live figures through Kafka and Redis (0: skip them)",
    )
    b.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    """Carry out ``minibroker bench``; returns the exit code."""
    import json

    from engine.local.bench import measure

    if args.rounds < 1:
        raise ConfigError(f"--rounds {args.rounds}: give at least 1")
    if args.live_visits < 0 or args.live_visits == 1:
        raise ConfigError(f"--live-visits {args.live_visits}: give 0 (skip) or at least 2")
    figures = measure(config, rounds=args.rounds)
    if args.live_visits:
        import sys

        from engine.local.livebench import measure_live

        figures.update(
            measure_live(
                config,
                visits=args.live_visits,
                say=lambda text: print(text, file=sys.stderr, flush=True),
            )
        )
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:<34} {value}")
    return 0
