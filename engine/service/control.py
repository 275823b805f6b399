"""What a running engine does between visits: answer users' requests and pick up registry changes.

A serve loop holds one :class:`ControlPlane` and calls :meth:`ControlPlane.between_visits`
before each visit; when it returns True the active filter set changed (a filter was accepted,
changed, disabled, enabled, deleted, suspended, or its cap changed) and the loop runs the next
visit with :attr:`ControlPlane.filters`, giving :attr:`ControlPlane.caps` to its publisher::

    control = ControlPlane(client, config, reference)
    for visit in visits:
        if control.between_visits():
            evaluator = Evaluator(control.filters, config)   # or update the pool in place
            publisher.caps = control.caps
        ...
"""

from __future__ import annotations

from typing import Any

from engine.config import Config
from engine.decode import VisitBatch
from engine.registry.directory import ActiveFilter
from engine.registry.store import ActiveFilters
from engine.service.submissions import process_pending

__all__ = ["ControlPlane"]


class ControlPlane:
    """Submissions answered and the registry's active filters, kept current between visits.

    Parameters
    ----------
    client : redis.Redis or redis.cluster.RedisCluster
        The engine's connection.
    config : Config
        Budget and isolation for dry runs, the default cap.
    reference : VisitBatch
        The visit submissions are dry-run on.
    """

    def __init__(self, client: Any, config: Config, reference: VisitBatch):
        self.client = client
        self.config = config
        self.reference = reference
        self._active = ActiveFilters(client)
        self.answered = 0

    @property
    def filters(self) -> list[ActiveFilter]:
        """The active filters, compiled (as of the last :meth:`between_visits`)."""
        return self._active.filters

    @property
    def caps(self) -> dict[str, int]:
        """Per-filter caps an admin set (filter key → cap)."""
        return self._active.caps

    def between_visits(self) -> bool:
        """Answer pending requests, then re-read the registry if it changed; True if the active
        set (or a cap) changed since the last call."""
        self.answered += process_pending(self.client, self.reference, self.config)
        return self._active.refresh()
