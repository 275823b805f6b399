"""Operating-system limits for the processes that run untrusted filters.

The language layers (:mod:`sandbox.policy`, :mod:`sandbox.namespace`) give early, clear errors;
this module is the boundary. A worker, before it touches any user code:

1. closes every inherited file descriptor except its channel to the engine, with ``/dev/null``
   on 0/1/2, and sits in an empty, unwritable directory;
2. sets resource limits: address space (``RLIMIT_AS``), CPU seconds (``RLIMIT_CPU``), no file
   growth (``RLIMIT_FSIZE=0``), no core dumps, a handful of descriptors (``RLIMIT_NOFILE``),
   no new processes (``RLIMIT_NPROC=0``). Workers live across visits: the *hard* limits are
   fixed here for the worker's whole life and are the backstop; before each visit, still in
   trusted code, the worker lowers (or re-raises, never past the hard limit) the *soft* CPU
   and address-space limits to that visit's allowance (:func:`rearm`);
3. gives up root for ``nobody`` (so ``RLIMIT_NPROC`` applies, other processes' ``/proc``
   entries are closed and nothing root-owned is writable) and sets ``no_new_privs``;
4. installs a seccomp filter that makes every syscall that opens files, creates sockets or
   processes, signals or traces other processes, or changes the file system, mounts or
   namespaces fail with ``EPERM``.

The zygote that forks workers runs with a scrubbed environment (:func:`clean_environment`) and,
when permitted, in a new, empty network namespace (:func:`unshare_network`): no interface but a
down loopback, so even a socket created despite seccomp has nowhere to go.

Everything here is Linux-only. Whatever cannot be applied is logged and reported by
:func:`harden` so that the pool can say what is enforced; seccomp is implemented for x86_64
only (other architectures rely on the remaining layers).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import math
import os
import platform
import resource
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "Limits",
    "clean_environment",
    "close_fds",
    "harden",
    "install_seccomp",
    "rearm",
    "unshare_network",
    "vm_size_from",
]

log = logging.getLogger("sandbox.limits")

NOBODY = 65534
_CLONE_NEWNET = 0x40000000
_CLONE_NEWIPC = 0x08000000
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2

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
    """

    memory_mb: int = 1024
    cpu_s: int = 30
    nofile: int = 16
    reserve_mb: int = 0


def clean_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment workers start with: an allowlist, never a copy of the engine's."""
    env = dict(_WORKER_ENV)
    env.update(extra or {})
    return env


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def unshare_network() -> bool:
    """Move this process into new, empty network and System V IPC namespaces.

    Returns False (and logs a warning) where this is not permitted (not root, no user
    namespaces); seccomp then still forbids creating sockets.
    """
    if platform.system() != "Linux":
        log.warning("network isolation: not on Linux; workers keep the host network")
        return False
    if _libc().unshare(_CLONE_NEWNET | _CLONE_NEWIPC) != 0:
        err = ctypes.get_errno()
        log.warning("network isolation: unshare(CLONE_NEWNET) failed (%s); relying on seccomp", os.strerror(err))
        return False
    return True


def set_parent_death_signal() -> None:
    """Die with SIGKILL when the parent process dies (no orphaned workers or zygotes)."""
    import signal

    _libc().prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


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


def _drop_privileges() -> bool:
    if os.getuid() != 0:
        return False
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    return True


# --- seccomp ----------------------------------------------------------------------------------

_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_BIT = 0x40000000

