"""``minibroker produce``: publish a night onto a Kafka topic as Rubin does."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.cli.serve import add_kafka_args
from engine.config import Config

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``produce`` verb to the command's sub-parsers."""
    p = sub.add_parser(
        "produce", help="publish a night onto a Kafka topic as Rubin does (tests, demos, load)"
    )
    p.add_argument("--night", required=True, type=Path)
    add_kafka_args(p, group=False)
    p.add_argument(
        "--partitions", type=int, default=4, help="partitions of the topic if it is created"
    )
    p.add_argument(
        "--visits-per-minute",
        type=float,
        help="pace visits (Rubin: ~2); default: as fast as possible",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    """Carry out ``minibroker produce``; returns the exit code."""
    from engine.service.produce import produce_night

    r = produce_night(
        args.night,
        args.bootstrap,
        args.topic,
        partitions=args.partitions,
        visits_per_minute=args.visits_per_minute,
        progress=not args.no_progress,
    )
    print(
        f"produced {r.alerts} alerts in {len(r.visits)} visits to {r.topic} "
        f"({r.bytes / 1e6:.1f} MB, {r.seconds:.1f} s)"
    )
    return 0
