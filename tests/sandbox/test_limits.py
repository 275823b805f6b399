"""The process layer on its own: if every language layer fell, a hardened worker running
*unrestricted* Python still cannot write, read files, connect, fork, exec, signal or grow,
nor touch another worker (each payload runs in a process hardened exactly like a worker: its
own uid, PID and IPC namespaces, an empty chroot, rlimits and the seccomp allow-list)."""

from __future__ import annotations

import ctypes
import fcntl
import os
import resource
import signal
import socket
import struct
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest
from attack_suite import Outside

from sandbox import limits, seccomp
from sandbox.limits import Limits, close_fds, harden
from sandbox.pool.uids import UidPool

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="per-worker uids and namespaces need root")

_UIDS = UidPool(os.getpid() + 7)  # a block apart from any pool this session starts
_libc = ctypes.CDLL(None, use_errno=True)


def _syscall(nr: int, *args: object) -> int:
    """A raw syscall; raise OSError like os.* would (PermissionError for EPERM)."""
    if _libc.syscall(nr, *[ctypes.c_long(a) if isinstance(a, int) else a for a in args]) == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return 0


def _harden_like_a_worker(keep: list[int], root: str, uid: int) -> None:
    close_fds(keep)
    applied = harden(Limits(memory_mb=256, cpu_s=5, uid=uid, root=root))
    assert all(applied.values()), applied


def _in_hardened_worker(
    attack: Callable[[], object], *, pidns: bool = True, keep: tuple[int, ...] = ()
) -> str:
    """Run ``attack`` in a process hardened like a worker; return what happened (the name of
    the exception it raised, or SUCCEEDED)."""
    r, w = os.pipe()
    root = tempfile.mkdtemp(prefix="minibroker-test-root-")
    uid = _UIDS.take()
    middle = os.fork()
    if middle == 0:  # pragma: no cover - child
        try:
            if pidns:
                assert limits.unshare(limits.CLONE_NEWPID | limits.CLONE_NEWIPC)
                if os.fork() != 0:
                    os._exit(0)
            _harden_like_a_worker([w, *keep], root, uid)
            try:
                attack()
                result = "SUCCEEDED"
            except BaseException as exc:  # noqa: B036
                result = type(exc).__name__
            os.write(w, result.encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(middle, 0)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()  # EOF once the worker (the middle's child) exits
    os.rmdir(root)
    _UIDS.give_back(uid, -1)
    return out or "died"


@pytest.fixture
def victim() -> Iterator[int]:
    """Another user's worker: hardened under its own uid, idle (sleeping)."""
    root = tempfile.mkdtemp(prefix="minibroker-test-root-")
    r, w = os.pipe()
    uid = _UIDS.take()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            _harden_like_a_worker([w], root, uid)
            os.write(w, b"ready")
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 5) == b"ready"
    os.close(r)
    before = _state(pid)
    yield pid
    assert _state(pid) == before, "the attack changed the other worker"
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.rmdir(root)
    _UIDS.give_back(uid, -1)


def _state(pid: int) -> tuple[object, ...]:
    """What an attacker could change about another process: running (not stopped or dead),
    limits, scheduling."""
    with open(f"/proc/{pid}/limits") as f:
        lims = f.read()
    with open(f"/proc/{pid}/stat") as f:
        state = f.read().rsplit(")", 1)[1].split()[0]
    return (
        state not in ("T", "t", "Z", "X"),
        lims,
        os.sched_getscheduler(pid),
        os.getpriority(os.PRIO_PROCESS, pid),
        os.sched_getaffinity(pid),
    )


def _sock_connect(port: int) -> None:
    # No name lookup: a refused import of the idna codec would hide what the socket layer does.
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect(("127.0.0.1", port))


