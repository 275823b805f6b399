"""``minibroker test``: run one filter over a sample night, locally (no servers)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from engine.config import Config

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``test`` verb to the command's sub-parsers."""
    t = sub.add_parser("test", help="run one filter over a sample night, locally (no servers)")
    t.add_argument("filter", type=Path, help="the filter file")
    t.add_argument(
        "--night", type=Path, help="night file (default: a cached 10-visit sample night)"
    )
    t.add_argument("--show", type=int, default=10, help="how many matches to list")
    t.add_argument(
        "--isolation",
        choices=("pool", "inprocess"),
        default="pool",
        help="pool (default): in a worker under the service's time budget and limits, so a "
        "filter that passes here behaves the same in production; inprocess: faster, no limits",
    )
    t.add_argument(
        "--report",
        type=Path,
        metavar="PATH",
        help="also write an HTML page: plots per visit, sky map, lightcurves, cutouts, warnings",
    )
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    """Carry out ``minibroker test``; returns the exit code (1 when the filter faulted)."""
    from engine.local.localtest import default_night, test_filter
    from engine.local.report import NullCounts, nothing_passed, write_report
    from sandbox import load_filter

    # The file's problems first: no one should wait for a sample night to learn of a typo.
    load_filter(args.filter)
    night = args.night or default_night(config, progress=not args.no_progress)
    config = dataclasses.replace(config, isolation=args.isolation)
    # Null counts are cheap, and explain a filter that passes nothing.
    result = test_filter(
        args.filter,
        night,
        config,
        progress=not args.no_progress,
        show=args.show,
        report=NullCounts(),
    )
    nothing = nothing_passed(result)
    if nothing is not None:
        print(f"warning: {nothing.message}")
    if args.report is not None:
        path = write_report(args.report, result, night=night, config=config)
        print(f"report written to {path}")
    if result.report.skipped:
        print(
            f"minibroker: {night}: {len(result.report.skipped)} visit(s) could not be decoded (SKIPPED "
            "above, with where); regenerate or copy the night again",
            file=sys.stderr,
        )
        return 1
    faulty = sum(1 for v in result.report.visits if v.faults)
    if faulty:
        print(
            f"minibroker: the filter faulted on {faulty} of {len(result.report.visits)} visits "
            "(each fault listed above once); fix it and test again",
            file=sys.stderr,
        )
        return 1
    return 0
