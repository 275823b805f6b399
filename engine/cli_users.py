"""The user-facing verbs: ``admin``, ``submit``, ``filters``, ``subscribe`` (and ``run`` from the
registry). Parsers and commands; the work is done in :mod:`engine.users`, :mod:`engine.inbox`,
:mod:`engine.submissions`, :mod:`engine.registry_redis` and :mod:`engine.subscribe`.

Who you are: the user named in ``REDIS_URL`` (``redis://alice:...@host:port/0``), or ``--user``
with the engine's credentials.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import sys
from pathlib import Path
from typing import Any

from engine.config import DEFAULT_REDIS_URL, Config
from engine.errors import ConfigError

__all__ = ["COMMANDS", "add_parsers"]


def add_parsers(sub: Any) -> None:
    """Add the verbs of this module to the ``minibroker`` parser's subcommands."""
    a = sub.add_parser("admin", help="users and submissions (engine credentials)")
    asub = a.add_subparsers(dest="admin_command", metavar="ACTION", required=True)
    x = asub.add_parser("add-user", help="create a user; prints the REDIS_URL they work with")
    x.add_argument("name")
    x = asub.add_parser("remove-user", help="delete a user, their filters and their streams")
    x.add_argument("name")
    asub.add_parser("list-users", help="users, their filters and stream lengths")
    x = asub.add_parser("process-submissions", help="answer pending submissions and requests")
    x.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="keep answering until nothing has arrived for SECONDS (default: answer once)")
    x.add_argument("--reference", type=Path, metavar="NIGHT",
                   help="night whose first visit is the dry-run reference (default: the sample night)")
    x = asub.add_parser("set-cap", help="matches per visit one filter may deliver (up to 100)")
    x.add_argument("user")
    x.add_argument("name")
    x.add_argument("cap", help="a number, or 'default'")
    _common(a, asub, user=False, wait=False)

    s = sub.add_parser("submit", help="submit a filter file; waits for the engine's verdict")
    s.add_argument("file", type=Path)
    s.add_argument("--name", help="filter name (default: the file's name without .py)")
    s.add_argument("--wait", type=float, default=60.0, metavar="SECONDS", help="how long to wait for the answer")
    s.add_argument("--user", help="whose filter (default: the user in REDIS_URL)")
    s.add_argument("--redis-url")

    f = sub.add_parser("filters", help="your filters: list, show, history, disable, enable, delete")
    fsub = f.add_subparsers(dest="filters_command", metavar="ACTION")
    fsub.add_parser("list", help="your filters with status and statistics")
    for verb, text in (("show", "one filter: status, statistics, current code"),
                       ("history", "every version of one filter"),
                       ("disable", "stop running a filter (keeps it)"),
                       ("enable", "run a disabled or suspended filter again"),
                       ("delete", "remove a filter and its history")):
        x = fsub.add_parser(verb, help=text)
        x.add_argument("name")
    _common(f, fsub, user=True, wait=True)

    u = sub.add_parser("subscribe", help="print your matches as they arrive (Ctrl-C to stop)")
    u.add_argument("--user", help="whose stream (default: the user in REDIS_URL)")
    u.add_argument("--redis-url")
    u.add_argument("--from", "--since", dest="since", metavar="TIME",
                   help="replay from TIME (ISO UTC, a stream id, or 0 for everything kept)")
    u.add_argument("--filter", dest="filter_name", help="only this filter's entries")
    u.add_argument("--format", choices=("json", "avro"), default="json",
                   help="json lines (default) or Avro files (with --out)")
    u.add_argument("--out", type=Path, metavar="DIR", help="write one file per match into DIR")
    u.add_argument("--group", default="default", help="consumer group keeping your position (default: default)")
    u.add_argument("--no-group", action="store_true", help="read without a consumer group (nothing remembered)")
    u.add_argument("--consumer", default="main", help="consumer name within the group")
    u.add_argument("--full", action="store_true", help="include the decoded alert in JSON (cutouts as sizes)")
    u.add_argument("--wait", action="store_true", help="wait for the stream if it does not exist yet")
    u.add_argument("--exit-when-idle", action="store_true", help="stop when no entry arrives for a second")


