"""``minibroker test``: run one filter over a sample night on a laptop, no servers needed.

The same pipeline as the service (:func:`engine.service.pipeline.run_visits`), without publishing.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np

from engine.config import Config
from engine.decode import VisitBatch
from engine.registry import ActiveFilter
from engine.service.pipeline import NightReport, VisitReport, run_night
from sandbox import CompiledFilter, Outcome, load_filter

__all__ = ["TestResult", "VisitObserver", "default_night", "distinct_faults", "test_filter"]


class VisitObserver(Protocol):
    """Something that looks at every decoded visit of a test run (the report's
    :class:`engine.local.report.NullCounts`); the report imports this module, not the reverse."""

    def observe(self, visit: VisitBatch, compiled: CompiledFilter) -> None:
        """Look at one decoded visit."""


DEFAULT_NIGHT: dict[str, Any] = {"visits": 10, "alerts_per_visit": 1000, "seed": 0}


def default_night(config: Config, *, progress: bool = True) -> Path:
    """The cached default sample night, generated on first use."""
    from engine.local.simulate import simulate_night

    path = config.cache_dir / "nights" / "default-v11.1-10x1000-seed0.avro"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        if progress:
            print(f"generating the default sample night into {path} (once)", file=sys.stderr)
        simulate_night(path, progress=progress, **DEFAULT_NIGHT)
    return path


@dataclass
class TestResult:
    """A filter's run over a night.

    Attributes
    ----------
    filter : CompiledFilter
        The filter that ran.
    report : NightReport
        Per-visit counts, timings and faults.
    matches : list of dict
        Headline fields of the first matches (at most ``show``).
    packets : list of bytes
        The full alerts of those matches (Confluent-framed), in the same order.
    positions : list of (ra, dec)
        Where every match lies (for a sky map; at most ``MAX_POSITIONS``).
    nulls : VisitObserver or None
        How often the columns the filter reads are null, when ``test_filter(report=...)``
        collected it (for :func:`engine.local.report.write_report`).
    """

    filter: CompiledFilter
    report: NightReport
    matches: list[dict[str, object]] = field(default_factory=list)
    packets: list[bytes] = field(default_factory=list)
    positions: list[tuple[float, float]] = field(default_factory=list)
    nulls: VisitObserver | None = None


MAX_POSITIONS = 20_000


_SHOWN = ("diaSourceId", "visit", "band", "ra", "dec", "snr", "reliability")


def test_filter(
    filter_path: str | Path,
    night: str | Path,
    config: Config,
    *,
    out: TextIO | None = None,
    progress: bool = True,
    show: int = 10,
    report: VisitObserver | None = None,
) -> TestResult:
    """Run one filter over a night and print per-visit counts, totals and the first matches.

    ``report`` (an :class:`engine.local.report.NullCounts`) counts, on every decoded visit, how often
    the columns the filter reads are null; it is returned as ``result.nulls``.

    Raises :class:`sandbox.FilterRejected` (with every problem) if the file breaks the policy.
    """
    out = out or sys.stdout
    compiled = load_filter(filter_path)
    active = [ActiveFilter("you", compiled)]
    result = TestResult(compiled, NightReport(), nulls=report)

    def on_visit(vr: VisitReport, visit: VisitBatch, outcomes: list[Outcome]) -> None:
        if report is not None:  # before the fault check: a faulty visit's nulls count too
            report.observe(visit, compiled)
        mask = outcomes[0].mask
        if mask is None:
            return
        rows = np.flatnonzero(mask)
        ds = visit.batch.column("diaSource")
        room = MAX_POSITIONS - len(result.positions)
        if room > 0 and len(rows):
            picked = visit.batch.take(rows[:room]).column("diaSource")
            result.positions.extend(
                zip(picked.field("ra").to_pylist(), picked.field("dec").to_pylist(), strict=True)
            )
        for row in rows[: max(0, show - len(result.matches))].tolist():
            entry = {
                "diaSourceId": visit.batch.column("diaSourceId")[row].as_py(),
                "visit": vr.visit,
            }
            for name in _SHOWN[2:]:
                entry[name] = ds.field(name)[row].as_py()
            result.matches.append(entry)
            result.packets.append(visit.wire(row))

    result.report = run_night(night, active, config, None, progress=progress, on_visit=on_visit)
    _print_report(compiled.name, result, out, config.max_matches_per_visit)
    return result


def distinct_faults(report: NightReport) -> dict[str, list[int]]:
    """Each distinct fault message of a night, with the visits it hit, in order of first hit."""
    faults: dict[str, list[int]] = {}
    for v in report.visits:
        for message in v.faults.values():
            faults.setdefault(message, []).append(v.visit)
    return faults


def _visits(ids: list[int], limit: int = 5) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _print_report(name: str, result: TestResult, out: TextIO, cap: int) -> None:
    rep = result.report
    faults = distinct_faults(rep)
    number = {message: i for i, message in enumerate(faults, 1)}
    print(f"filter {name}: {rep.alerts} alerts in {len(rep.visits)} visits", file=out)
    print(f"{'visit':>15} {'alerts':>7} {'passed':>7} {'eval ms':>8}", file=out)
    for v in rep.visits:
        passed = sum(v.passed.values())
        fault = "".join(f"  FAULT [{number[m]}]" for m in v.faults.values())
        print(
            f"{v.visit:>15} {v.alerts:>7} {passed:>7} {v.evaluate_s * 1000:>8.1f}{fault}", file=out
        )
    for visit, why in rep.skipped.items():
        print(f"{visit:>15}  SKIPPED: {why}", file=out)
    total = sum(sum(v.passed.values()) for v in rep.visits)
    eval_ms = sum(v.evaluate_s for v in rep.visits) * 1000
    frac = f" ({100 * total / rep.alerts:.2f}%)" if rep.alerts else ""
    print(
        f"total: {total} of {rep.alerts} alerts passed{frac}; evaluation {eval_ms:.1f} ms", file=out
    )
    over = [
        (v.visit, sum(v.passed.values()) - cap) for v in rep.visits if sum(v.passed.values()) > cap
    ]
    if over:
        print(
            f"cap: the service would withhold {sum(n for _, n in over)} of these matches, over its cap of "
            f"{cap} per filter per visit, in {len(over)} visit(s) ({_visits([v for v, _ in over])}); "
            "tighten the cuts",
            file=out,
        )
    for message, hit in faults.items():
        print(
            f"FAULT [{number[message]}] in {len(hit)} of {len(rep.visits)} visits ({_visits(hit)}): {message}",
            file=out,
        )
    if result.matches:
        print(f"\nfirst {len(result.matches)} matches:", file=out)
        print("  ".join(f"{c:>19}" if c == "diaSourceId" else f"{c:>14}" for c in _SHOWN), file=out)
        for m in result.matches:
            cells = []
            for c in _SHOWN:
                value = m.get(c)
                text = f"{value:.5f}" if isinstance(value, float) else str(value)
                cells.append(f"{text:>19}" if c == "diaSourceId" else f"{text:>14}")
            print("  ".join(cells), file=out)
