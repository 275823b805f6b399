"""``minibroker subscribe``: your matches as they arrive, as JSON lines or one file per match."""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path
from typing import Any

from engine.cli._common import connect_redis, whoami
from engine.config import Config
from engine.errors import ConfigError
from engine.formats import FILE_RENDERERS, Renderer

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``subscribe`` verb to the command's sub-parsers."""
    u = sub.add_parser("subscribe", help="print your matches as they arrive (Ctrl-C to stop)")
    u.add_argument("--user", help="whose stream (default: the user in REDIS_URL)")
    u.add_argument("--redis-url")
    u.add_argument(
        "--from",
        "--since",
        dest="since",
        metavar="TIME",
        help="replay from TIME (ISO UTC, a stream id, or 0 for everything kept)",
    )
    u.add_argument("--filter", dest="filter_name", help="only this filter's entries")
    u.add_argument(
        "--format",
        choices=sorted({*FILE_RENDERERS, "voevent"}),
        default="json",
        help="json lines (default); voevent prints one packet per match; with --out, one file per match",
    )
    u.add_argument("--out", type=Path, metavar="DIR", help="write one file per match into DIR")
    u.add_argument(
        "--group",
        help="consumer group keeping your position (default: 'default', "
        "or 'filter.NAME' with --filter, so a filtered reader skips nothing for the others)",
    )
    u.add_argument(
        "--no-group", action="store_true", help="read without a consumer group (nothing remembered)"
    )
    u.add_argument("--consumer", default="main", help="consumer name within the group")
    u.add_argument(
        "--full", action="store_true", help="include the decoded alert in JSON (cutouts as sizes)"
    )
    u.add_argument(
        "--wait", action="store_true", help="wait for the stream if it does not exist yet"
    )
    u.add_argument(
        "--exit-when-idle", action="store_true", help="stop when no entry arrives for a second"
    )
    u.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    """``minibroker subscribe``: a closed pipe or Ctrl-C ends it quietly with exit 0."""
    from engine.formats.json import render_json
    from engine.subscribe import follow

    if args.format == "avro" and args.out is None:
        raise ConfigError("--format avro writes binary files: give --out DIR")
    client, user = connect_redis(config.redis_url), whoami(args, config)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    suffix, render = _renderer(args.format, user, client, config)
    group = args.group or (f"filter.{args.filter_name}" if args.filter_name else "default")
    entries = follow(
        client,
        user,
        since=args.since,
        group=None if args.no_group else group,
        consumer=args.consumer,
        filter_name=args.filter_name,
        stop_when_idle=args.exit_when_idle,
        wait=args.wait,
        alive=_stdout_open,
    )
    try:
        for entry_id, fields in entries:
            is_match = fields.get(b"kind") == b"match"
            if args.out is not None and is_match:
                content = render(entry_id, fields)
                path = args.out / _file_name(args.format, content, fields, suffix)
                path.write_bytes(content)
                print(path, flush=True)
            elif args.format == "voevent" and is_match:
                sys.stdout.write(render(entry_id, fields).decode() + "\n")
                sys.stdout.flush()
            elif args.format == "voevent":
                # Markers and withheld counts are not VOEvents: a line beside the packets.
                print(f"minibroker: {render_json(entry_id, fields)}", file=sys.stderr, flush=True)
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


def _file_name(fmt: str, content: bytes, fields: dict[bytes, bytes], suffix: str) -> str:
    """One file per match: VOEvents are named after their IVORN, the rest after filter and alert."""
    if fmt == "voevent":
        from engine.formats.voevent import packet_filename, packet_ivorn

        return packet_filename(packet_ivorn(content))
    return f"{fields[b'filter'].decode()}-{fields[b'diaSourceId'].decode()}{suffix}"


def _renderer(fmt: str, user: str, client: Any, config: Config) -> tuple[str, Renderer]:
    """File suffix and renderer of one match entry for ``--format``."""
    if fmt != "voevent":
        return FILE_RENDERERS[fmt]
    from engine.formats.voevent import VOEventSettings, renderer
    from engine.registry.store import Registry

    describe = Registry(client).describe  # the user reads their own filters' code
    return ".xml", renderer(user, VOEventSettings.from_config(config), describe)


def _stdout_open() -> bool:
    """False once the reader of our standard output has gone (a closed pipe)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return True  # not a real file (tests capture it): nobody can close it
    return not any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))
