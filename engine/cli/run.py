"""``minibroker run``: evaluate every filter over a night and publish to Redis."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engine.cli._common import connect_redis
from engine.config import Config
from engine.errors import ConfigError, SourceError

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``run`` verb to the command's sub-parsers."""
    r = sub.add_parser("run", help="evaluate every filter over a night and publish to Redis")
    r.add_argument("--night", required=True, type=Path)
    r.add_argument(
        "--filters",
        type=Path,
        help="DIR with DIR/<user>/<name>.py (default: the registry's active filters)",
    )
    r.add_argument("--owner", default="demo", help="user owning filter files directly in DIR")
    r.add_argument("--redis-url", help="default: $REDIS_URL or redis://localhost:6379/0")
    r.add_argument("--isolation", choices=("pool", "inprocess"))
    r.add_argument("--budget-s", type=float, help="time budget per filter per visit")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    """Carry out ``minibroker run``; returns the exit code."""
    from engine.service.pipeline import run_night
    from engine.sinks.streams import Publisher

    active, caps = _filters(args, config)
    publisher = Publisher(connect_redis(config.redis_url), config, caps)
    report = run_night(args.night, active, config, publisher, progress=not args.no_progress)
    for visit, why in report.skipped.items():
        print(f"minibroker: visit {visit} skipped: {why}", file=sys.stderr)
    print(
        f"{report.alerts} alerts, {len(report.visits)} visits, {len(active)} filters: "
        f"{report.published} entries published"
    )
    totals = publisher.totals
    for f in active:
        print(
            f"  {f.key}: delivered {totals.delivered.get(f.key, 0)}, withheld {totals.withheld.get(f.key, 0)}"
            + (", suspended" if f.key in totals.suspended else "")
        )
    faults: dict[tuple[str, str], list[int]] = {}
    for v in report.visits:
        for key, message in v.faults.items():
            faults.setdefault((key, message), []).append(v.visit)
    for (key, message), visits in sorted(faults.items()):
        shown = ", ".join(map(str, visits[:5])) + (
            f" and {len(visits) - 5} more" if len(visits) > 5 else ""
        )
        print(
            f"  {key}: faulted on {len(visits)} of {len(report.visits)} visits ({shown}); its owner's "
            f"stream says why: {message}"
        )
    if report.skipped:
        raise SourceError(
            f"{len(report.skipped)} visit(s) of {args.night} could not be decoded (listed above); "
            "the others were published. Regenerate or re-fetch the night and run it again: "
            "entries already published are not duplicated"
        )
    return 0


def _filters(args: argparse.Namespace, config: Config) -> tuple[list[Any], dict[str, int]]:
    """``run``'s filters: the directory given with ``--filters``, else the registry's active ones."""
    if args.filters is not None:
        from engine.registry import discover

        fs = discover(args.filters, owner=args.owner)
        for problem in fs.problems():
            print(f"minibroker: {problem}", file=sys.stderr)
        if not fs.active:
            raise ConfigError(f"no usable filter under {args.filters}")
        return fs.active, {}
    from engine.registry.store import ActiveFilters

    active = ActiveFilters(connect_redis(config.redis_url))
    active.refresh()
    if not active.filters:
        raise ConfigError(
            "the registry has no active filter: submit one (`minibroker submit FILE`) "
            "or give --filters DIR"
        )
    return active.filters, active.caps