def _common(parent: Any, children: Any, *, user: bool, wait: bool) -> None:
    """Options accepted before or after the action (``filters --user a list`` and
    ``filters list --user a``); the action's copies default to "not given"."""
    for p in (parent, *children.choices.values()):
        default = None if p is parent else argparse.SUPPRESS
        p.add_argument("--redis-url", default=default, help="default: $REDIS_URL or redis://localhost:6379/0")
        if user:
            p.add_argument("--user", default=default, help="whose filters (default: the user in REDIS_URL)")
        if wait:
            p.add_argument("--wait", type=float, default=60.0 if p is parent else argparse.SUPPRESS,
                           metavar="SECONDS", help="how long to wait for the engine's answer")


def _client(config: Config) -> Any:
    from engine.users import connect

    return connect(config.redis_url or DEFAULT_REDIS_URL)


def _whoami(args: argparse.Namespace, config: Config) -> str:
    from engine.keys import validate_name
    from engine.users import url_user

    user = getattr(args, "user", None) or url_user(config.redis_url or DEFAULT_REDIS_URL)
    if not user:
        raise ConfigError("which user? Put the REDIS_URL printed by `minibroker admin add-user NAME` "
                          "in the environment, or pass --user NAME")
    return validate_name(user)


def reference_visit(night: Path | None, config: Config) -> Any:
    """The first visit of ``night`` (default: the cached sample night), every column decoded."""
    from engine.decode import decode_block
    from engine.localtest import default_night
    from engine.night import night_info, read_night

    night = night or default_night(config, progress=False)
    schema, _ = night_info(night)
    return decode_block(next(iter(read_night(night))), schema)


def cmd_admin(args: argparse.Namespace, config: Config) -> int:
    """``minibroker admin ACTION``."""
    from engine import users

    client = _client(config)
    url = config.redis_url or DEFAULT_REDIS_URL
    if args.admin_command == "add-user":
        print(users.add_user(client, url, args.name))
        return 0
    if args.admin_command == "remove-user":
        if not users.remove_user(client, args.name):
            raise ConfigError(f"no user named {args.name!r}; `minibroker admin list-users` shows them")
        print(f"removed {args.name}")
        return 0
    if args.admin_command == "list-users":
        for info in users.list_users(client):
            acl = "" if info.acl else "  (no ACL user on the server!)"
            print(f"{info.name:<24} {info.filters} filter(s)  {info.stream_entries} stream entries{acl}")
        return 0
    if args.admin_command == "set-cap":
        from engine.registry_redis import Registry

        cap = None if args.cap == "default" else _int(args.cap, "cap")
        Registry(client).set_cap(args.user, args.name, cap)
        print(f"{args.user}/{args.name}: cap {args.cap}")
        return 0
    from engine.submissions import process_until_idle

    n = process_until_idle(client, reference_visit(args.reference, config), config, args.wait)
    print(f"{n} request(s) answered")
    return 0


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{what} {text!r}: give a whole number") from None


def _print_problems(reply: Any) -> None:
    for file, line, rule, message in reply.problems:
        where = f"{file}:{line}" if line else file
        print(f"{where}: {message} [{rule}]", file=sys.stderr)


def cmd_submit(args: argparse.Namespace, config: Config) -> int:
    """``minibroker submit FILE``: exit 0 when accepted, 1 when rejected (every problem listed)."""
    from engine.inbox import submit_file

    reply = submit_file(_client(config), _whoami(args, config), args.file, args.name, wait_s=args.wait)
    if reply.ok:
        print(reply.message)
        return 0
    print(f"minibroker: {reply.message}", file=sys.stderr)
    _print_problems(reply)
    return 1


