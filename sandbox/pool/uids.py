"""A uid for every live worker, so that no worker can signal, re-limit, reschedule or inspect
another (the kernel only lets a process do that to processes of its own uid).

Each engine takes a block of :data:`BLOCK` uids far above any real account, chosen from its
pid, and hands every worker it forks a uid no live worker of its holds. A uid comes back only
once its worker has exited (its pidfd reports so), never while the process could still run.
"""

from __future__ import annotations

import os
import select

from sandbox.errors import PoolError

__all__ = ["BLOCK", "UidPool"]

BASE = 1_000_000_000  # far above /etc/passwd accounts and the usual subuid ranges (100000+)
BLOCK = 4096  # uids per engine: live workers (at most idle + running) plus those still dying
_BLOCKS = 200_000  # BASE + _BLOCKS * BLOCK stays below 2**31


class UidPool:
    """Distinct uids for the live workers of one engine."""

    def __init__(self, engine_pid: int | None = None):
        pid = os.getpid() if engine_pid is None else engine_pid
        self.first = BASE + (pid % _BLOCKS) * BLOCK
        self._free = list(range(self.first + BLOCK - 1, self.first - 1, -1))
        self._dying: list[tuple[int, int]] = []  # (uid, pidfd) of killed workers not yet gone

    def take(self) -> int:
        """A uid no live worker holds."""
        if not self._free:
            self._sweep()
        if not self._free:
            raise PoolError(
                f"all {BLOCK} worker uids are held by live workers; lower max_idle_workers"
            )
        return self._free.pop()

    def give_back(self, uid: int, pidfd: int) -> None:
        """Return ``uid`` once the process behind ``pidfd`` (ours to close) has exited."""
        if pidfd < 0:
            self._free.append(uid)
            return
        self._dying.append((uid, pidfd))
        if len(self._dying) > 64:
            self._sweep()

    def _sweep(self) -> None:
        poll = select.poll()
        for _uid, pidfd in self._dying:
            poll.register(pidfd, select.POLLIN)
        gone = {fd for fd, _event in poll.poll(0)}  # a pidfd polls readable once its process exited
        still = []
        for uid, pidfd in self._dying:
            if pidfd in gone:
                os.close(pidfd)
                self._free.append(uid)
            else:
                still.append((uid, pidfd))
        self._dying = still

    def close(self) -> None:
        """Forget every uid (the zygote's namespace takes the rest of the workers with it)."""
        for _uid, pidfd in self._dying:
            os.close(pidfd)
        self._dying = []
