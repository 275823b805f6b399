"""The live verbs of the ``minibroker`` command: ``serve``, ``produce``, ``replay``.

Kept apart from ``engine/cli.py`` until the CLI becomes one module per verb (issue 8).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.errors import ConfigError

__all__ = ["add_parsers"]


def add_parsers(sub: Any, commands: dict[str, Any]) -> None:
    """Add the live verbs to the subcommand parser and their functions to ``commands``."""
    s = sub.add_parser("serve", help="consume alerts from Kafka, evaluate every filter, publish (Ctrl-C drains)")
    _kafka_args(s, group=True)
    s.add_argument("--filters", required=True, type=Path, help="DIR with DIR/<user>/<name>.py (re-read between visits)")
    s.add_argument("--owner", default="demo", help="user owning filter files directly in DIR")
    s.add_argument("--redis-url", help="default: $REDIS_URL or redis://localhost:6379/0")
    s.add_argument("--isolation", choices=("pool", "inprocess"))
    s.add_argument("--budget-s", type=float, help="time budget per filter per visit")
    s.add_argument("--linger-s", type=float, default=2.0, help="a visit closes when its alerts stop for this long")
    s.add_argument("--max-alerts", type=int, default=50_000, help="a visit batch closes at this many alerts")
    s.add_argument("--shard", help="I/N: run only the users whose stable hash falls in shard I of N "
                                   "(give each shard its own --group)")
    s.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    s.add_argument("--drain-timeout-s", type=float, default=30.0, help="SIGTERM: give up draining after this long")
    s.add_argument("-X", dest="kafka_options", action="append", default=[], metavar="KEY=VALUE",
                   help="a librdkafka consumer setting, e.g. -X session.timeout.ms=6000 (repeatable)")
    s.add_argument("--idle-exit-s", type=float, help="exit 0 when no alert arrived for this long (tests, batch use)")

    p = sub.add_parser("produce", help="publish a night onto a Kafka topic as Rubin does (tests, demos, load)")
    p.add_argument("--night", required=True, type=Path)
    _kafka_args(p, group=False)
    p.add_argument("--partitions", type=int, default=4, help="partitions of the topic if it is created")
    p.add_argument("--visits-per-minute", type=float, help="pace visits (Rubin: ~2); default: as fast as possible")
    p.add_argument("--no-progress", action="store_true")

    r = sub.add_parser("replay", help="re-evaluate a past window of the topic into one user's stream")
    _kafka_args(r, group=False)
    r.add_argument("--user", required=True)
    r.add_argument("--filter", dest="filter_name", help="only this filter of the user (default: all theirs)")
    r.add_argument("--from", dest="since", required=True, help="UTC time, e.g. 2026-11-25T03:00, or Unix seconds")
    r.add_argument("--to", dest="until", help="UTC time or Unix seconds (default: now)")
    r.add_argument("--filters", required=True, type=Path, help="DIR with DIR/<user>/<name>.py")
    r.add_argument("--owner", default="demo")
    r.add_argument("--redis-url")
    r.add_argument("--isolation", choices=("pool", "inprocess"))
    commands.update(serve=_cmd_serve, produce=_cmd_produce, replay=_cmd_replay)


def _kafka_args(p: argparse.ArgumentParser, *, group: bool) -> None:
    p.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, HOST:PORT")
    p.add_argument("--topic", required=True)
    if group:
        p.add_argument("--group", required=True, help="consumer group (engines in one group split the partitions)")


def _cmd_serve(args: argparse.Namespace, config: Config) -> int:
    from engine.cli import _redis
    from engine.service.serve import ServeSettings, parse_shard, serve
    from engine.sources.kafka import KafkaSettings

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    settings = ServeSettings(
        kafka=KafkaSettings(args.bootstrap, args.topic, args.group, linger_s=args.linger_s,
                            max_alerts=args.max_alerts, extra=_options(args.kafka_options)),
        filters=args.filters, owner=args.owner, drain_timeout_s=args.drain_timeout_s,
        shard=parse_shard(args.shard) if args.shard else None, metrics_port=args.metrics_port,
    )
    client = _redis(config.redis_url)
    return serve(settings, config, client, idle_exit_s=args.idle_exit_s)


def _options(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"-X {item!r}: give KEY=VALUE, e.g. -X session.timeout.ms=6000")
        out[key.strip()] = value.strip()
    return out


def _cmd_produce(args: argparse.Namespace, config: Config) -> int:
    from engine.service.produce import produce_night

    r = produce_night(args.night, args.bootstrap, args.topic, partitions=args.partitions,
                      visits_per_minute=args.visits_per_minute, progress=not args.no_progress)
    print(f"produced {r.alerts} alerts in {len(r.visits)} visits to {r.topic} "
          f"({r.bytes / 1e6:.1f} MB, {r.seconds:.1f} s)")
    return 0


def _time(text: str | None, flag: str) -> float | None:
    import datetime as dt

    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: give a UTC time like 2026-11-25T03:00 or Unix seconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _cmd_replay(args: argparse.Namespace, config: Config) -> int:
    from engine.cli import _redis
    from engine.service.replay import replay

    since = _time(args.since, "--from")
    assert since is not None
    client = _redis(config.redis_url)
    r = replay(client, args.bootstrap, args.topic, user=args.user, filters=args.filters,
               owner=args.owner, filter_name=args.filter_name, since=since,
               until=_time(args.until, "--to"), config=config)
    print(f"replayed {r.visits} visits ({r.alerts} alerts) for {args.user}: "
          f"{r.published} entries published")
    return 0
