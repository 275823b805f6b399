"""Publishing: time per visit and Redis memory per delivered match, before and after one stored
packet per alert, in one run.

Workload
--------
- ``typical``: the 100 typical filters' matches on the benchmark visit (10,000 alerts; the
  matches computed once, in-process), written to a private Redis
  (:class:`engine.local.redis_server.PrivateRedis`) flushed before each round;
- ``greedy``: ten ``return True`` filters (ten users) over four 1,000-alert visits cut from the
  benchmark visit, at the default cap (20 per filter per visit).

Rows, on the same outcomes and the same server:

- ``before``: the publisher as it was before caps and stored packets (commit 34e1fcc): one Lua
  call per match, each stream entry carrying its own copy of the packet (kept below, verbatim in
  substance, as the baseline);
- ``after``: :class:`engine.sinks.streams.Publisher`: packets stored once per alert with a TTL,
  one script per user per visit (caps, seen sets, withheld entries, visit markers), entries
  refer to the packet.

Memory is the server's ``used_memory`` after the round minus before it (the server is flushed
first), divided by the match entries delivered. Run on purpose::

    python -m pytest benchmarks/bench_publish.py --benchmark-enable -s
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence

import numpy as np
import pytest
import redis

from engine.decode import VisitBatch
from engine.evaluate import Evaluator
from engine.local.redis_server import PrivateRedis
from engine.registry import ActiveFilter
from engine.sinks.streams import Publisher
from sandbox import Outcome, compile_filter

ROWS: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module")
def client():  # type: ignore[no-untyped-def]
    """A client of a private Redis started for this file."""
    with PrivateRedis() as server:
        yield redis.Redis.from_url(server.url)


_ADD_ONCE = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return false end
redis.call('EXPIRE', KEYS[2], ARGV[3])
local args = {'XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*'}
for i = 4, #ARGV do args[#args + 1] = ARGV[i] end
return redis.call(unpack(args))
"""


class _PacketPerMatch:
    """The baseline: the publisher of commit 34e1fcc (first K rows, a packet in every entry)."""

    def __init__(self, client: redis.Redis, cap: int, maxlen: int):
        self.client, self.cap, self.maxlen = client, cap, maxlen
        self._add_once = client.register_script(_ADD_ONCE)

    def publish(
        self, visit: VisitBatch, filters: Sequence[ActiveFilter], outcomes: Sequence[Outcome]
    ) -> int:
        by_key = {f.key: f for f in filters}
        pipe = self.client.pipeline(transaction=False)
        heads = visit.batch.column("diaSource")
        ids = visit.batch.column("diaSourceId").to_pylist()
        n = 0
        for o in outcomes:
            f = by_key[o.key]
            keys = [
                f"minibroker:user:{f.user}:stream",
                f"minibroker:user:{f.user}:seen:{f.compiled.name}",
            ]
            assert o.mask is not None
            for row in np.flatnonzero(o.mask)[: self.cap].tolist():
                fields = [
                    b"kind",
                    b"match",
                    b"filter",
                    f.compiled.name.encode(),
                    b"filter_version",
                    f.compiled.version.encode(),
                    b"visit",
                    str(visit.visit).encode(),
                ]
                for name in (
                    "diaObjectId",
                    "ra",
                    "dec",
                    "band",
                    "midpointMjdTai",
                    "snr",
                    "reliability",
                ):
                    fields += [name.encode(), str(heads.field(name)[row].as_py()).encode()]
                fields += [b"alert", visit.wire(row)]
                self._add_once(
                    keys=keys,
                    args=[
                        f"alert:{ids[row]}".encode(),
                        str(self.maxlen).encode(),
                        b"1209600",
                        *fields,
                    ],
                    client=pipe,
                )
                n += 1
        pipe.execute()
        return n