ATTACKS: dict[str, Callable[[Outside], Callable[[], object]]] = {
    "create a marker file": lambda o: lambda: open(o.marker_dir / "m", "w"),
    "shell out": lambda o: lambda: os.system(f"touch {o.marker_dir}/m"),
    "exec a program": lambda o: lambda: os.execv("/bin/touch", ["touch", f"{o.marker_dir}/m"]),
    "fork": lambda o: os.fork,
    "read a file": lambda o: lambda: open("/etc/hostname").read(),
    "read /proc/self/environ": lambda o: lambda: open("/proc/self/environ").read(),
    "read the engine's environ": lambda o: lambda: open(f"/proc/{os.getppid()}/environ").read(),
    "connect to the listener": lambda o: lambda: _sock_connect(o.port),
    "unix socket": lambda o: lambda: socket.socket(socket.AF_UNIX).connect("/run/x"),
    "kill the engine": lambda o: lambda: os.kill(os.getppid(), 9),
    "regain root": lambda o: lambda: os.setuid(0),
    "make a directory": lambda o: lambda: os.mkdir(o.marker_dir / "d"),
    "allocate 1 GB": lambda o: lambda: bytearray(2**30),
    "list the host's processes": lambda o: lambda: os.listdir("/proc"),
    "stat another process": lambda o: lambda: os.stat("/proc/1"),
    "stat a host file": lambda o: lambda: os.stat("/etc/passwd"),
    "raise its own hard limit": lambda o: lambda: resource.setrlimit(resource.RLIMIT_AS, (-1, -1)),
    "new thread": lambda o: lambda: _start_thread(),
}


# Syscalls the allow-list leaves out (each one a gap of the old deny-list): refused with EPERM.
REFUSED_SYSCALLS: dict[str, Callable[[], object]] = {
    "open_tree_attr": lambda: _syscall(467, -100, ctypes.c_char_p(b"/"), 1, 0, 0),
    "open_tree": lambda: _syscall(428, -100, ctypes.c_char_p(b"/"), 1),
    "modify_ldt": lambda: _syscall(154, 0, 0, 0),
    "memfd_secret": lambda: _syscall(447, 0),
    "sync": lambda: _syscall(162),
    "POSIX message queue": lambda: _mq_open(),
    "System V message queue": lambda: _syscall(68, 0x1234, 0o1666),
    "ioctl (TIOCSTI)": lambda: fcntl.ioctl(0, 0x5412, b"x"),
    "prlimit64 by pid": lambda: resource.prlimit(os.getpid(), resource.RLIMIT_NOFILE, (3, 3)),
    "sched_setaffinity": lambda: os.sched_setaffinity(0, {0}),
    "setpriority": lambda: os.setpriority(os.PRIO_PROCESS, 0, 19),
    "sched_setscheduler": lambda: os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0)),
    "pidfd_open": lambda: os.pidfd_open(1),
    "socket": lambda: socket.socket(socket.AF_UNIX),
}


@pytest.mark.parametrize("name", list(REFUSED_SYSCALLS))
def test_syscalls_off_the_allow_list_are_refused(name: str) -> None:
    """Each call fails with EPERM in a hardened worker."""
    assert _in_hardened_worker(REFUSED_SYSCALLS[name]) == "PermissionError"


def _mq_open() -> None:
    _libc.mq_open.restype = ctypes.c_int
    if _libc.mq_open(b"/minibroker-test", os.O_CREAT | os.O_RDWR, 0o666, None) == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _start_thread() -> None:
    import threading

    threading.Thread(target=lambda: None).start()


@pytest.mark.parametrize("name", list(ATTACKS))
def test_the_os_stops_unrestricted_code(name: str, outside: Outside) -> None:
    """The attack raises in the hardened process and leaves no trace outside."""
    result = _in_hardened_worker(ATTACKS[name](outside))
    assert result in (
        "PermissionError",
        "MemoryError",
        "OSError",
        "FileNotFoundError",
        "RuntimeError",
        "ValueError",
    ) or (
        name == "shell out" and result == "SUCCEEDED"  # os.system returns -1: fork was refused
    ), result
    outside.assert_untouched()
    assert os.getpid() > 0  # still alive: the kill was refused


