"""``minibroker serve``: the live service on a Kafka topic (see :mod:`engine.service.serve`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from engine.cli._common import connect_redis
from engine.config import Config
from engine.errors import ConfigError

__all__ = ["add_kafka_args", "add_parser", "run"]


def add_kafka_args(p: argparse.ArgumentParser, *, group: bool) -> None:
    """``--bootstrap`` and ``--topic`` (and ``--group``), shared by the live verbs."""
    p.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, HOST:PORT")
    p.add_argument("--topic", required=True)
    if group:
        p.add_argument(
            "--group",
            required=True,
            help="consumer group (engines in one group split the partitions)",
        )


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``serve`` verb to the command's sub-parsers."""
    s = sub.add_parser(
        "serve", help="consume alerts from Kafka, evaluate every filter, publish (SIGTERM drains)"
    )
    add_kafka_args(s, group=True)
    s.add_argument(
        "--filters",
        type=Path,
        help="DIR with DIR/<user>/<name>.py (a changed file takes effect at the next visit); "
        "default: the registry's active filters (and submissions are answered)",
    )
    s.add_argument("--owner", default="demo", help="user owning filter files directly in DIR")
    s.add_argument("--redis-url", help="default: $REDIS_URL or redis://localhost:6379/0")
    s.add_argument("--isolation", choices=("pool", "inprocess"))
    s.add_argument("--budget-s", type=float, help="time budget per filter per visit")
    s.add_argument(
        "--linger-s",
        type=float,
        default=2.0,
        help="a visit closes when its alerts stop for this long",
    )
    s.add_argument(
        "--quiet-s",
        type=float,
        default=0.15,
        help="a visit also closes when every partition is caught up and nothing came for this long",
    )
    s.add_argument(
        "--max-alerts", type=int, default=50_000, help="a visit batch closes at this many alerts"
    )
    s.add_argument(
        "--shard",
        help="I/N: run only the users whose stable hash falls in shard I of N "
        "(each shard in its own --group)",
    )
    s.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    s.add_argument(
        "--drain-timeout-s",
        type=float,
        default=30.0,
        help="on SIGTERM, give up draining after this long (exit 3)",
    )
    s.add_argument(
        "-X",
        dest="kafka_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a librdkafka consumer setting, e.g. -X session.timeout.ms=6000 (repeatable)",
    )
    s.add_argument("--idle-exit-s", type=float, help="exit 0 when no alert arrived for this long")
    s.set_defaults(run=run)


def kafka_options(items: list[str]) -> dict[str, str]:
    """``-X KEY=VALUE`` items → a settings dict."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"-X {item!r}: give KEY=VALUE, e.g. -X session.timeout.ms=6000")
        out[key.strip()] = value.strip()
    return out


def run(args: argparse.Namespace, config: Config) -> int:
    """Carry out ``minibroker serve``; returns the exit code (0 after a SIGTERM drain)."""
    from engine.service.serve import ServeSettings, parse_shard, serve
    from engine.sources.kafka import KafkaSettings

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    settings = ServeSettings(
        kafka=KafkaSettings(
            args.bootstrap,
            args.topic,
            args.group,
            linger_s=args.linger_s,
            max_alerts=args.max_alerts,
            quiet_s=args.quiet_s,
            extra=kafka_options(args.kafka_options),
        ),
        filters=args.filters,
        owner=args.owner,
        drain_timeout_s=args.drain_timeout_s,
        shard=parse_shard(args.shard) if args.shard else None,
        metrics_port=args.metrics_port,
    )
    return serve(settings, config, connect_redis(config.redis_url), idle_exit_s=args.idle_exit_s)
