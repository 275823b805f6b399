"""Operating-system limits for the processes that run untrusted filters.

The language layers (:mod:`sandbox.policy`, :mod:`sandbox.namespace`) give early, clear errors;
this module is the boundary. Where the pieces come from:

- The **zygote** (:func:`sandbox.worker.zygote_main`) starts with a scrubbed environment
  (:func:`clean_environment`), dies with the engine (:func:`set_parent_death_signal`) and,
  when root, runs as the init of its own PID namespace with empty network and IPC namespaces
  (:func:`unshare`): when it dies, for whatever reason, the kernel kills every process in that
  namespace, stopped workers included.
- Each **worker** is forked into a PID and IPC namespace of its own (it is that namespace's
  init: it sees no other process, and its System V and POSIX message queues are its own).

A worker, before it touches any user code (:func:`harden`):

1. closes every inherited file descriptor except its channel to the engine, with ``/dev/null``
   on 0/1/2;
2. sets resource limits: address space (``RLIMIT_AS``), CPU seconds (``RLIMIT_CPU``), no file
   growth (``RLIMIT_FSIZE=0``), no core dumps, a handful of descriptors (``RLIMIT_NOFILE``),
   no new processes (``RLIMIT_NPROC=0``). Workers live across visits: the *hard* limits are
   fixed here for the worker's whole life and are the backstop; before each visit, still in
   trusted code, the worker lowers (or re-raises, never past the hard limit) the *soft* CPU
   and address-space limits to that visit's allowance (:func:`rearm`);
3. when root: ``chroot`` into an empty directory (no path names anything), and gives up root
   for a uid of its own (:class:`Limits` ``uid``; the pool hands every live worker a different
   one), so that no worker can signal, re-limit, reschedule or inspect another;
4. installs the seccomp allow-list (:mod:`sandbox.seccomp`), with ``no_new_privs``.

Everything here is Linux-only. Whatever cannot be applied is logged and reported by
:func:`harden` (and :func:`unshare`) so that the pool can say what is enforced.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import resource
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sandbox import seccomp as _seccomp

__all__ = [
    "Limits",
    "clean_environment",
    "close_fds",
    "fork_into",
    "harden",
    "rearm",
    "unshare",
    "vm_size_from",
]

log = logging.getLogger("sandbox.limits")

NOBODY = 65534  # the uid of a worker hardened without one of its own (tests, old callers)
CLONE_NEWNET = 0x40000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
_PR_SET_PDEATHSIG = 1

# Environment a worker may see: nothing from the engine (REDIS_URL, tokens, HOME ...). The
# thread counts keep BLAS/OpenMP from starting threads in the zygote, which must stay
# single-threaded to fork safely.
_WORKER_ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/nonexistent",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "ARROW_NUM_THREADS": "1",
    # pyarrow's bundled jemalloc starts a background thread at import; the system allocator
    # starts none and keeps RLIMIT_AS meaningful (jemalloc reserves large address ranges).
    "JE_ARROW_MALLOC_CONF": "background_thread:false",
    "ARROW_DEFAULT_MEMORY_POOL": "system",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONHASHSEED": "0",
}


@dataclass(frozen=True)
class Limits:
    """Resource limits of one worker process.

    Attributes
    ----------
    memory_mb : int
        Address space a worker may add beyond what it holds when limits are applied (the
        interpreter, numpy, pyarrow and anything already mapped).
    cpu_s : int
        CPU seconds for the worker's whole life (a backstop: the engine's wall-clock deadline
        normally strikes first, and :func:`rearm` gives each visit a lower soft limit).
    nofile : int
        Highest file descriptor number + 1 the worker may hold.
    reserve_mb : int
        Further address space for what the worker maps later (the visit batches it receives
        after hardening) and for its heap to settle over many visits; part of the hard limit
        only.
    uid : int or None
        The uid (and gid) to run as when started as root; None means ``nobody``. The pool gives
        every live worker its own.
    root : str or None
        An empty directory to ``chroot`` into when root; None: stay where it is.
    """

    memory_mb: int = 1024
    cpu_s: int = 30
    nofile: int = 16
    reserve_mb: int = 0
    uid: int | None = None
    root: str | None = None


def clean_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment workers start with: an allowlist, never a copy of the engine's."""
    env = dict(_WORKER_ENV)
    env.update(extra or {})
    return env


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def unshare(flags: int) -> bool:
    """Move this process (for ``CLONE_NEWPID``: its future children) into new namespaces.

    Returns False where this is not permitted (not root, no user namespaces); the caller says
    what that leaves out.
    """
    return _libc().unshare(flags) == 0


_SYS_CLONE = 56  # x86_64
_PR_SET_NO_NEW_PRIVS = 38
_SIGCHLD = 17


def fork_into(flags: int) -> int:
    """``os.fork()`` into new namespaces (``CLONE_NEWPID``: the child is their init) in one
    step: ``unshare(CLONE_NEWPID)`` works once per process, so a zygote would otherwise need a
    middle process per worker (a second fork, an exit and a wait: about half the cost of
    starting a worker). Python's own before- and after-fork hooks run as for ``os.fork()``.

    Only for a single-threaded caller (the zygote). Returns the child's pid (0 in the child),
    or -1 where this is not permitted or not x86_64.
    """
    import platform

    if platform.machine() != "x86_64":
        return -1
    api = ctypes.pythonapi
    libc = _libc()
    api.PyOS_BeforeFork()
    pid = libc.syscall(
        ctypes.c_long(_SYS_CLONE),
        ctypes.c_ulong(flags | _SIGCHLD),
        ctypes.c_long(0),
        ctypes.c_long(0),
        ctypes.c_long(0),
        ctypes.c_long(0),
    )
    if pid == 0:
        api.PyOS_AfterFork_Child()
    else:
        api.PyOS_AfterFork_Parent()
    return pid


