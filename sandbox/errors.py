"""Errors a user's filter can cause, rooted in :class:`engine.errors.MinibrokerError`.

::

    FilterError                 a filter failed; the message is for its owner
    ├── FilterRejected          the file breaks the policy (all problems listed, each with its line)
    └── FilterFault             the filter failed while running on a visit (``reason``: "error",
                                "timeout", "memory", "killed", "bad-result", "suspended" or "over-share")
    PoolError                   the worker pool itself failed (an engine problem, not a filter's)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from engine.errors import MinibrokerError
from sandbox.text import escape

__all__ = ["FaultReason", "FilterError", "FilterFault", "FilterRejected", "PoolError", "Problem"]


class FaultReason(StrEnum):
    """Why a filter produced no mask on a visit (the ``reason`` field of a fault entry)."""

    ERROR = "error"  # it raised
    TIMEOUT = "timeout"  # it overran its time budget (or compiling did)
    MEMORY = "memory"  # it ran out of memory
    KILLED = "killed"  # its process died or broke protocol, or could not be started
    BAD_RESULT = "bad-result"  # it returned something that is not one boolean per alert
    SUSPENDED = "suspended"  # it faulted too often and waits to be fixed
    OVER_SHARE = "over-share"  # not run: its owner has too many filters or used their time


class FilterError(MinibrokerError):
    """A user's filter failed; the message is written for its owner."""


@dataclass(frozen=True)
class Problem:
    """One reason a filter file was rejected: where, which rule, and what to do."""

    filename: str
    line: int | None
    rule: str
    message: str

    def __post_init__(self) -> None:
        # Rejections quote the file (a syntax error's line): escaped like every message.
        object.__setattr__(self, "filename", escape(self.filename))
        object.__setattr__(self, "message", escape(self.message))

    def __str__(self) -> str:
        where = f"{self.filename}:{self.line}" if self.line else self.filename
        return f"{where}: {self.message} [{self.rule}]"


class FilterRejected(FilterError):
    """The filter file breaks the policy; ``problems`` lists every problem at once."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"filter rejected ({len(self.problems)} problem(s)):\n{lines}")


class FilterFault(FilterError):
    """The filter failed on a visit. ``reason`` is one of ``error``, ``timeout``, ``memory``,
    ``killed``, ``bad-result`` or ``suspended``; the message names the file:line when the filter
    raised."""

    def __init__(self, message: str, *, reason: FaultReason | str = FaultReason.ERROR):
        self.reason = FaultReason(reason)
        super().__init__(escape(message))


class PoolError(MinibrokerError):
    """The worker pool itself cannot work (its clean parent did not start); not a filter's fault."""
