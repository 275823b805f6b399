"""``minibroker admin``: users and submissions, with the engine's credentials."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.cli._common import add_common_options, connect_redis
from engine.config import DEFAULT_REDIS_URL, Config
from engine.errors import ConfigError

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``admin`` verb to the command's sub-parsers."""
    a = sub.add_parser("admin", help="users and submissions (engine credentials)")
    asub = a.add_subparsers(dest="admin_command", metavar="ACTION", required=True)
    x = asub.add_parser("add-user", help="create a user; prints the REDIS_URL they work with")
    x.add_argument("name")
    x = asub.add_parser("remove-user", help="delete a user, their filters and their streams")
    x.add_argument("name")
    asub.add_parser("list-users", help="users, their filters and stream lengths")
    x = asub.add_parser("process-submissions", help="answer pending submissions and requests")
    x.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep answering until nothing has arrived for SECONDS (default: answer once)",
    )
    x.add_argument(
        "--reference",
        type=Path,
        metavar="NIGHT",
        help="night whose first visit is the dry-run reference (default: the sample night)",
    )
    x = asub.add_parser("set-cap", help="matches per visit one filter may deliver (up to 100)")
    x.add_argument("user")
    x.add_argument("name")
    x.add_argument("cap", help="a number, or 'default'")
    add_common_options(a, asub, user=False, wait=False)

    a.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    """Carry out ``minibroker admin ACTION``; returns the exit code."""
    from engine.registry import users

    client = connect_redis(config.redis_url)
    url = config.redis_url or DEFAULT_REDIS_URL
    if args.admin_command == "add-user":
        print(users.add_user(client, url, args.name))
        return 0
    if args.admin_command == "remove-user":
        if not users.remove_user(client, args.name):
            raise ConfigError(
                f"no user named {args.name!r}; `minibroker admin list-users` shows them"
            )
        print(f"removed {args.name}")
        return 0
    if args.admin_command == "list-users":
        for info in users.list_users(client):
            acl = "" if info.acl else "  (no ACL user on the server!)"
            print(
                f"{info.name:<24} {info.filters} filter(s)  {info.stream_entries} stream entries{acl}"
            )
        return 0
    if args.admin_command == "set-cap":
        from engine.registry.store import Registry

        cap = None if args.cap == "default" else _int(args.cap, "cap")
        Registry(client).set_cap(args.user, args.name, cap)
        print(f"{args.user}/{args.name}: cap {args.cap}")
        return 0
    from engine.cli._common import reference_visit
    from engine.service.submissions import process_until_idle

    n = process_until_idle(client, reference_visit(args.reference, config), config, args.wait)
    print(f"{n} request(s) answered")
    return 0


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{what} {text!r}: give a whole number") from None
