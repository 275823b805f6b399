"""What /proc says about a process, for the tests that check workers are stopped or gone."""

from __future__ import annotations


def state(pid: int) -> str | None:
    """The process's state letter (``T`` stopped, ``Z`` zombie ...), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def children(pid: int) -> list[int]:
    """The pids of the process's children (none when it is gone)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def all_stopped(pids: list[int], timeout_s: float = 5.0) -> bool:
    """Whether every one of ``pids`` is stopped, waiting up to ``timeout_s`` (SIGSTOP takes
    effect asynchronously)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all(state(p) == "T" for p in pids):
        time.sleep(0.02)
    return all(state(p) == "T" for p in pids)
