"""``minibroker test``: run one filter over a sample night, locally (no servers)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from engine.config import Config

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``test`` verb to the command's sub-parsers."""
    t = sub.add_parser("test", help="run one filter over a sample night, locally (no servers)")
    t.add_argument("filter", type=Path, help="the filter file")
    t.add_argument("--night", type=Path, help="night file (default: a cached 10-visit sample night)")
    t.add_argument("--show", type=int, default=10, help="how many matches to list")
    t.add_argument("--isolation", choices=("pool", "inprocess"), default="inprocess",
                   help="run the filter in worker processes, as the service does (default: in-process)")
    t.add_argument("--report", type=Path, metavar="PATH",
                   help="also write an HTML page: plots per visit, sky map, lightcurves, cutouts, warnings")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    """Carry out ``minibroker test``; returns the exit code."""
    from engine.local.localtest import default_night, test_filter

    night = args.night or default_night(config, progress=not args.no_progress)
    config = dataclasses.replace(config, isolation=args.isolation)
    if args.report is None:
        test_filter(args.filter, night, config, progress=not args.no_progress, show=args.show)
        return 0
    from engine.local.report import NullCounts, write_report

    result = test_filter(args.filter, night, config, progress=not args.no_progress, show=args.show,
                         report=NullCounts())
    path = write_report(args.report, result, night=night, config=config)
    print(f"report written to {path}")
    return 0
