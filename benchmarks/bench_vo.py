"""VO output: rendering a delivered match as VOEvent 2.0, and pushing it over VTP to Comet.

Workload: the 64 real LSSTCam v11.1 packets (``/work/shared/data/alerts/lsstcam/v11_1``,
~60 KB each with cutouts) published by the real Publisher as one user's matches on a private
Redis server (:class:`engine.local.redis_server.PrivateRedis`). Rendering reads each stream entry as the
forwarder does: decode the packet, build the VOEvent. The baseline in the same run is
``subscribe``'s JSON line with the decoded alert (``render_json(full=True)``), which decodes
the same packet. The VTP figure forwards all 64 to a real Comet broker on loopback (the test
suite's :mod:`cometbroker`: schema and IVORN checks, previously-seen database, events saved to
disk), one connection per packet, as :mod:`engine.sinks.vtp` does.

Run: ``python -m pytest benchmarks/bench_vo.py --benchmark-enable -s``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import pytest
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from cometbroker import CometBroker  # noqa: E402
from matches import publish_packets  # noqa: E402

from engine.formats.json import render_json  # noqa: E402
from engine.formats.voevent import VOEventSettings, render_entry  # noqa: E402
from engine.local.redis_server import PrivateRedis  # noqa: E402
from engine.sinks import vtp  # noqa: E402

SHARED = Path("/work/shared/data/alerts/lsstcam/v11_1")
ROUNDS = 7
SETTINGS = VOEventSettings(authority="minibroker.bench")


def _per_entry(render, entries) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    for entry_id, fields in entries:
        render(entry_id, fields)
    return (time.perf_counter() - start) / len(entries)


def measure() -> list[str]:
    """The figures, as summary lines."""
    packets = [p.read_bytes() for p in sorted(SHARED.glob("*.avro"))]
    if not packets:
        pytest.skip(f"no real packets under {SHARED}")
    with PrivateRedis() as server, tempfile.TemporaryDirectory() as tmp:
        client = redis.Redis.from_url(server.url)
        entries = publish_packets(client, "bench", packets)
        headline = [(i, {k: v for k, v in f.items() if k != b"alert"}) for i, f in entries]

        def voevent(i, f):  # type: ignore[no-untyped-def]
            return render_entry(i, f, user="bench", settings=SETTINGS)

        sizes = [len(voevent(i, f)) for i, f in entries]
        timings = {
            "JSON line + decoded alert (baseline)": [
                _per_entry(lambda i, f: render_json(i, f, full=True), entries)
                for _ in range(ROUNDS)
            ],
            "VOEvent from the entry (decode + render)": [
                _per_entry(voevent, entries) for _ in range(ROUNDS)
            ],
            "VOEvent from headline fields only": [
                _per_entry(voevent, headline) for _ in range(ROUNDS)
            ],
        }
        with CometBroker(Path(tmp)) as comet:
            vtp.add_receiver(client, "bench", vtp.Receiver("127.0.0.1", comet.port), since="0")
            fw = vtp.Forwarder(
                client, "bench", vtp.Receiver("127.0.0.1", comet.port), SETTINGS, allow_private=True
            )
            start = time.perf_counter()
            while fw.step(block_ms=0):
                pass
            forward_s = time.perf_counter() - start
            assert len(comet.saved()) == len(entries)
    base = statistics.median(timings["JSON line + decoded alert (baseline)"])
    lines = [
        f"{len(entries)} real LSSTCam matches; packet size {min(sizes)}-{max(sizes)} bytes",
        f"{'':44s} {'ms/match':>9s} {'x baseline':>10s}",
    ]
    for name, runs in timings.items():
        med = statistics.median(runs)
        lines.append(f"{name:44s} {med * 1000:9.3f} {med / base:10.2f}")
    lines.append(
        f"VTP to Comet on loopback: {len(entries)} packets in {forward_s:.2f} s "
        f"({len(entries) / forward_s:.0f} packets/s, ack each)"
    )
    return lines


def test_vo_output(benchmark, summaries) -> None:  # type: ignore[no-untyped-def]
    """Print the VO output figures (only with ``--benchmark-enable``)."""
    if benchmark.disabled:
        pytest.skip("run with --benchmark-enable")
    lines = benchmark.pedantic(measure, rounds=1, iterations=1)
    print("\nVO output\n" + "\n".join(lines))
    summaries.append(("VO output (bench_vo.py)", lines))


if __name__ == "__main__":
    print("\n".join(measure()))