def cmd_filters(args: argparse.Namespace, config: Config) -> int:
    """``minibroker filters [list|show|history|disable|enable|delete]``."""
    from engine.inbox import Op, request
    from engine.registry_redis import Registry

    client, user = _client(config), _whoami(args, config)
    registry = Registry(client)
    action = args.filters_command or "list"
    if action == "list":
        records = registry.list(user)
        if not records:
            print(f"{user} has no filters yet: `minibroker submit FILE` adds one")
        for r in records:
            s = r.stats
            print(f"{r.name:<24} v{r.version:<3} {r.status.value:<9} visits {s['visits']}  passed {s['passed']}  "
                  f"delivered {s['delivered']}  withheld {s['withheld']}  faults {s['faults']}"
                  + (f"  ({r.reason})" if r.reason else ""))
        return 0
    if action in ("show", "history"):
        record = registry.get(user, args.name)
        if record is None:
            raise ConfigError(f"{user} has no filter named {args.name!r}; `minibroker filters list` shows them")
        versions = registry.history(user, args.name)
        if action == "history":
            for v in versions:
                print(f"v{v.version}  {v.time}  {v.hash}  {v.filename}")
            return 0
        for k, v in dataclasses.asdict(record).items():
            if k != "stats":
                print(f"{k:<10} {v.value if hasattr(v, 'value') else v}")
        for k, v in record.stats.items():
            print(f"{k:<10} {v}")
        print(f"\n# {versions[-1].filename} (version {versions[-1].version})\n{versions[-1].code}", end="")
        return 0
    reply = request(client, user, Op(action), args.name, wait_s=args.wait)
    if reply.ok:
        print(reply.message)
        return 0
    raise ConfigError(reply.message)


def cmd_subscribe(args: argparse.Namespace, config: Config) -> int:
    """``minibroker subscribe``: a closed pipe or Ctrl-C ends it quietly with exit 0."""
    from engine.subscribe import RENDERERS, follow, render_json

    if args.format != "json" and args.out is None:
        raise ConfigError(f"--format {args.format} writes files: give --out DIR")
    client, user = _client(config), _whoami(args, config)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    suffix, render = RENDERERS[args.format]
    entries = follow(client, user, since=args.since, group=None if args.no_group else args.group,
                     consumer=args.consumer, filter_name=args.filter_name,
                     stop_when_idle=args.exit_when_idle, wait=args.wait, alive=_stdout_open)
    try:
        for entry_id, fields in entries:
            if args.out is not None and fields.get(b"kind") == b"match":
                name = f"{fields[b'filter'].decode()}-{fields[b'diaSourceId'].decode()}{suffix}"
                (args.out / name).write_bytes(render(entry_id, fields))
                print(args.out / name, flush=True)
            else:
                print(render_json(entry_id, fields, full=args.full), flush=True)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        # The reader went away (`| head -1`): not an error. Point stdout at nothing so the
        # interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        entries.close()
    return 0


def _stdout_open() -> bool:
    """False once the reader of our standard output has gone (a closed pipe)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return True  # not a real file (tests capture it): nobody can close it
    return not any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))


def run_filters(args: argparse.Namespace, config: Config) -> tuple[list[Any], dict[str, int]]:
    """``run``'s filters: the directory given with ``--filters``, else the registry's active ones."""
    if args.filters is not None:
        from engine.registry import discover

        fs = discover(args.filters, owner=args.owner)
        for key, rejection in fs.rejected.items():
            print(f"minibroker: {key} left out: {rejection}", file=sys.stderr)
        if not fs.active:
            raise ConfigError(f"no usable filter under {args.filters}")
        return fs.active, {}
    from engine.registry_redis import ActiveFilters

    active = ActiveFilters(_client(config))
    active.refresh()
    if not active.filters:
        raise ConfigError("the registry has no active filter: submit one (`minibroker submit FILE`) "
                          "or give --filters DIR")
    return active.filters, active.caps


COMMANDS = {"admin": cmd_admin, "submit": cmd_submit, "filters": cmd_filters, "subscribe": cmd_subscribe}
