"""The pool's working directory, and removing those that engines killed before they could.

``<tmp>/minibroker-worker-XXXX/`` is root-owned and 0700: the zygote's working directory,
holding ``lock`` (an exclusive ``flock`` the engine holds for its whole life) and ``root/``,
the empty directory every worker ``chroot``s into. A directory whose lock nobody holds belongs
to an engine that is gone, however it went; the next pool to start removes it.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import tempfile
import time

__all__ = ["PREFIX", "Workdir", "remove_stale"]

PREFIX = "minibroker-worker-"
_UNLOCKED_GRACE_S = 60.0  # a directory without a lock file: one being created, or pre-lock


class Workdir:
    """A fresh working directory, locked while this object lives."""

    def __init__(self) -> None:
        remove_stale()
        self.path = tempfile.mkdtemp(prefix=PREFIX)
        self.root = os.path.join(self.path, "root")
        os.mkdir(self.root, 0o555)
        self._lock = os.open(
            os.path.join(self.path, "lock"), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600
        )
        fcntl.flock(self._lock, fcntl.LOCK_EX)

    def close(self) -> None:
        """Remove the directory and drop the lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1


def remove_stale(tmp: str | None = None) -> list[str]:
    """Remove the working directories of engines that are gone; return their paths."""
    removed = []
    for path in glob.glob(os.path.join(tmp or tempfile.gettempdir(), PREFIX + "*")):
        try:
            fd = os.open(os.path.join(path, "lock"), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            try:
                if time.time() - os.stat(path).st_mtime > _UNLOCKED_GRACE_S:
                    shutil.rmtree(path)
                    removed.append(path)
            except OSError:
                pass
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live engine holds it
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
