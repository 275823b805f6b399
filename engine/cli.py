"""The ``minibroker`` command.

Exit codes: 0 success, 1 a runtime error (printed as one line ``minibroker: <message>``;
``--debug`` shows the traceback), 2 a usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine import __version__
from engine.config import Config, load_config
from engine.errors import ConfigError, MinibrokerError, SourceError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="minibroker",
        description="LSST Simple Filtering Service: run your Python filters over Rubin alerts.",
    )
    p.add_argument("--version", action="version", version=f"minibroker {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--config", help="TOML file with settings (see engine/config.py)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("simulate", help="write a sample night of realistic alerts")
    s.add_argument("--out", required=True, type=Path, help="night file to write (Avro OCF)")
    s.add_argument("--visits", type=int, default=10)
    s.add_argument("--alerts-per-visit", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--schema-version", default="11.1", help="lsst-alert-packet schema, e.g. 11.1, 10.0, 9.0")
    s.add_argument("--no-progress", action="store_true")

    t = sub.add_parser("test", help="run one filter over a sample night, locally (no servers)")
    t.add_argument("filter", type=Path, help="the filter file")
    t.add_argument("--night", type=Path, help="night file (default: a cached 10-visit sample night)")
    t.add_argument("--show", type=int, default=10, help="how many matches to list")
    t.add_argument("--isolation", choices=("pool", "inprocess"), default="inprocess",
                   help="run the filter in worker processes, as the service does (default: in-process)")
    t.add_argument("--report", type=Path, metavar="PATH",
                   help="also write an HTML page: plots per visit, sky map, lightcurves, cutouts, warnings")
    t.add_argument("--no-progress", action="store_true")

    r = sub.add_parser("run", help="evaluate every filter over a night and publish to Redis")
    r.add_argument("--night", required=True, type=Path)
    r.add_argument("--filters", required=True, type=Path, help="DIR with DIR/<user>/<name>.py")
    r.add_argument("--owner", default="demo", help="user owning filter files directly in DIR")
    r.add_argument("--redis-url", help="default: $REDIS_URL or redis://localhost:6379/0")
    r.add_argument("--isolation", choices=("pool", "inprocess"))
    r.add_argument("--budget-s", type=float, help="time budget per filter per visit")
    r.add_argument("--no-progress", action="store_true")

    u = sub.add_parser("subscribe", help="print a user's matches as they arrive (Ctrl-C to stop)")
    u.add_argument("--user", required=True)
    u.add_argument("--redis-url")
    u.add_argument("--since", help="'now' (default), '0' for everything kept, a stream id or an ISO time")
    u.add_argument("--full", action="store_true", help="include the decoded alert (cutouts as sizes)")
    u.add_argument("--exit-when-idle", action="store_true", help="stop when no entry arrives for a second")

    b = sub.add_parser("bench", help="measure decode, evaluate and whole-visit speed on this machine")
    b.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    b.add_argument("--rounds", type=int, default=5, help="repetitions per figure (more = steadier)")
    b.add_argument("--isolation", choices=("pool", "inprocess"))

    _live_parsers(sub)

    d = sub.add_parser("demo", help="the whole service on embedded defaults: server, night, filters, subscriber")
    d.add_argument("--visits", type=int, default=10)
    d.add_argument("--alerts-per-visit", type=int, default=1000)
    d.add_argument("--filters", type=Path, help="default: the bundled sample filters")
    d.add_argument("--isolation", choices=("pool", "inprocess"))
    return p


def _live_parsers(sub: Any) -> None:
    from engine._live_cli import add_parsers

    add_parsers(sub, _COMMANDS)


def _redis(url: str | None):  # type: ignore[no-untyped-def]
    import redis

    from engine.config import DEFAULT_REDIS_URL

    url = url or DEFAULT_REDIS_URL
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3)
        client.ping()
    except (redis.RedisError, ValueError) as exc:
        raise ConfigError(
            f"cannot reach Redis at {url} ({exc}); start one, set REDIS_URL, or try `minibroker demo`"
        ) from None
    return client


def _cmd_simulate(args: argparse.Namespace, config: Config) -> int:
    from engine.simulate import simulate_night

    s = simulate_night(args.out, visits=args.visits, alerts_per_visit=args.alerts_per_visit,
                       seed=args.seed, schema_version=args.schema_version, progress=not args.no_progress)
    print(f"wrote {s.alerts} alerts in {len(s.visits)} visits to {s.path} "
          f"({s.bytes / 1e6:.1f} MB, {s.seconds:.1f} s)")
    return 0


def _cmd_test(args: argparse.Namespace, config: Config) -> int:
    from engine.localtest import default_night, test_filter

    night = args.night or default_night(config, progress=not args.no_progress)
    config = dataclasses.replace(config, isolation=args.isolation)
    if args.report is None:
        test_filter(args.filter, night, config, progress=not args.no_progress, show=args.show)
        return 0
    from engine.report import NullCounts, write_report

    result = test_filter(args.filter, night, config, progress=not args.no_progress, show=args.show,
                         report=NullCounts())
    path = write_report(args.report, result, night=night, config=config)
    print(f"report written to {path}")
    return 0


def _cmd_run(args: argparse.Namespace, config: Config) -> int:
    from engine.pipeline import run_night
    from engine.publish import Publisher
    from engine.registry import discover

    fs = discover(args.filters, owner=args.owner)
    for key, rejection in fs.rejected.items():
        print(f"minibroker: {key} left out: {rejection}", file=sys.stderr)
    if not fs.active:
        raise ConfigError(f"no usable filter under {args.filters}")
    client = _redis(config.redis_url)
    report = run_night(args.night, fs.active, config, Publisher(client, config), progress=not args.no_progress)
    for visit, why in report.skipped.items():
        print(f"minibroker: visit {visit} skipped: {why}", file=sys.stderr)
    print(f"{report.alerts} alerts, {len(report.visits)} visits, {len(fs.active)} filters: "
          f"{report.published} entries published")
    if report.skipped:
        raise SourceError(f"{len(report.skipped)} visit(s) of {args.night} could not be decoded (listed above); "
                          "the others were published. Regenerate or re-fetch the night and run it again: "
                          "entries already published are not duplicated")
    return 0


def _cmd_subscribe(args: argparse.Namespace, config: Config) -> int:
    from engine.subscribe import follow, render_json

    client = _redis(config.redis_url)
    try:
        for entry_id, fields in follow(client, args.user, since=args.since, stop_when_idle=args.exit_when_idle):
            print(render_json(entry_id, fields, full=args.full), flush=True)
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_bench(args: argparse.Namespace, config: Config) -> int:
    import json

    from engine.bench import measure

    if args.rounds < 1:
        raise ConfigError(f"--rounds {args.rounds}: give at least 1")
    figures = measure(config, rounds=args.rounds)
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:<34} {value}")
    return 0


def _cmd_demo(args: argparse.Namespace, config: Config) -> int:
    from engine.demo import run_demo

    return run_demo(config, visits=args.visits, alerts_per_visit=args.alerts_per_visit,
                    filters=args.filters, isolation=args.isolation)


_COMMANDS: dict[str, Any] = {
    "simulate": _cmd_simulate,
    "test": _cmd_test,
    "run": _cmd_run,
    "subscribe": _cmd_subscribe,
    "bench": _cmd_bench,
    "demo": _cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``minibroker`` console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("minibroker: error: a command is required (try --help)", file=sys.stderr)
        return 2
    try:
        config = load_config(
            file=args.config,
            redis_url=getattr(args, "redis_url", None),
            isolation=getattr(args, "isolation", None),
            budget_s=getattr(args, "budget_s", None),
        )
        return _COMMANDS[args.command](args, config)
    except MinibrokerError as exc:
        if args.debug:
            raise
        print(f"minibroker: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("minibroker: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
