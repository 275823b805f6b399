"""``minibroker simulate``: write a sample night of realistic alerts."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.config import Config
from engine.errors import ConfigError

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``simulate`` verb to the command's sub-parsers."""
    s = sub.add_parser("simulate", help="write a sample night of realistic alerts")
    s.add_argument("--out", required=True, type=Path, help="night file to write (Avro OCF)")
    s.add_argument("--visits", type=int, default=10)
    s.add_argument("--alerts-per-visit", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--schema-version", default="11.1", help="lsst-alert-packet schema, e.g. 11.1, 10.0, 9.0"
    )
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    """Carry out ``minibroker simulate``; returns the exit code."""
    from engine.local.simulate import simulate_night

    if args.out.is_dir():
        raise ConfigError(
            f"--out {args.out} is a directory; give the night file to write, e.g. {args.out / 'night.avro'}"
        )
    if not args.out.parent.is_dir():
        raise ConfigError(
            f"--out {args.out}: directory {args.out.parent} does not exist; create it first"
        )
    s = simulate_night(
        args.out,
        visits=args.visits,
        alerts_per_visit=args.alerts_per_visit,
        seed=args.seed,
        schema_version=args.schema_version,
        progress=not args.no_progress,
    )
    print(
        f"wrote {s.alerts} alerts in {len(s.visits)} visits to {s.path} "
        f"({s.bytes / 1e6:.1f} MB, {s.seconds:.1f} s)"
    )
    return 0