def _used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def _measure(benchmark, client, row: str, publish, work) -> None:  # type: ignore[no-untyped-def]
    """Time ``publish`` over ``work`` (flushed before each round) and the memory it leaves."""
    delivered: list[int] = []

    def flush() -> None:
        client.flushdb()

    def one() -> None:
        delivered.append(sum(publish(v, f, o) for v, f, o in work))

    benchmark.pedantic(one, setup=flush, rounds=5, iterations=1, warmup_rounds=1)
    client.execute_command("FLUSHDB", "SYNC")  # freed now, not in the background, before measuring
    before = _used(client)
    one()
    after = _used(client)
    client.flushdb()
    ROWS[row] = {
        "ms": statistics.median(benchmark.stats.stats.data) * 1e3,
        "matches": delivered[-1],
        "mb": (after - before) / 1e6,
        "kb_per_match": (after - before) / 1e3 / max(1, delivered[-1]),
    }


@pytest.fixture(scope="module")
def typical_work(bench_config, visit_projected, typical_active):  # type: ignore[no-untyped-def]
    """The 100 typical filters' outcomes on the 10,000-alert visit."""
    config = dataclasses.replace(bench_config, isolation="inprocess")
    with Evaluator(typical_active, config) as ev:
        outcomes = ev.evaluate(visit_projected.batch)
    return [(visit_projected, typical_active, outcomes)]


@pytest.fixture(scope="module")
def greedy_work(visit_projected):  # type: ignore[no-untyped-def]
    """Ten `return True` filters over four 1,000-alert visits."""
    filters = [
        ActiveFilter(
            f"greedy{i}",
            compile_filter('"""Everything."""\ndef filter(alerts):\n    return True\n', "all.py"),
        )
        for i in range(10)
    ]
    work = []
    for k in range(4):
        a = k * 1000
        v = VisitBatch(
            visit_projected.visit + k,
            visit_projected.schema,
            visit_projected.batch.slice(a, 1000),
            visit_projected.raw[a : a + 1000],
        )
        work.append((v, filters, [Outcome(f.key, np.ones(1000, bool), 0.0) for f in filters]))
    return work


@pytest.mark.parametrize("which", ["typical", "greedy"])
def test_before(benchmark, bench_config, client, request, which: str) -> None:  # type: ignore[no-untyped-def]
    """The baseline publisher: a packet copy in every entry, a Lua call per match."""
    work = request.getfixturevalue(f"{which}_work")
    old = _PacketPerMatch(client, bench_config.max_matches_per_visit, bench_config.stream_maxlen)
    _measure(benchmark, client, f"{which}, before", old.publish, work)


@pytest.mark.parametrize("which", ["typical", "greedy"])
def test_after(benchmark, bench_config, client, request, which: str) -> None:  # type: ignore[no-untyped-def]
    """Our publisher: one stored packet per alert, one script per user per visit."""
    work = request.getfixturevalue(f"{which}_work")
    new = Publisher(client, bench_config)
    _measure(benchmark, client, f"{which}, after", lambda v, f, o: new.publish(v, f, o).total, work)


def test_summary(summaries) -> None:  # type: ignore[no-untyped-def]
    """Prints the figures of this run (needs the tests above in the same run)."""
    if len(ROWS) < 4:
        pytest.skip("run the whole file: the summary compares figures of the same run")
    lines = [f"{'':18s} {'ms':>8s} {'matches':>8s} {'Redis MB':>9s} {'KB/match':>9s}"]
    for row, r in ROWS.items():
        lines.append(
            f"{row:18s} {r['ms']:8.1f} {r['matches']:8d} {r['mb']:9.1f} {r['kb_per_match']:9.1f}"
        )
    for which in ("typical", "greedy"):
        b, a = ROWS[f"{which}, before"], ROWS[f"{which}, after"]
        lines.append(
            f"{which}: memory per match {b['kb_per_match'] / a['kb_per_match']:.1f}x smaller, "
            f"publish {b['ms'] / a['ms']:.1f}x as fast"
        )
    print("\n" + "\n".join(lines))
    summaries.append(("publish (bench_publish.py)", lines))
