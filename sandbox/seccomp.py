"""The worker's syscall allow-list, built with libseccomp (PyPI ``pyseccomp``, a ctypes binding).

A hardened worker may make only the syscalls listed in :data:`ALLOWED` (what an interpreter
needs to compute over a mapped batch and talk over its inherited socket) and those in
:data:`CHECKED` with the argument values listed there; every other syscall fails with
``EPERM``. The list is an allow-list on purpose: a syscall added to the kernel next year
(``open_tree_attr``, ``memfd_secret`` ...) is refused without anyone remembering to deny it.
Foreign ABIs (x32, i386 through ``int 0x80``) are not in the filter's architecture list, so
libseccomp kills a process that uses them.

Why each conditional syscall is allowed only so:

- ``prlimit64``/``sched_getaffinity`` only on pid 0 (the caller): a worker lowers its own soft
  limits before each visit; rewriting another process's limits was one of the gaps.
- ``fcntl`` only to read and set descriptor flags and duplicate: ``F_SETOWN``/``F_SETSIG``
  with ``O_ASYNC`` would deliver any signal to any process.
- ``newfstatat`` only with ``AT_EMPTY_PATH`` (glibc's ``fstat``); workers also sit in an empty
  ``chroot``, so even a path given with that flag names nothing.

``mincore`` is left out too: page residency of shared mappings is a side channel.
Threads and processes (``clone``, ``clone3``, ``fork``, ``vfork``, ``execve``), every call
that opens or names a file, sockets, signals to anyone, ``ptrace``, ``ioctl``, scheduling
changes, System V and POSIX IPC, keyrings, namespaces and mounts are all simply absent.
"""

from __future__ import annotations

import errno
import logging
import platform
from collections.abc import Mapping

__all__ = ["ALLOWED", "CHECKED", "install", "prepare"]

log = logging.getLogger("sandbox.limits")

# What a long-lived worker needs between receiving a job and sending its results: memory,
# its socket (recvmsg carries the batch's descriptor), reading the /proc/self/statm descriptor
# it opened before hardening, time, futexes (the interpreter's locks), signals to itself
# (its handlers' returns) and exit.
ALLOWED: frozenset[str] = frozenset(
    {
        # memory
        "brk",
        "mmap",
        "munmap",
        "mremap",
        "mprotect",
        "madvise",
        # descriptors it already holds
        "read",
        "readv",
        "pread64",
        "write",
        "writev",
        "close",
        "lseek",
        "fstat",
        "dup",
        "dup3",
        "recvmsg",
        "recvfrom",
        "sendmsg",
        "sendto",
        "poll",
        "ppoll",
        "select",
        "pselect6",
        # its own identity, limits and usage
        "getpid",
        "gettid",
        "getppid",
        "getuid",
        "geteuid",
        "getgid",
        "getegid",
        "getresuid",
        "getresgid",
        "getgroups",
        "getrlimit",
        "getrusage",
        "times",
        "uname",
        "getcwd",
        # time and waiting
        "clock_gettime",
        "clock_getres",
        "gettimeofday",
        "time",
        "nanosleep",
        "clock_nanosleep",
        "futex",
        "sched_yield",
        "getrandom",
        # signals delivered to it, and leaving
        "rt_sigaction",
        "rt_sigprocmask",
        "rt_sigreturn",
        "sigaltstack",
        "exit",
        "exit_group",
    }
)

_AT_EMPTY_PATH = 0x1000
_F_DUPFD, _F_GETFD, _F_SETFD, _F_GETFL, _F_SETFL, _F_DUPFD_CLOEXEC, _F_GET_SEALS = (
    0,
    1,
    2,
    3,
    4,
    1030,
    1034,
)

# syscall → (argument index, allowed values): allowed only when that argument is one of them.
CHECKED: Mapping[str, tuple[int, frozenset[int]]] = {
    "prlimit64": (0, frozenset({0})),
    "sched_getaffinity": (0, frozenset({0})),
    "fcntl": (
        1,
        frozenset(
            {_F_DUPFD, _F_GETFD, _F_SETFD, _F_GETFL, _F_SETFL, _F_DUPFD_CLOEXEC, _F_GET_SEALS}
        ),
    ),
    "newfstatat": (3, frozenset({_AT_EMPTY_PATH})),
}

_filter: object | None = None


def prepare() -> bool:
    """Build the filter now (in the zygote, once), so that each worker only loads it.

    Returns False (and logs) where libseccomp or its binding is missing or the architecture is
    not x86_64 (the syscall table is written for it).
    """
    global _filter
    if _filter is not None:
        return True
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        log.warning("seccomp: not available on %s/%s", platform.system(), platform.machine())
        return False
    try:
        import pyseccomp as sc
    except (ImportError, OSError) as exc:  # OSError: the binding is there, libseccomp.so.2 not
        log.warning(
            "seccomp: libseccomp's Python binding is unavailable (%s); "
            "install pyseccomp and Debian's libseccomp2",
            exc,
        )
        return False
    f = sc.SyscallFilter(sc.ERRNO(errno.EPERM))
    for name in sorted(ALLOWED):
        f.add_rule(sc.ALLOW, name)
    for name, (arg, values) in CHECKED.items():
        for value in sorted(values):
            f.add_rule(sc.ALLOW, name, sc.Arg(arg, sc.EQ, value))
    _filter = f
    return True


def install() -> bool:
    """Load the allow-list into this process (irreversible; inherited by anything it could
    create). Sets ``no_new_privs`` first, as libseccomp does by default."""
    if not prepare():
        return False
    try:
        _filter.load()  # type: ignore[union-attr]
    except (OSError, RuntimeError) as exc:
        log.warning("seccomp: filter not installed (%s)", exc)
        return False
    return True
