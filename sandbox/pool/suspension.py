"""Which filters fault too often to keep running: a fault count over a window of visits.

A filter is suspended once it faulted on ``max_faults`` of its last ``window`` visits (3 of 5
by default): a filter that fails on two visits of three is caught too, not only one that fails
every time. Faults that are not the filter's doing (the engine could not start a worker, its
user was over their share) are not counted. Resubmitting a filter clears its record.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Mapping

from sandbox.errors import FaultReason, FilterFault
from sandbox.run import Outcome

__all__ = ["Suspensions"]

log = logging.getLogger("sandbox.pool")

_NOT_COUNTED = frozenset({FaultReason.SUSPENDED, FaultReason.OVER_SHARE})


class Suspensions:
    """Per filter key: its recent visits (faulted or not) and, once suspended, why."""

    def __init__(self, max_faults: int = 3, window: int = 5):
        self.max_faults = max(1, max_faults)
        self.window = max(self.max_faults, window)
        self._recent: dict[str, deque[bool]] = {}
        self._suspended: dict[str, FilterFault] = {}

    @property
    def suspended(self) -> Mapping[str, FilterFault]:
        """Suspended keys and the fault that tipped each over."""
        return dict(self._suspended)

    def get(self, key: str) -> FilterFault | None:
        """The fault that suspended ``key``, or None when it runs."""
        return self._suspended.get(key)

    def clear(self, key: str) -> None:
        """Forget ``key``'s record (it was resubmitted or removed)."""
        self._recent.pop(key, None)
        self._suspended.pop(key, None)

    def record(self, outcomes: Iterable[Outcome], skip: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        """Count one visit's outcomes (those at positions in ``skip`` were not the filters'
        doing) and suspend what crossed the line."""
        for i, o in enumerate(outcomes):
            if i in skip or (o.fault is not None and o.fault.reason in _NOT_COUNTED):
                continue
            recent = self._recent.setdefault(o.key, deque(maxlen=self.window))
            recent.append(o.fault is not None)
            faults = sum(recent)
            if o.fault is not None and faults >= self.max_faults and o.key not in self._suspended:
                self._suspended[o.key] = o.fault
                log.warning(
                    "filter %s suspended after %d faults in its last %d visits: %s",
                    o.key,
                    faults,
                    len(recent),
                    o.fault,
                )

    def fault(self, key: str, label: str) -> FilterFault:
        """The fault a suspended filter gets instead of running."""
        last = self._suspended[key]
        return FilterFault(
            f"{label} is suspended after {self.max_faults} faults in its last "
            f"{self.window} visits (last: {last}); fix it and resubmit to run it again",
            reason=FaultReason.SUSPENDED,
        )
