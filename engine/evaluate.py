"""Evaluate: one visit batch and the active filters → one boolean mask per filter.

The engine never runs user code itself: it hands the batch to a sandbox runner (the worker pool
in service, in-process for ``minibroker test``) and receives validated masks back. This module
also works out which columns the active filters can read, so decoding can skip the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from engine.alerts.fields import HEADLINE_FIELDS
from engine.alerts.schema import AlertSchema
from engine.config import Config
from engine.registry import ActiveFilter
from sandbox import InProcessRunner, Outcome, Shares
from sandbox.pool import WorkerPool

__all__ = ["DELIVERY_COLUMNS", "Evaluator", "columns_needed"]

# Decoded whatever the filters read: the visit id and what every stream entry carries.
DELIVERY_COLUMNS = frozenset(
    {"diaSourceId", "diaSource.visit", *(f"diaSource.{name}" for name in HEADLINE_FIELDS)}
)


def columns_needed(filters: Sequence[ActiveFilter], schema: AlertSchema) -> set[str] | None:
    """Dotted column paths the filters can read plus the delivery columns; None means all."""
    from engine.alerts.schema import leaf_paths

    paths = frozenset(leaf_paths(schema.arrow))
    needed = {p for p in DELIVERY_COLUMNS if p in paths or p in schema.arrow.names}
    for f in filters:
        reads = f.compiled.reads(paths)
        if reads is None:
            return None
        needed |= reads
    return needed


class Evaluator:
    """Runs the active filters over each visit through a sandbox runner chosen by ``config``."""

    def __init__(self, filters: Sequence[ActiveFilter], config: Config):
        self.filters = list(filters)
        pairs = [(f.key, f.compiled) for f in self.filters]
        # A user's share always fits at least one filter's whole budget.
        shares = Shares(
            max_filters=config.max_filters_per_user,
            budget_s=max(config.user_budget_s, config.budget_s),
        )
        self.runner: WorkerPool | InProcessRunner
        if config.isolation == "pool":
            self.runner = WorkerPool(
                pairs,
                budget_s=config.budget_s,
                workers=config.workers,
                shared_workers=config.shared_workers,
                max_idle_workers=config.idle_workers,
                shares=shares,
                max_faults=config.suspend_after_faults,
                fault_window=config.suspend_window,
                max_idle_rss_mb=config.idle_worker_rss_mb,
            )
        else:
            self.runner = InProcessRunner(pairs, shares=shares)

    def warm(self, schema: pa.Schema) -> None:
        """Start the workers and compile the filters before the first visit (batches of
        ``schema``); nothing to do in-process."""
        if isinstance(self.runner, WorkerPool):
            self.runner.warm(schema)

    def evaluate(self, batch: pa.RecordBatch) -> list[Outcome]:
        """One outcome per active filter, in order; faults are outcomes, not exceptions."""
        return self.runner.run(batch)

    def close(self) -> None:
        """Stop worker processes, if any."""
        self.runner.close()

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
