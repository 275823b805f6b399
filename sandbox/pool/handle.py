"""The engine's side of one worker process: its channel, budgets, what it compiled, and where
it is in the current visit (:class:`Phase`)."""

from __future__ import annotations

import os
import signal
import socket
from dataclasses import dataclass, field
from enum import Enum

from sandbox.compile import CompiledFilter

__all__ = ["Phase", "WorkerHandle"]


class Phase(Enum):
    """Where a worker is in a visit: starting → (compiling → running)* → closing → idle, or
    split after an out-of-memory result (the rest of the visit goes to a fresh worker)."""

    STARTING = "starting"  # forked or resumed; the batch is being mapped
    COMPILING = "compiling"  # compiling (or looking up) the current filter
    RUNNING = "running"  # running the current filter under its budget
    CLOSING = "closing"  # every result is in; its LEARNED report and DONE are due
    IDLE = "idle"  # the visit is done
    SPLIT = "split"  # out of memory: it goes, the rest of its visit continues elsewhere


_CLK_TCK = os.sysconf("SC_CLK_TCK")
_MB = 2**20
_PAGE = os.sysconf("SC_PAGE_SIZE")
# CPU seconds a worker may use over its whole life beyond its first visit's allowance: the
# hard RLIMIT_CPU, a backstop only. Each visit gets its own soft limit (sandbox.limits.rearm)
# and the wall-clock deadlines strike first; the pool retires a worker before its cumulative
# CPU time could reach this (an honest worker uses milliseconds per visit).
_LIFETIME_CPU_S = 600
# Address space a worker's limit keeps for the visit batches it maps after hardening, at the
# least; a batch larger than a worker's reserve goes to a fresh worker sized for it.
_MIN_RESERVE_MB = 256


@dataclass
class WorkerHandle:
    """Our side of one user's long-lived worker: its channel, its budgets, what it has compiled,
    and where it is in the current visit."""

    user: str  # the owner of every filter it runs (FilterKey.owner)
    sock: socket.socket
    pid: int  # 0 when the zygote could not start it (its channel is then closed)
    pidfd: int  # -1 then
    uid: int  # its own (see sandbox.pool.uids)
    statfd: int  # /proc/<pid>/stat, opened at fork: the engine's own view of its CPU and memory
    cpu_limit: float  # its hard RLIMIT_CPU [s]
    reserve: int  # bytes of visit batch its address-space limit leaves room for
    compiled: dict[str, CompiledFilter] = field(default_factory=dict)  # key → what it compiled
    visits: int = 0
    base_vm: int | None = None  # its address-space size when hardened (batch excluded)
    fresh: bool = True  # no visit finished yet
    last_visit: int = 0  # WorkerPool._visit_no of its last visit (for LRU eviction)
    # The current visit. Phases: starting → (compiling → running)* → closing → idle, or
    # split after an out-of-memory result (the rest of the visit goes to a fresh worker).
    items: list[int] = field(default_factory=list)
    job: dict[str, CompiledFilter] = field(default_factory=dict)  # key → filter, this visit
    sent: set[str] = field(default_factory=set)  # keys whose source went with this job
    phase: Phase = Phase.STARTING
    pos: int = 0
    started: float = 0.0
    deadline: float = 0.0
    buf: bytearray = field(default_factory=bytearray)
    failure: str | None = None
    retire: bool = False
    cpu: int = -1  # the core it is pinned to (across visits)
    cpu_used: float = 0.0  # its CPU seconds when it was last stopped
    quiet: bool = False  # this visit's job compiles nothing: no READY or COMPILED frames
    heard: bool = False  # a frame of this visit has arrived
    learned: bool = False  # its LEARNED report of this visit has arrived
    batch_bytes: int = 0  # size of the batch it maps this visit
    share_capped: bool = False  # the running filter's deadline is its user's share, not the budget
    active: bool = False  # running this visit (its channel's data is read, not a fault)
    noisy: bool = False  # wrote, or closed its channel, while idle: never to be resumed

    def signal(self, sig: int) -> bool:
        if self.pidfd < 0:
            return False
        try:
            signal.pidfd_send_signal(self.pidfd, sig)
            return True
        except ProcessLookupError:
            return False

    def stat(self) -> tuple[float, int] | None:
        """CPU seconds used and address-space bytes, as the kernel reports them; None if gone."""
        usage = self.usage()
        return None if usage is None else (usage[0], usage[1])

    def usage(self) -> tuple[float, int, int] | None:
        """CPU seconds used, address-space bytes and resident bytes; None if gone."""
        try:
            data = os.pread(self.statfd, 1024, 0)
            fields = data.rsplit(b")", 1)[1].split()
            return (
                (int(fields[11]) + int(fields[12])) / _CLK_TCK,
                int(fields[20]),
                int(fields[21]) * _PAGE,
            )
        except (OSError, IndexError, ValueError):
            return None

    def release(self) -> int:
        """Kill it and close our descriptors but its pidfd, which is returned (-1 if none)
        for :meth:`sandbox.pool.uids.UidPool.give_back`."""
        self.signal(signal.SIGKILL)  # never trust it to exit: it may be stopped or hostile
        self.sock.close()
        os.close(self.statfd)
        pidfd, self.pidfd = self.pidfd, -1
        return pidfd
