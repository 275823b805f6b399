"""Fair shares: what one user's filters may take of a visit, so one user cannot slow everyone.

Two limits per user and visit, both configuration (``engine.config``): how many active filters
run (``max_filters``; the rest, in the order given, do not run) and how much evaluation time
their filters take together (``budget_s``; once used up, the user's remaining filters do not
run). A filter that does not run gets an ``over-share`` fault that says why; other users never
notice, and the fault does not count towards suspension.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sandbox.errors import FaultReason, FilterFault
from sandbox.keys import FilterKey

__all__ = ["Shares"]


@dataclass(frozen=True)
class Shares:
    """Per-user limits per visit; None means unlimited."""

    max_filters: int | None = None
    budget_s: float | None = None

    def admit(self, keys: Iterable[str]) -> tuple[dict[str, list[int]], dict[int, str]]:
        """Positions of the filters that may run, per owner, in order; and the positions over
        the count (position → owner)."""
        runs: dict[str, list[int]] = {}
        over: dict[int, str] = {}
        for i, key in enumerate(keys):
            who = FilterKey.parse(key).owner
            mine = runs.setdefault(who, [])
            if self.max_filters is not None and len(mine) >= self.max_filters:
                over[i] = who
            else:
                mine.append(i)
        return runs, over

    def too_many(self, label: str, owner: str) -> FilterFault:
        """The fault of a filter beyond its owner's count."""
        return FilterFault(
            f"{label}: not run: {owner} has more than {self.max_filters} active filters "
            "(the per-user limit); remove or merge some",
            reason=FaultReason.OVER_SHARE,
        )

    def out_of_time(self, label: str, owner: str) -> FilterFault:
        """The fault of a filter that did not run because its owner's time was used up."""
        return FilterFault(
            f"{label}: not run on this visit: {owner}'s filters used their share of "
            f"{self.budget_s:g} s; make them faster or run fewer",
            reason=FaultReason.OVER_SHARE,
        )
