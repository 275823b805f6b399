"""The process layer on its own: if every language layer fell, a hardened worker running
*unrestricted* Python still cannot write, read files, connect, fork, exec, signal or grow."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import pytest
from attack_suite import Outside

from sandbox.limits import Limits, close_fds, harden


def _in_hardened_child(attack: Callable[[], object]) -> str:
    """Run ``attack`` in a forked child hardened like a worker; return what happened."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            close_fds([w])
            applied = harden(Limits(memory_mb=256, cpu_s=5))
            assert all(applied.values()), applied
            try:
                attack()
                result = "SUCCEEDED"
            except BaseException as exc:  # noqa: B036
                result = type(exc).__name__
            os.write(w, result.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    _pid, status = os.waitpid(pid, 0)
    return out or f"died (status {status})"


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
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_the_os_stops_unrestricted_code(name: str, outside: Outside) -> None:
    """The attack raises in the hardened process and leaves no trace outside."""
    result = _in_hardened_child(ATTACKS[name](outside))
    assert result in ("PermissionError", "MemoryError", "OSError", "FileNotFoundError") or (
        name == "shell out" and result == "SUCCEEDED"  # os.system returns -1: fork was refused
    ), result
    outside.assert_untouched()
    assert os.getpid() > 0  # still alive: the kill was refused


def test_shell_out_really_did_nothing(outside: Outside) -> None:
    """os.system cannot even fork: it returns an error status."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        close_fds([w])
        harden(Limits())
        os.write(w, str(os.system("true")).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        assert f.read() != b"0"
    os.waitpid(pid, 0)
    outside.assert_untouched()
