"""``minibroker filters``: list, show, history, disable, enable, delete your filters."""

from __future__ import annotations

import argparse
import dataclasses

from engine.cli._common import add_common_options, connect_redis, whoami
from engine.config import Config
from engine.errors import ConfigError

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``filters`` verb to the command's sub-parsers."""
    f = sub.add_parser("filters", help="your filters: list, show, history, disable, enable, delete")
    fsub = f.add_subparsers(dest="filters_command", metavar="ACTION")
    fsub.add_parser("list", help="your filters with status and statistics")
    for verb, text in (
        ("show", "one filter: status, statistics, current code"),
        ("history", "every version of one filter"),
        ("disable", "stop running a filter (keeps it)"),
        ("enable", "run a disabled or suspended filter again"),
        ("delete", "remove a filter and its history"),
    ):
        x = fsub.add_parser(verb, help=text)
        x.add_argument("name")
    add_common_options(f, fsub, user=True, wait=True)

    f.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    """``minibroker filters [list|show|history|disable|enable|delete]``."""
    from engine.registry.inbox import Op, request
    from engine.registry.store import Registry

    client, user = connect_redis(config.redis_url), whoami(args, config)
    registry = Registry(client)
    action = args.filters_command or "list"
    if action == "list":
        records = registry.records(user)
        if not records:
            print(f"{user} has no filters yet: `minibroker submit FILE` adds one")
        for r in records:
            s = r.stats
            ms = s["eval_us"] / 1000 / s["visits"] if s["visits"] else 0.0
            print(
                f"{r.name:<24} v{r.version:<3} {r.status.value:<9} visits {s['visits']}  passed {s['passed']}  "
                f"delivered {s['delivered']}  withheld {s['withheld']}  faults {s['faults']}  "
                f"{ms:.1f} ms/visit" + (f"  ({r.reason})" if r.reason else "")
            )
        return 0
    if action in ("show", "history"):
        record = registry.get(user, args.name)
        if record is None:
            raise ConfigError(
                f"{user} has no filter named {args.name!r}; `minibroker filters list` shows them"
            )
        versions = registry.history(user, args.name)
        if action == "history":
            for v in versions:
                print(f"v{v.version}  {v.time}  {v.hash}  {v.filename}")
            return 0
        for key, value in dataclasses.asdict(record).items():
            if key != "stats":
                print(f"{key:<10} {value.value if hasattr(value, 'value') else value}")
        for key, count in record.stats.items():
            print(f"{key:<10} {count}")
        print(
            f"\n# {versions[-1].filename} (version {versions[-1].version})\n{versions[-1].code}",
            end="",
        )
        return 0
    reply = request(client, user, Op(action), args.name, wait_s=args.wait)
    if reply.ok:
        print(reply.message)
        return 0
    raise ConfigError(reply.message)
