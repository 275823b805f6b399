"""Cost of isolation as users grow: 10, 100 and 1,000 users of one typical filter each over one
10,000-alert visit, in the engine process (:class:`sandbox.InProcessRunner`, the baseline, same
run) and in the worker pool (:class:`sandbox.pool.WorkerPool`, 2 workers at a time, one
long-lived worker per user, all kept between visits), as ms per visit and the ratio.

Workload: the benchmark visit shared by every file here (``conftest.py``:
:func:`engine.local.bench.bench_block`, one simulated v11.1 visit of 10,000 alerts, seed 7), decoded
to the columns the filters can read plus the delivery columns, as the engine hands it over;
each user's worker receives only its own user's columns. The filters are
:func:`engine.local.bench.typical_filters` (cuts, flags, photometry, sky regions and lightcurve
reductions with varied thresholds), one per user.

Figures per row (:func:`engine.local.bench.scaling`): **start** forks, hardens and compiles every
user's worker (what the service does before its first visit), **first** is the first visit
after that, **steady** the median of later visits; **in-process** the same filters' median in
the engine process. Every worker runs under its own uid in its own PID and IPC namespaces with
the seccomp allow-list (the engine runs as root here).

Run: ``python -m pytest benchmarks/bench_isolation.py --benchmark-enable -s`` (or
``python benchmarks/bench_isolation.py``); about a minute on 2 cores, most of it the 1,000-user
row, then the start from 1,000 users' filter files (compile included). ``minibroker bench --json`` reports the 1,000-user row as ``inprocess_1000_filters_ms``,
``pool_1000_users_ms`` (steady), ``pool_1000_users_first_ms`` and ``pool_1000_users_start_ms``.
"""

from __future__ import annotations

import os

import pytest

from engine.local.bench import scaling

USERS = (10, 100, 1000)


def measure(block, schema, rounds: int = 5) -> dict[int, dict[str, float]]:  # type: ignore[no-untyped-def]
    """The figures of :func:`engine.local.bench.scaling` for each number of users, in one run."""
    return {users: scaling(block, schema, users, rounds) for users in USERS}


def start_from_files(schema, users: int = 1000) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Seconds to start the service's evaluation from ``users`` users' filter files (one
    typical filter each): compile them all (:func:`engine.registry.discover`, throwaway
    processes) and start and warm every worker; the first part alone too."""
    import tempfile
    import time
    from pathlib import Path

    from engine.alerts.schema import project_schema
    from engine.evaluate import columns_needed
    from engine.local.bench import typical_filters
    from engine.registry import discover
    from sandbox.pool import WorkerPool

    with tempfile.TemporaryDirectory() as tmp:
        for key, compiled in typical_filters(users, users):
            owner, name = key.split("/")
            (Path(tmp) / owner).mkdir()
            (Path(tmp) / owner / f"{name}.py").write_text(compiled.source)
        t0 = time.perf_counter()
        found = discover(tmp)
        compiled_s = time.perf_counter() - t0
        assert len(found.active) == users, found.rejected
        pool = WorkerPool(
            [(f.key, f.compiled) for f in found.active], budget_s=2.0, max_idle_workers=users
        )
        try:
            pool.warm(project_schema(schema.arrow, columns_needed(found.active, schema)))
            return compiled_s, time.perf_counter() - t0
        finally:
            pool.close()


def report(rows: dict[int, dict[str, float]], count: int) -> list[str]:
    """The table: ms per visit in-process and in the pool, and their ratio (lower is better)."""
    lines = [
        f"one typical filter per user, {count} alerts per visit, {len(os.sched_getaffinity(0))} cores",
        f"{'users':>6s} {'in-process':>11s} {'pool steady':>12s} {'x in-process':>13s} "
        f"{'pool first':>11s} {'pool start':>11s}",
    ]
    for users, f in rows.items():
        base, steady = f[f"inprocess_{users}_filters_ms"], f[f"pool_{users}_users_ms"]
        lines.append(
            f"{users:6d} {base:9.1f}ms {steady:10.1f}ms {steady / base:13.1f} "
            f"{f[f'pool_{users}_users_first_ms']:9.1f}ms {f[f'pool_{users}_users_start_ms']:9.1f}ms"
        )
    return lines


def test_isolation_scaling(benchmark, bench_visit, schema, peak_memory, summaries) -> None:  # type: ignore[no-untyped-def]
    """Print the table (only with ``--benchmark-enable``: it takes about a minute)."""
    if benchmark.disabled:
        pytest.skip("run with --benchmark-enable")
    rows = benchmark.pedantic(measure, args=(bench_visit, schema), rounds=1, iterations=1)
    compiled_s, started_s = start_from_files(schema)
    lines = report(rows, bench_visit.count) + [
        f"start from 1000 users' filter files: {started_s:.1f} s (compiling them: {compiled_s:.1f} s)",
        peak_memory(),
    ]
    print("\nisolation\n" + "\n".join(lines))
    summaries.append(("isolation (bench_isolation.py)", lines))


if __name__ == "__main__":
    from engine.alerts.schema import load_schema
    from engine.config import load_config
    from engine.local.bench import bench_block

    block = bench_block(load_config(env={}), progress=True)
    alert_schema = load_schema("11.1")
    print("\n".join(report(measure(block, alert_schema), block.count)))
    compiled_s, started_s = start_from_files(alert_schema)
    print(
        f"start from 1000 users' filter files: {started_s:.1f} s (compiling them: {compiled_s:.1f} s)"
    )
