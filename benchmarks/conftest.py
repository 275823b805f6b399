"""Shared fixtures: every benchmark file measures the same alerts.

The benchmark visit is :func:`engine.local.bench.bench_block` with the default configuration (one
simulated v11.1 visit of 10,000 alerts, seed 7, generated once into
``~/.cache/minibroker/nights`` and then read from there), the very visit ``minibroker bench``
measures. The 100 filters are :func:`engine.local.bench.typical_filters`. The projection is the
columns those filters can read plus the delivery columns (:func:`engine.evaluate.columns_needed`),
as the engine decodes it in service.

Each file prints its own summary (with ``-s``) and also hands it to :func:`summaries`; the
terminal summary at the end of the run repeats them all, so a whole run's figures sit together.

Peak memory: ``resource.getrusage`` ``ru_maxrss`` of this process, and of its children (the
largest child the process has waited for). The process peak is reset to the current RSS at the
start of each file (``/proc/self/clear_refs``, Linux), so it is that file's own peak, shared
fixtures included. The children's figure cannot be reset, covers the whole run so far, and
overstates: Linux gives a child that execs (``subprocess``: gcc, the pool's zygote) the
parent's RSS at the time of the spawn as its peak, and a forked child counts the pages it shares
with its parent. For the pool, :func:`descendants_memory` reads the live workers' own figures
from ``/proc`` instead (peak RSS of the largest, and their total PSS, which splits shared pages
between the processes that share them).
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.alerts.schema import AlertSchema, load_schema
from engine.config import Config, load_config
from engine.decode import VisitBatch, decode_block
from engine.evaluate import columns_needed
from engine.local.bench import bench_block, typical_filters
from engine.registry import ActiveFilter
from engine.sources.night import NightBlock
from sandbox.compile import CompiledFilter

_SUMMARIES: list[tuple[str, list[str]]] = []
_PEAK_RESET = {"ok": False}


@pytest.fixture(scope="session")
def bench_config() -> Config:
    """The default configuration (no environment, no file): where the visit is cached."""
    return load_config(env={})


@pytest.fixture(scope="session")
def schema() -> AlertSchema:
    """Schema v11.1, the benchmark visit's."""
    return load_schema("11.1")


@pytest.fixture(scope="session")
def bench_visit(bench_config: Config) -> NightBlock:
    """The benchmark visit's raw block: 10,000 alerts back to back, as received."""
    return bench_block(bench_config, progress=True)


@pytest.fixture(scope="session")
def typical() -> list[tuple[str, CompiledFilter]]:
    """The 100 typical filters, one user each, as ``(user/name, CompiledFilter)`` pairs."""
    return typical_filters(100)


@pytest.fixture(scope="session")
def typical_active(typical: list[tuple[str, CompiledFilter]]) -> list[ActiveFilter]:
    """The same 100 filters as the engine holds them."""
    return [ActiveFilter(key.split("/")[0], compiled) for key, compiled in typical]


@pytest.fixture(scope="session")
def projected_columns(typical_active: list[ActiveFilter], schema: AlertSchema) -> set[str] | None:
    """Columns the 100 filters can read, plus the delivery columns."""
    return columns_needed(typical_active, schema)


@pytest.fixture(scope="session")
def visit_projected(
    bench_visit: NightBlock, schema: AlertSchema, projected_columns: set[str] | None
) -> VisitBatch:
    """The benchmark visit decoded to the filters' columns (what the engine evaluates)."""
    return decode_block(bench_visit, schema, projected_columns)


@pytest.fixture(scope="session")
def visit_full(bench_visit: NightBlock, schema: AlertSchema) -> VisitBatch:
    """The benchmark visit with every column (lightcurves and cutouts)."""
    return decode_block(bench_visit, schema)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the RSS high-water mark to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


@pytest.fixture(scope="module", autouse=True)
def _file_peak() -> Iterator[None]:
    """Start each benchmark file with the process's peak RSS at its current RSS."""
    _PEAK_RESET["ok"] = _reset_peak()
    yield


def peak_memory_line() -> str:
    """This process's and its children's peak RSS, in MB, as one line."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    scope = "this file" if _PEAK_RESET["ok"] else "the run so far"
    return (
        f"peak RSS: engine process {own:.0f} MB ({scope}); children, getrusage: {children:.0f} MB "
        "(the run so far; overstated, see benchmarks/README.md)"
    )


def descendants_memory() -> str:
    """The live descendants of this process (the pool's zygote and workers), as one line:
    how many, the largest peak RSS (``VmHWM``) and their total PSS."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    parent[int(entry)] = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # it exited meanwhile
    mine, frontier = [], [os.getpid()]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, pp in parent.items() if pp == pid]
        mine += kids
        frontier += kids
    hwm = pss = 0
    for pid in mine:
        try:
            with open(f"/proc/{pid}/status") as f:
                hwm = max([hwm] + [int(x.split()[1]) for x in f if x.startswith("VmHWM:")])
            with open(f"/proc/{pid}/smaps_rollup") as f:
                pss += sum(int(x.split()[1]) for x in f if x.startswith("Pss:"))
        except (OSError, ValueError):
            continue
    return (
        f"{len(mine)} live child processes (zygote + workers): largest peak RSS "
        f"{hwm / 1024:.0f} MB, total PSS {pss / 1024:.0f} MB"
    )


@pytest.fixture(scope="session")
def pool_memory() -> Callable[[], str]:
    """:func:`descendants_memory`, for the files that run the worker pool."""
    return descendants_memory


@pytest.fixture(scope="session")
def peak_memory() -> Callable[[], str]:
    """:func:`peak_memory_line`, for the files' summaries."""
    return peak_memory_line


@pytest.fixture(scope="session")
def summaries() -> list[tuple[str, list[str]]]:
    """Where each file's summary goes (title, lines) to be repeated at the end of the run."""
    return _SUMMARIES


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    """Collect ``bench_*.py`` when pytest is given the directory (its ``python_files`` default
    only matches ``test_*.py``); a file named on the command line is collected by pytest itself."""
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and not parent.session.isinitpath(file_path)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the benchmarks, saying how to run them, when pytest-benchmark is disabled (the
    project's default addopts): their summaries need timings."""
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.disabled:
        return
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason="benchmarks are off by default; run with --benchmark-enable -s")
    for item in items:
        if here in item.path.parents:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _SUMMARIES:
        return
    terminalreporter.section("minibroker benchmark figures (this run, same alerts)")
    for title, lines in _SUMMARIES:
        terminalreporter.write_line(title)
        for line in lines:
            terminalreporter.write_line("  " + line)
