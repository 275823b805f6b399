"""The engine's handle on the zygote: the clean parent process that forks every worker.

The zygote's own side (what it runs) is :func:`sandbox.worker.zygote_main`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections import deque
from pathlib import Path

from sandbox.errors import PoolError
from sandbox.limits import clean_environment

__all__ = ["Zygote", "isolation_warning", "python_command"]

log = logging.getLogger("sandbox.pool")

# The directory holding the ``sandbox`` package: the zygote runs isolated (``python -I``) and
# is told explicitly where to import from, never through the engine's environment.
_ROOT = str(Path(__file__).resolve().parents[2])


def python_command(code: str) -> list[str]:
    return [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {_ROOT!r}); {code}"]


# Isolation the zygote reports, and what each means when missing.
_LAYERS = [
    ("their own uids", "root"),
    ("their own PID namespaces (they could see other processes)", "pidns"),
    ("their own IPC namespaces", "pidns"),
    ("an empty network namespace", "netns"),
    ("a chroot", "root"),
    ("seccomp (libseccomp or pyseccomp missing)", "seccomp"),
]


def isolation_warning(info: dict[str, object]) -> str | None:
    """The one line that says which isolation layers a zygote reported missing (``info`` is
    its hello: ``root``, ``pidns``, ``netns``, ``seccomp``), or None when all took effect."""
    missing = [what for what, key in _LAYERS if not info.get(key)]
    if not missing:
        return None
    why = "not root" if not info.get("root") else "not permitted"
    return (
        f"sandbox isolation incomplete ({why}): workers run without {', '.join(missing)}; "
        "run the engine as root for full isolation"
    )


def _pid_of(pidfd: int) -> int:
    """The pid a pidfd refers to, in this process's PID namespace (0 if it has exited)."""
    try:
        with open(f"/proc/self/fdinfo/{pidfd}", "rb") as f:
            for line in f:
                if line.startswith(b"Pid:"):
                    return max(0, int(line.split()[1]))
    except (OSError, ValueError, IndexError):
        pass
    return 0


class Zygote:
    """The clean parent of all workers (see :mod:`sandbox.worker`)."""

    def __init__(self, workdir: str, timeout_s: float = 60.0):
        self._asked: deque[socket.socket] = deque()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        code = (
            f"from sandbox.worker import zygote_main; zygote_main({theirs.fileno()}, {workdir!r})"
        )
        self.proc = subprocess.Popen(
            python_command(code),
            env=clean_environment(),
            cwd=workdir,
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        theirs.close()
        self.sock = ours
        self.sock.settimeout(timeout_s)
        try:
            hello = self.sock.recv(4096)
        except OSError as exc:
            self.close()
            raise PoolError(f"the sandbox zygote did not start ({exc})") from None
        if not hello.startswith(b"Z"):
            self.close()
            raise PoolError("the sandbox zygote did not start; see its output above")
        self.info: dict[str, object] = json.loads(hello[1:])
        if self.info.get("threads") != 1:
            log.warning(
                "sandbox zygote runs %s threads; forking it may deadlock", self.info.get("threads")
            )
        warning = isolation_warning(self.info)
        if warning:
            log.warning("%s", warning)  # one line, once per zygote

    def request(self) -> None:
        """Ask for a worker now, to be taken by a later :meth:`fork` (answers come in order):
        the zygote forks (~4 ms) while the engine goes on."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            socket.send_fds(self.sock, [b"F"], [theirs.fileno()])
        except OSError as exc:
            ours.close()
            raise PoolError(f"the sandbox zygote stopped answering ({exc})") from None
        finally:
            theirs.close()
        self._asked.append(ours)

    @property
    def asked(self) -> int:
        """Workers requested and not yet taken."""
        return len(self._asked)

    def fork(self) -> tuple[socket.socket, int, int]:
        """A new worker (the oldest requested one, else a fresh request): our end of its
        channel, its pid (as this process sees it; 0 when it could not be started) and a pidfd
        to signal it (-1 then)."""
        if not self._asked:
            self.request()
        ours = self._asked.popleft()
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, 16, 1)
        except OSError as exc:
            ours.close()
            raise PoolError(f"the sandbox zygote stopped answering ({exc})") from None
        if len(data) == 4 and not fds and data == bytes(4):
            return ours, 0, -1  # it could not fork one; the channel is closed: a failed start
        if len(data) != 4 or len(fds) != 1:
            ours.close()
            for fd in fds:
                os.close(fd)
            raise PoolError("the sandbox zygote stopped answering")
        # The zygote names the worker by its pid in the zygote's own PID namespace; ours is in
        # the pidfd's description.
        return ours, _pid_of(fds[0]), fds[0]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        while self._asked:  # requested, never taken: they see EOF before any job, and exit
            self._asked.popleft().close()
        self.sock.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