# What one worker tried against another (issue 13), each given the other's pid as the engine
# sees it: its own PID namespace hides the pid, its own uid makes the kernel refuse, and the
# allow-list refuses the call itself; the tests below take the layers one at a time too.
NEIGHBOUR_ATTACKS: dict[str, Callable[[int], object]] = {
    "re-limit it (prlimit64)": lambda pid: resource.prlimit(pid, resource.RLIMIT_NOFILE, (3, 3)),
    "shrink its memory (prlimit64)": lambda pid: resource.prlimit(
        pid, resource.RLIMIT_AS, (2**31, 2**31)
    ),
    "kill it by SIGIO (F_SETOWN)": lambda pid: fcntl.fcntl(3, fcntl.F_SETOWN, pid),
    "kill it by SIGIO (F_SETSIG)": lambda pid: fcntl.fcntl(3, 10, signal.SIGKILL),  # F_SETSIG
    "kill it": lambda pid: os.kill(pid, signal.SIGKILL),
    "stop it": lambda pid: os.kill(pid, signal.SIGSTOP),
    "starve it (SCHED_IDLE)": lambda pid: os.sched_setscheduler(
        pid, os.SCHED_IDLE, os.sched_param(0)
    ),
    "starve it (setpriority)": lambda pid: os.setpriority(os.PRIO_PROCESS, pid, 19),
    "move it (affinity)": lambda pid: os.sched_setaffinity(pid, {0}),
    "open a pidfd for it": lambda pid: os.pidfd_open(pid),
    "read its memory map": lambda pid: open(f"/proc/{pid}/maps").read(),
    "stat it": lambda pid: os.stat(f"/proc/{pid}"),
}


@pytest.mark.parametrize("pidns", [True, False], ids=["worker", "without-pid-namespace"])
@pytest.mark.parametrize("name", list(NEIGHBOUR_ATTACKS))
def test_a_worker_cannot_touch_another(name: str, pidns: bool, victim: int) -> None:
    """Whatever one worker tries against another fails, and the other is unchanged (the
    victim fixture compares its state, limits and scheduling before and after)."""
    sock_a, sock_b = socket.socketpair()
    try:

        def attack() -> object:
            os.dup2(sock_a.fileno(), 3)
            return NEIGHBOUR_ATTACKS[name](victim)

        result = _in_hardened_worker(attack, pidns=pidns, keep=(sock_a.fileno(),))
    finally:
        sock_a.close()
        sock_b.close()
    assert result in ("PermissionError", "ProcessLookupError", "FileNotFoundError", "OSError"), (
        result
    )


@pytest.mark.parametrize("call", ["prlimit64", "fcntl"])
def test_the_allow_list_checks_arguments(call: str) -> None:
    """prlimit64 works on itself (pid 0) only; fcntl reads and sets flags but cannot set an
    owner or signal, even on its own socket and with its own pid."""

    def attack() -> object:
        if call == "prlimit64":
            resource.prlimit(0, resource.RLIMIT_NOFILE)  # itself: allowed
            return resource.prlimit(os.getpid(), resource.RLIMIT_NOFILE)  # by pid: refused
        fcntl.fcntl(0, fcntl.F_GETFL)
        return fcntl.fcntl(0, fcntl.F_SETOWN, os.getpid())

    assert _in_hardened_worker(attack) == "PermissionError"
    assert "prlimit64" in seccomp.CHECKED and "fcntl" in seccomp.CHECKED


def test_shell_out_really_did_nothing(outside: Outside) -> None:
    """os.system cannot even fork: it returns an error status."""
    r, w = os.pipe()

    def attack() -> None:
        os.write(w, struct.pack(">i", os.system("true")))

    _in_hardened_worker(attack, keep=(w,))
    os.close(w)
    with os.fdopen(r, "rb") as f:
        assert f.read() != struct.pack(">i", 0)
    outside.assert_untouched()
