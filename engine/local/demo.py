"""``minibroker demo``: the whole service on embedded defaults, in one command.

Starts a private Redis-compatible server unless ``REDIS_URL`` is set, generates a sample night,
loads the sample filters, runs every visit through the pipeline while a subscriber prints what
arrives on the demo user's stream, then stops everything it started.
"""

from __future__ import annotations

import json
import tempfile
import threading
from contextlib import ExitStack
from pathlib import Path

from engine.config import Config
from engine.local.redis_server import PrivateRedis
from engine.progress import Progress
from engine.registry import discover
from engine.service.pipeline import run_night
from engine.sinks.streams import Publisher, stream_key
from engine.sources.night import night_info

__all__ = ["bundled_filters", "run_demo"]

DEMO_USER = "demo"


def bundled_filters() -> Path:
    """The sample filters shipped with minibroker (the repo's ``sample_filters/``)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "sample_filters", here / "sample_filters"):
        if candidate.is_dir():
            return candidate
    from importlib.resources import files

    return Path(str(files("engine") / "sample_filters"))


def run_demo(config: Config, *, visits: int = 10, alerts_per_visit: int = 1000,
             filters: Path | None = None, isolation: str | None = None, show: int = 12) -> int:
    """Run the demo; returns the exit code."""
    import dataclasses

    import redis

    from engine.formats.json import render_json
    from engine.local.simulate import simulate_night
    from engine.subscribe import follow

    if isolation:
        config = dataclasses.replace(config, isolation=isolation)
    with ExitStack() as stack:
        url = config.redis_url
        if url is None:
            server = stack.enter_context(PrivateRedis())
            url = server.url
            print(f"started a private Redis-compatible server at {url} (stopped on exit)")
        client = redis.Redis.from_url(url)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="minibroker-demo-")))
        night = tmp / "night.avro"
        print(f"generating a sample night: {visits} visits x {alerts_per_visit} alerts")
        simulate_night(night, visits=visits, alerts_per_visit=alerts_per_visit, seed=0, progress=True)
        fs = discover(filters or bundled_filters(), owner=DEMO_USER)
        for key, rejection in fs.rejected.items():
            print(f"left out {key}: {rejection}")
        print(f"loaded {len(fs.active)} filters: {', '.join(f.compiled.name for f in fs.active)}")

        schema, visit_ids = night_info(night)
        bar = Progress(len(visit_ids or []) or None)
        received = 0
        shown: set[bytes] = set()
        stop = threading.Event()
        print(f"\na subscriber follows stream {stream_key(DEMO_USER)} (each filter's first match shown as it arrives):")
        print(f"  {'visit':>13}  {'filter':<26} {'diaSourceId':>18} {'band':>4} {'ra':>9} {'dec':>9} {'snr':>7}")

        def subscriber() -> None:
            # What `minibroker subscribe --user demo` does in another terminal.
            nonlocal received
            sub = redis.Redis.from_url(url)
            last = "0"
            while True:
                idle = True
                for entry_id, fields in follow(sub, DEMO_USER, since=last, block_ms=200, stop_when_idle=True):
                    idle, last = False, entry_id
                    received += 1
                    name = fields.get(b"filter")
                    if len(shown) < show and name not in shown and fields.get(b"kind") == b"match":
                        shown.add(name)
                        e = json.loads(render_json(entry_id, fields))
                        bar.clear()
                        print(f"  {e['visit']:>13}  {e['filter']:<26} {e['diaSourceId']:>18} {e['band'] or '':>4} "
                              f"{e['ra']:>9.4f} {e['dec']:>9.4f} {e['snr']:>7.1f}", flush=True)
                if idle and stop.is_set():
                    return

        thread = threading.Thread(target=subscriber, daemon=True)
        thread.start()
        report = run_night(night, fs.active, config, Publisher(client, config), progress=bar)
        stop.set()
        thread.join()
        print(f"\n{report.alerts} alerts processed, {report.published} entries published to "
              f"stream {stream_key(DEMO_USER)}")
        per_filter: dict[str, int] = {}
        for v in report.visits:
            for key, n in v.passed.items():
                per_filter[key] = per_filter.get(key, 0) + n
        for key, n in sorted(per_filter.items()):
            print(f"  {key:<40} {n:>6} matches")
        print(f"the subscriber received all {received} entries")
        mean_ms = 1000 * sum(v.total_s for v in report.visits) / max(1, len(report.visits))
        print(f"\nmean time per visit (decode + evaluate + publish): {mean_ms:.0f} ms")
        print(f"to follow a stream yourself: REDIS_URL={url} minibroker subscribe --user {DEMO_USER} --since 0")
    return 0