# Syscalls a filter never needs. Reading a mapped batch, computing, allocating and writing
# results to the inherited socket stay allowed; everything that reaches outside does not. A
# long-lived worker's loop needs nothing more than that: recvmsg on its inherited socket (which
# may carry the next visit's read-only memfd), mmap/munmap of that descriptor, close, pread of
# the /proc/self/statm descriptor it opened before hardening, and getrusage/prlimit64 to lower
# its soft limits per visit (the hard limits stay, as only root could raise them).
DENIED_SYSCALLS_X86_64: dict[str, int] = {
    # files: no open at all after setup (no reading /proc/self/environ, no marker files)
    "open": 2, "openat": 257, "openat2": 437, "creat": 85, "open_by_handle_at": 304,
    "name_to_handle_at": 303, "memfd_create": 319,
    # file system changes
    "mkdir": 83, "mkdirat": 258, "rmdir": 84, "unlink": 87, "unlinkat": 263, "rename": 82,
    "renameat": 264, "renameat2": 316, "link": 86, "linkat": 265, "symlink": 88,
    "symlinkat": 266, "chmod": 90, "fchmod": 91, "fchmodat": 268, "chown": 92, "fchown": 93,
    "lchown": 94, "fchownat": 260, "truncate": 76, "mknod": 133, "mknodat": 259, "utime": 132,
    "utimes": 235, "utimensat": 280, "futimesat": 261, "setxattr": 188, "lsetxattr": 189,
    "fsetxattr": 190, "removexattr": 197, "lremovexattr": 198, "fremovexattr": 199,
    # network
    "socket": 41, "socketpair": 53, "connect": 42, "bind": 49, "listen": 50, "accept": 43,
    "accept4": 288,
    # processes and threads
    "clone": 56, "clone3": 435, "fork": 57, "vfork": 58, "execve": 59, "execveat": 322,
    # other processes
    "kill": 62, "tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297,
    "pidfd_send_signal": 424, "pidfd_open": 434, "pidfd_getfd": 438, "ptrace": 101,
    "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
    # the system
    "mount": 165, "umount2": 166, "unshare": 272, "setns": 308, "chroot": 161,
    "pivot_root": 155, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "keyctl": 250,
    "add_key": 248, "request_key": 249, "personality": 135, "reboot": 169, "swapon": 167,
    "swapoff": 168, "kexec_load": 246, "kexec_file_load": 320, "init_module": 175,
    "finit_module": 313, "delete_module": 176, "acct": 163, "quotactl": 179,
    "sethostname": 170, "setdomainname": 171, "iopl": 172, "ioperm": 173, "open_tree": 428,
    "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "mount_setattr": 442, "fanotify_init": 300, "inotify_init": 253, "inotify_init1": 294,
    "msgget": 68, "semget": 64, "shmget": 29, "seccomp": 317,
}


def _bpf_program(denied: Iterable[int]) -> bytes:
    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, kill = 0x7FFF0000, 0x80000000
    deny = 0x00050000 | errno.EPERM

    def ins(code: int, jt: int, jf: int, k: int) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)

    prog = [
        ins(ld_abs, 0, 0, 4),  # seccomp_data.arch
        ins(jeq, 1, 0, _AUDIT_ARCH_X86_64),
        ins(ret, 0, 0, kill),  # a foreign ABI (int 0x80) could dodge the table: kill
        ins(ld_abs, 0, 0, 0),  # seccomp_data.nr
        ins(jge, 0, 1, _X32_BIT),
        ins(ret, 0, 0, deny),  # x32 syscall numbers alias the ones below
    ]
    for nr in sorted(set(denied)):
        prog += [ins(jeq, 0, 1, nr), ins(ret, 0, 0, deny)]
    prog.append(ins(ret, 0, 0, allow))
    return b"".join(prog)


def install_seccomp(denied: Mapping[str, int] | None = None) -> bool:
    """Make the denied syscalls fail with EPERM in this process and all it could create.

    Irreversible. Returns False (and logs) where seccomp is unavailable or the architecture is
    not x86_64.
    """
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        log.warning("seccomp: not implemented for %s/%s", platform.system(), platform.machine())
        return False
    libc = _libc()
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        log.warning("seccomp: no_new_privs failed (%s)", os.strerror(ctypes.get_errno()))
        return False
    code = _bpf_program((denied or DENIED_SYSCALLS_X86_64).values())
    buf = ctypes.create_string_buffer(code, len(code))

    class _Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = _Prog(len(code) // 8, ctypes.addressof(buf))
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        log.warning("seccomp: filter not installed (%s)", os.strerror(ctypes.get_errno()))
        return False
    return True


def harden(limits: Limits, *, seccomp: bool = True) -> dict[str, bool]:
    """Apply ``limits``, drop privileges and install seccomp in the calling process.

    Call after the descriptors are closed, before any user code (including compiling it)
    runs. Address space mapped later (a worker's visit batches) must fit in
    ``limits.reserve_mb``: the soft limit allows ``memory_mb`` beyond what is mapped now, the
    hard limit ``reserve_mb`` more. Returns which layers took effect, for the pool's report.
    """
    applied: dict[str, bool] = {}
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.nofile, limits.nofile))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    vm = _vm_size_bytes() + limits.memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (vm, vm + limits.reserve_mb * 2**20))
    applied["rlimits"] = True
    try:
        applied["nobody"] = _drop_privileges()
    except OSError as exc:
        log.warning("privileges: cannot switch to nobody (%s)", exc)
        applied["nobody"] = False
    # After setuid: RLIMIT_NPROC is not enforced for root, and nobody cannot raise it again.
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    applied["seccomp"] = install_seccomp() if seccomp else False
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
