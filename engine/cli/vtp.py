"""``minibroker vtp``: register a user's VTP broker, and run the forwarder that feeds it."""

from __future__ import annotations

import argparse
import logging

from engine.cli._common import connect_redis
from engine.config import Config
from engine.errors import ConfigError

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``vtp`` verb to the command's sub-parsers."""
    v = sub.add_parser(
        "vtp", help="send a user's matches as VOEvents to their own VTP broker (e.g. Comet)"
    )
    v.add_argument(
        "action",
        choices=("add", "remove", "list", "forward"),
        help="add/remove/list a user's receivers; forward: run the VTP author until Ctrl-C",
    )
    v.add_argument(
        "receiver",
        nargs="?",
        metavar="HOST:PORT",
        help="the broker's author port (Comet --receive)",
    )
    v.add_argument(
        "--user", action="append", help="whose matches (forward: repeat to limit it; default all)"
    )
    v.add_argument(
        "--since", default="now", choices=("now", "0"), help="add: new matches only, or all kept"
    )
    v.add_argument(
        "--exit-when-idle", action="store_true", help="forward: stop once every receiver caught up"
    )
    v.add_argument("--redis-url")
    v.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    """Carry out ``minibroker vtp``; returns the exit code."""
    from engine.formats.voevent import VOEventSettings
    from engine.sinks import vtp

    settings = VOEventSettings.from_config(config)  # checks the authority before anything runs
    if args.action != "forward" and (not args.user or len(args.user) != 1):
        raise ConfigError(f"vtp {args.action}: give exactly one --user")
    if args.action in ("add", "remove") and not args.receiver:
        raise ConfigError(f"vtp {args.action}: give the receiver as HOST:PORT")
    client = connect_redis(config.redis_url)
    user = args.user[0] if args.user else ""
    if args.action == "add":
        start = vtp.add_receiver(client, user, vtp.Receiver.parse(args.receiver), since=args.since)
        print(
            f"{user}: matches after stream entry {start} go to {args.receiver}; run `minibroker vtp forward`"
        )
    elif args.action == "remove":
        if not vtp.remove_receiver(client, user, vtp.Receiver.parse(args.receiver)):
            raise ConfigError(
                f"{user} has no receiver {args.receiver}; see `minibroker vtp list --user {user}`"
            )
        print(f"{user}: no longer forwarding to {args.receiver}")
    elif args.action == "list":
        for s in vtp.list_receivers(client, user):
            print(
                f"{s.receiver}  position {s.position}  acked {s.acked}  nakked {s.nakked}"
                + (f"  last nak: {s.last_nak}" if s.last_nak else "")
                + (f"  last error: {s.last_error}" if s.last_error else "")
            )
    else:
        logging.basicConfig(level=logging.INFO, format="minibroker vtp: %(message)s")
        try:
            from engine.registry.store import Registry

            # Why: each packet carries the docstring of the filter version that selected it.
            vtp.forward(
                client,
                settings,
                users=args.user,
                until_idle=args.exit_when_idle,
                describe=Registry(client).describe,
                allow_private=config.vtp_allow_private,
            )
        except KeyboardInterrupt:
            pass  # positions are saved after every answer: nothing to finish
    return 0
