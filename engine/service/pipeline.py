"""Orchestration: source → decode → evaluate → publish, one visit at a time."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from engine.alerts.schema import AlertSchema, project_schema
from engine.config import Config
from engine.decode import VisitBatch, decode_block
from engine.errors import DecodeError
from engine.evaluate import Evaluator, columns_needed
from engine.progress import Progress
from engine.registry import ActiveFilter
from engine.sinks.streams import Publisher, PublishReport
from engine.sources.night import NightBlock, open_night
from sandbox import Outcome

__all__ = ["NightReport", "VisitReport", "run_night", "run_visit", "run_visits"]


@dataclass(frozen=True)
class VisitReport:
    """Timings (seconds) and results of one visit."""

    visit: int
    alerts: int
    decode_s: float
    evaluate_s: float
    publish_s: float
    passed: dict[str, int]
    faults: dict[str, str]
    published: int
    capped: dict[str, int] = field(default_factory=dict)  # matches withheld by the cap, per filter

    @property
    def total_s(self) -> float:
        """Decode + evaluate + publish."""
        return self.decode_s + self.evaluate_s + self.publish_s

    def summary(self) -> str:
        """One line for progress output."""
        return (
            f"visit {self.visit}: {self.alerts} alerts, {sum(self.passed.values())} passed, "
            f"{self.total_s * 1000:.0f} ms"
        )


@dataclass
class NightReport:
    """Every visit's report, in order, and the visits that could not be decoded."""

    visits: list[VisitReport] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)

    @property
    def alerts(self) -> int:
        """Alerts processed."""
        return sum(v.alerts for v in self.visits)

    @property
    def published(self) -> int:
        """Entries written to streams."""
        return sum(v.published for v in self.visits)

    def capped(self) -> dict[str, int]:
        """Per filter key, the matches the per-visit cap withheld over the night."""
        out: dict[str, int] = {}
        for v in self.visits:
            for key, n in v.capped.items():
                out[key] = out.get(key, 0) + n
        return out


def run_visit(
    decode: Callable[[], VisitBatch],
    filters: list[ActiveFilter],
    evaluator: Evaluator,
    publisher: Publisher | None,
) -> tuple[VisitReport, VisitBatch, list[Outcome]]:
    """The per-visit step every source shares: ``decode()`` → evaluate → publish, timed.

    ``publisher=None`` evaluates without publishing. A DecodeError from ``decode`` propagates.
    """
    t0 = time.perf_counter()
    visit = decode()
    t1 = time.perf_counter()
    outcomes = evaluator.evaluate(visit.batch)
    t2 = time.perf_counter()
    published = publisher.publish(visit, filters, outcomes) if publisher else PublishReport()
    t3 = time.perf_counter()
    vr = VisitReport(
        visit=visit.visit,
        alerts=len(visit),
        decode_s=t1 - t0,
        evaluate_s=t2 - t1,
        publish_s=t3 - t2,
        passed={o.key: o.passed for o in outcomes},
        faults={o.key: str(o.fault) for o in outcomes if o.fault is not None},
        published=published.total,
        capped=dict(published.capped),
    )
    return vr, visit, outcomes


def run_visits(
    blocks: Iterable[NightBlock],
    schema: AlertSchema,
    filters: list[ActiveFilter],
    evaluator: Evaluator,
    publisher: Publisher | None,
    *,
    on_visit: Callable[[VisitReport, VisitBatch, list[Outcome]], None] | None = None,
) -> NightReport:
    """Run every visit through the pipeline; ``publisher=None`` evaluates without publishing.

    A visit whose data is corrupt is skipped and named in ``report.skipped`` (the datums of a
    block lie back to back, so nothing after a corrupt one can be trusted); the night goes on.
    """
    columns = columns_needed(filters, schema)
    evaluator.warm(project_schema(schema.arrow, columns))  # workers ready before the first visit
    report = NightReport()
    for block in blocks:

        def decode(b: NightBlock = block) -> VisitBatch:
            return decode_block(b, schema, columns)

        try:
            vr, visit, outcomes = run_visit(decode, filters, evaluator, publisher)
        except DecodeError as exc:
            report.skipped[block.visit] = str(exc)
            continue
        report.visits.append(vr)
        if on_visit is not None:
            on_visit(vr, visit, outcomes)
    return report


def run_night(
    night: str | os.PathLike[str],
    filters: list[ActiveFilter],
    config: Config,
    publisher: Publisher | None,
    *,
    progress: bool | Progress = True,
    on_visit: Callable[[VisitReport, VisitBatch, list[Outcome]], None] | None = None,
) -> NightReport:
    """Run a night (any form :func:`engine.sources.open_night` reads) through the pipeline with
    the runner ``config`` chooses, showing progress per visit (pass a :class:`Progress` to
    share its line with other output); ``on_visit`` sees each visit after it is published."""
    opened = open_night(night)
    bar = (
        progress
        if isinstance(progress, Progress)
        else Progress(len(opened.visits) or None, enabled=progress)
    )
    done = 0

    def each(vr: VisitReport, visit: VisitBatch, outcomes: list[Outcome]) -> None:
        nonlocal done
        done += 1
        bar.update(done, vr.summary())
        if on_visit is not None:
            on_visit(vr, visit, outcomes)

    try:
        with Evaluator(filters, config) as evaluator:
            return run_visits(
                opened.blocks(), opened.schema, filters, evaluator, publisher, on_visit=each
            )
    finally:
        bar.close()