def set_parent_death_signal(parent: int | None = None) -> bool:
    """Die with SIGKILL when the parent process dies (no orphaned workers or zygotes).

    With ``parent`` given, returns False when the parent is already gone (the signal would
    never come): the caller exits. The kernel clears this setting when a process changes its
    uid, so :func:`harden` sets it again afterwards.
    """
    import signal

    _libc().prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    return parent is None or os.getppid() == parent


def close_fds(keep: Iterable[int]) -> None:
    """Close every descriptor but ``keep``; 0, 1 and 2 become ``/dev/null``."""
    keep = sorted(set(keep))
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        if fd not in keep:
            os.dup2(null, fd)
    low = 3
    for fd in [*keep, resource.getrlimit(resource.RLIMIT_NOFILE)[0]]:
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    if null not in keep and null > 2:
        try:
            os.close(null)
        except OSError:
            pass


def _vm_size_bytes() -> int:
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def vm_size_from(statm_fd: int) -> int:
    """This process's address-space size in bytes, read from an open ``/proc/self/statm``.

    Workers open that file once, before seccomp forbids opening anything, and read it again
    before every visit.
    """
    return int(os.pread(statm_fd, 128, 0).split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _become(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def harden(limits: Limits, *, seccomp: bool = True) -> dict[str, bool]:
    """Apply ``limits``, leave the file system, drop privileges and install seccomp in the
    calling process.

    Call after the descriptors are closed, before any user code (including compiling it)
    runs. Address space mapped later (a worker's visit batches) must fit in
    ``limits.reserve_mb``: the soft limit allows ``memory_mb`` beyond what is mapped now, the
    hard limit ``reserve_mb`` more. Returns which layers took effect, for the pool's report:
    ``rlimits``, ``chroot``, ``uid`` (its own, or ``nobody``), ``no_new_privs``, ``seccomp``.
    """
    applied: dict[str, bool] = {}
    if seccomp:
        _seccomp.prepare()  # loads libseccomp: no file can be opened after the chroot
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.nofile, limits.nofile))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    vm = _vm_size_bytes() + limits.memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (vm, vm + limits.reserve_mb * 2**20))
    applied["rlimits"] = True
    root = os.getuid() == 0
    applied["chroot"] = False
    if root and limits.root is not None:
        try:
            os.chroot(limits.root)
            os.chdir("/")
            applied["chroot"] = True
        except OSError as exc:
            log.warning("chroot into %s failed (%s)", limits.root, exc)
    parent = os.getppid()
    applied["uid"] = False
    if root:
        try:
            _become(NOBODY if limits.uid is None else limits.uid)
            applied["uid"] = True
        except OSError as exc:
            log.warning("privileges: cannot switch to uid %s (%s)", limits.uid, exc)
    # Changing uid cleared the parent-death signal; a worker in a PID namespace of its own has
    # no visible parent (0) and dies with its namespace's ancestors instead.
    if parent and not set_parent_death_signal(parent):
        os._exit(1)
    # After setuid: RLIMIT_NPROC is not enforced for root, and the new uid cannot raise it.
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    # Never gain privileges through execve (a setuid program), seccomp or not: without root
    # there is no chroot, and without libseccomp no filter, to stop the attempt otherwise.
    applied["no_new_privs"] = _libc().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    applied["seccomp"] = _seccomp.install() if seccomp else False
    return applied


def rearm(cpu_s: float, memory_mb: int, vm_bytes: int) -> None:
    """Give the next visit its own soft CPU and address-space allowance.

    Called by a long-lived worker before each visit, before any user code of that visit runs:
    the soft ``RLIMIT_CPU`` becomes the CPU time used so far plus ``cpu_s`` and the soft
    ``RLIMIT_AS`` becomes ``vm_bytes`` (what is mapped now, the new batch included) plus
    ``memory_mb``; both are capped at the hard limits that :func:`harden` fixed for the
    worker's life. Untrusted code that escaped every language layer could raise a soft limit
    again, but only up to the hard one: that is the backstop, and the engine retires a worker
    before its cumulative CPU time could reach it.

    Parameters
    ----------
    cpu_s : float
        CPU seconds this visit may use (SIGXCPU kills the worker beyond them).
    memory_mb : int
        Address space this visit may add.
    vm_bytes : int
        The worker's address-space size now (:func:`vm_size_from`).
    """
    used = resource.getrusage(resource.RUSAGE_SELF)
    _soft, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    cpu = math.ceil(used.ru_utime + used.ru_stime + cpu_s)
    resource.setrlimit(resource.RLIMIT_CPU, (_cap(cpu, cpu_hard), cpu_hard))
    _soft, as_hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_cap(vm_bytes + memory_mb * 2**20, as_hard), as_hard))


def _cap(value: int, hard: int) -> int:
    return value if hard == resource.RLIM_INFINITY else min(value, hard)
