"""The child side of :class:`sandbox.pool.WorkerPool`: a zygote and the workers it forks.

The **zygote** is a fresh interpreter started by the pool with a scrubbed environment
(:func:`sandbox.limits.clean_environment`). It imports numpy, pyarrow and this package, becomes
(when root) the init of new PID, network and IPC namespaces, and then only forks: it never sees
user code, credentials or visit data. Each fork is a **worker** for one user, the init of PID
and IPC namespaces of its own, kept alive across that user's visits (never
shared with another user). A worker closes everything it inherited, hardens itself
(:func:`sandbox.limits.harden`) on its first job, before it compiles anything, and then serves
one visit after another: it receives the visit batch's descriptor, maps it read-only, builds a
fresh column store, gives the visit its own soft CPU and memory limits
(:func:`sandbox.limits.rearm`), runs the user's filters one at a time (each with fresh
globals), reports each as it finishes, says it is done, and only then unmaps the batch (while
the pool parks it) and waits. Filters are compiled once and
kept; the pool sends a filter's source again only when it changed.

The wire format is :mod:`sandbox.pool.protocol`.
"""

from __future__ import annotations

import contextlib
import gc
import json
import mmap
import os
import select
import socket
import struct
import sys
import time
import warnings
from typing import Any

from sandbox.errors import FilterRejected
from sandbox.pool.protocol import (
    FRAME,
    JOB_HEADER,
    MAX_DERIVED,
    MAX_JOB,
    MAX_LEARNED,
    MAX_MESSAGE,
    RESULT,
    RETIRE,
    Kind,
    Status,
)

_FAULT_STATUS = {"memory": Status.MEMORY, "bad-result": Status.BAD_RESULT}


def _recv_exact(sock: socket.socket, n: int, first: bytes = b"") -> bytes:
    buf = bytearray(first)
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("engine closed the channel")
        buf += chunk
    return bytes(buf)


def _receive_job(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The next job and its descriptors: the batch's, then the shared results'."""
    # Only the header is read with the descriptors, so a read never runs into the next job.
    data, fds, _flags, _addr = socket.recv_fds(sock, JOB_HEADER.size, 1 + MAX_DERIVED)
    if not data:
        raise EOFError("engine closed the channel")
    if not fds:
        raise EOFError("malformed job")
    header = _recv_exact(sock, JOB_HEADER.size, data)
    (length,) = JOB_HEADER.unpack(header)
    if length > MAX_JOB:
        for fd in fds:
            os.close(fd)
        raise EOFError("job too large")
    return json.loads(_recv_exact(sock, length)), fds


def _fault_message(exc: BaseException) -> str:
    """The text of a fault for the pool (which escapes it); never raises."""
    try:
        if isinstance(exc, FilterRejected):
            text = "; ".join(str(p) for p in exc.problems)
        else:
            text = str(exc)
    except BaseException:  # noqa: B036 - a message that cannot even be built is still a fault
        text = type(exc).__name__
    return text[:MAX_MESSAGE]


def worker_main(sock_fd: int, zygote_pid: int | None) -> None:
    """Serve one user's visits until the pool closes the channel or kills us. Never returns.

    ``zygote_pid`` is None when the worker is the init of its own PID namespace (it then dies
    with the zygote's namespace); otherwise it must not outlive the zygote, and through it the
    engine: a stopped or stuck worker then goes too.
    """
    from sandbox import limits

    code = 0
    try:
        if zygote_pid is not None and not limits.set_parent_death_signal(zygote_pid):
            os._exit(1)
        limits.close_fds([sock_fd])
        sock = socket.socket(fileno=sock_fd)
        _serve(sock)
    except EOFError:
        pass  # the pool closed the channel: retired
    except BaseException:  # noqa: B036 - whatever happens, the pool sees EOF and records it
        code = 1
    os._exit(code)


def _serve(sock: socket.socket) -> None:
    from sandbox import limits
    from sandbox.compile import CompiledFilter

    # Opened before hardening (afterwards no file can be opened) and read before each visit.
    statm = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
    warnings.simplefilter("ignore")  # warnings would try to read source files; nobody sees them
    compiled: dict[str, CompiledFilter] = {}
    hello: bytes | None = None
    released = True
    while True:
        job, fds = _receive_job(sock)
        if hello is None:
            try:
                setup = job["setup"]
                if isinstance(setup.get("core"), int):
                    os.sched_setaffinity(0, {setup["core"]})
                applied = limits.harden(
                    limits.Limits(**setup["limits"]), seccomp=setup.get("seccomp", True)
                )
            except BaseException:
                for fd in fds:
                    os.close(fd)
                raise
            hello = json.dumps(applied).encode()
            ready = hello
        else:
            ready = b""
        out = _Out(sock)
        maps = _map(fds)
        _run_visit(out, job, maps, statm, compiled, ready)
        out.frame(Kind.DONE, 0, b"" if released else RETIRE)
        out.flush()
        # Released after DONE, while the pool parks us and starts the next worker on this
        # core (~75 us of collecting and unmapping measured); if the pool stops us first,
        # this finishes when we resume, before the next job is read. A batch that cannot be
        # released is reported with the next visit's DONE, which retires us.
        released = _release(maps)


class _Out:
    """Frames for the pool, sent together where the pool needs no earlier word: each send wakes
    the engine, and per visit of a one-filter user two sends do (READY with COMPILED, RESULT
    with DONE) instead of four. A frame the pool's deadlines depend on is flushed before the
    work it announces (COMPILED before running; everything before compiling)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.pending: list[bytes] = []

    def frame(self, kind: int, index: int, payload: bytes = b"") -> None:
        self.pending.append(FRAME.pack(kind, index, len(payload)) + payload)

    def result(self, index: int, status: int, message: str, mask: bytes = b"") -> None:
        msg = message[:MAX_MESSAGE].encode("utf-8", "replace")
        self.frame(Kind.RESULT, index, RESULT.pack(status, len(msg)) + msg + mask)

    def flush(self) -> None:
        if self.pending:
            self.sock.sendall(b"".join(self.pending))
            self.pending.clear()


def _map(fds: list[int]) -> list[mmap.mmap]:
    """Map a job's descriptors read-only and close them. Arrays built from the mappings point
    into read-only mappings of sealed memfds: a write through any path faults in this process
    only."""
    maps = []
    try:
        for fd in fds:
            maps.append(mmap.mmap(fd, 0, access=mmap.ACCESS_READ))
            os.close(fd)  # a mapping keeps its own copy: never hold both for every descriptor
    except BaseException:
        for fd in fds[len(maps) :]:
            os.close(fd)
        raise
    return maps


def _release(maps: list[mmap.mmap]) -> bool:
    """Unmap a visit's batch; False when something still holds it (the worker then retires).

    Every object built from the batch lived in _run_visit's frame (the store, the columns,
    the filters' namespaces), but some are in reference cycles (a filter's globals and its
    functions; the store and its lightcurve columns), which only the collector frees. They
    are young: collecting the young generations costs ~0.1 ms; a full collection is the
    fallback.
    """
    for collect in (lambda: gc.collect(1), gc.collect, None):
        if collect is not None:
            collect()
        try:
            for mm in maps:
                mm.close()
            return True
        except BufferError:
            pass
    return False


def _run_visit(
    out: _Out,
    job: dict[str, Any],
    maps: list[mmap.mmap],
    statm: int,
    compiled: dict[str, Any],
    ready: bytes,
) -> None:
    import numpy as np

    from sandbox import limits
    from sandbox.compile import compile_filter
    from sandbox.errors import FilterFault
    from sandbox.run import describe, run_filter
    from sandbox.store import ColumnStore

    store = ColumnStore(_read_batch(maps[0]))
    n = len(store)
    _install(store, job.get("digest") or [], maps[1:])
    limits.rearm(job["cpu_s"], job["memory_mb"], limits.vm_size_from(statm))
    # A quiet job (nothing to compile) gets results only: the pool times each filter from the
    # previous result, so each result is sent before the next filter starts.
    quiet = job.get("quiet") is True
    if not quiet:
        out.frame(Kind.READY, 0, ready)

    keep: dict[str, Any] = {}
    share = job.get("share_s")  # this user's evaluation time left this visit (None: no limit)
    used = 0.0
    for index, key, filename, source in job["filters"]:
        if share is not None and used >= share:
            # Not started: the user's share is used up. What it compiled before stays, as the
            # pool's account says; a new source is dropped (the pool sends it again).
            if source is None and key in compiled:
                keep[key] = compiled[key]
            out.result(index, Status.OVER_SHARE, "")
            continue
        if source is not None:
            out.flush()  # the pool times compiling from what it has heard so far
            compiled.pop(key, None)
            try:
                compiled[key] = compile_filter(source, filename)
            except FilterRejected as exc:
                out.result(index, Status.REJECTED, _fault_message(exc))
                continue
            except BaseException as exc:  # noqa: B036
                out.result(
                    index, Status.REJECTED, f"{filename}: cannot be compiled ({type(exc).__name__})"
                )
                continue
        cf = compiled[key]  # KeyError: the pool broke its own protocol; exit, it sees EOF
        keep[key] = cf
        if not quiet:
            out.frame(Kind.COMPILED, index)
        out.flush()
        started = time.monotonic()
        try:
            mask = run_filter(cf, store)
        except FilterFault as fault:
            status = _FAULT_STATUS.get(fault.reason, Status.ERROR)
            out.result(index, status, _fault_message(fault))
            continue
        except MemoryError:
            out.result(index, Status.MEMORY, f"{filename}: ran out of memory")
            continue
        except BaseException as exc:  # noqa: B036 - SystemExit & co. must not end the worker silently
            out.result(index, Status.ERROR, f"{filename}: {describe(exc)}")
            continue
        finally:
            used += time.monotonic() - started
        if mask.dtype != np.bool_ or mask.shape != (n,):
            out.result(
                index, Status.BAD_RESULT, f"{filename}: the result is not one boolean per alert"
            )
            continue
        out.result(index, Status.OK, "", np.packbits(mask).tobytes())
    # The pool keeps the same account: what this visit ran is what stays compiled.
    compiled.clear()
    compiled.update(keep)
    if store.learned:
        report = store.learned[:]
        while report and len(json.dumps(report)) > MAX_LEARNED:
            report.pop()
        out.frame(Kind.LEARNED, 0, json.dumps(report).encode())


# The schema of the last batch read, by its IPC message: visits share one schema, and parsing it
# again (nested lightcurve structs) cost ~20-30 us of a worker whose caches went cold among a
# thousand others.
_schema: tuple[bytes, Any] | None = None


def _read_batch(mm: mmap.mmap) -> Any:
    """The record batch of an Arrow IPC file (the pool writes one batch), its schema reused
    from the previous visit when the schema message is the same bytes."""
    import pyarrow as pa

    global _schema
    if mm[:6] != b"ARROW1":
        raise ValueError("the visit batch is not an Arrow IPC file")
    # After the file's 8-byte magic comes an IPC stream: the schema message, then the batch.
    messages = pa.ipc.MessageReader.open_stream(pa.py_buffer(mm)[8:])
    head = messages.read_next_message()
    meta = head.metadata.to_pybytes()  # a copy: nothing may keep the mapping after the visit
    if _schema is None or _schema[0] != meta:
        _schema = (meta, pa.ipc.read_schema(head))
    return pa.ipc.read_record_batch(messages.read_next_message(), _schema[1])


def _install(store: Any, entries: list[Any], maps: list[mmap.mmap]) -> None:
    """Put the results the pool derived once for everyone into this visit's store; one that
    does not fit is skipped (the filters then compute it themselves)."""
    import numpy as np

    from sandbox.digest import install

    for recipe, index, layout in entries:
        try:
            mm = maps[index]
            arrays = {
                name: np.frombuffer(mm, np.dtype(dtype), count, offset)
                for name, dtype, count, offset in layout
            }
            install(store, recipe, arrays)
        except Exception:  # noqa: BLE001, S112 - computing it here is the fallback
            continue


# --- zygote -----------------------------------------------------------------------------------


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return -1


def zygote_main(ctrl_fd: int, workdir: str) -> None:
    """Serve fork requests on ``ctrl_fd`` until the pool closes it.

    When permitted (root), this process only launches: it moves its future children into new
    PID, network and IPC namespaces and forks the real zygote, which is the init of that PID
    namespace, and waits for it. Whatever way the engine dies, the launcher gets SIGKILL (its
    parent-death signal), then the zygote (its own), and with the zygote the kernel kills every
    process of its namespace: every worker, stopped or not.
    """
    from sandbox import limits, seccomp

    limits.set_parent_death_signal()
    # Warm every module a worker needs, so forks share them and workers never import (after
    # hardening they could not open the files).
    import numpy  # noqa: F401
    import pyarrow  # noqa: F401
    import pyarrow.compute  # noqa: F401 - pyarrow imports it lazily inside Array methods
    import pyarrow.ipc  # noqa: F401

    import sandbox.compile  # noqa: F401
    import sandbox.digest  # noqa: F401
    import sandbox.helpers  # noqa: F401
    import sandbox.namespace  # noqa: F401
    import sandbox.run  # noqa: F401
    import sandbox.store  # noqa: F401
    import sandbox.view  # noqa: F401

    filtered = seccomp.prepare()  # built once here; each worker only loads it
    # Move every object into the permanent generation: a worker's garbage collections then
    # skip them, instead of touching (and so copying, ~2 µs a page) all the zygote's memory.
    gc.collect()
    gc.freeze()
    # Workers (forked from here) never preempt the engine when it wakes one: a woken worker
    # waits for the engine to block instead of stalling it, on its serial path, for the
    # worker's whole visit (~0.1 ms per user on average at 1,000 users; ~3 % of a visit).
    # They cannot change it back: scheduling calls are not in their syscall allow-list.
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    os.chdir(workdir)
    pidns = limits.unshare(limits.CLONE_NEWPID | limits.CLONE_NEWNET | limits.CLONE_NEWIPC)
    if pidns:
        # As its namespace's init the zygote sees no parent (getppid() is 0), so it checks
        # that the launcher still lives through a pidfd, after arming its own death signal.
        launcher = os.pidfd_open(os.getpid())
        child = os.fork()
        if child != 0:
            os.close(ctrl_fd)
            _wait_for(child)
        limits.set_parent_death_signal()
        gone, _w, _x = select.select([launcher], [], [], 0)
        os.close(launcher)
        if gone:
            os._exit(1)
    netns = pidns or limits.unshare(limits.CLONE_NEWNET | limits.CLONE_NEWIPC)
    ctrl = socket.socket(fileno=ctrl_fd)
    zygote = os.getpid()
    hello = {
        "pid": zygote,
        "netns": netns,
        "pidns": pidns,
        "root": os.getuid() == 0,
        "seccomp": filtered,
        "threads": _threads(),
    }
    ctrl.send(b"Z" + json.dumps(hello).encode())
    ctrl.settimeout(1.0)
    while True:
        _reap()
        try:
            data, fds, _flags, _addr = socket.recv_fds(ctrl, 16, 1)
        except TimeoutError:
            continue
        except OSError:
            break
        if not data:
            break
        if data != b"F" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            continue
        pid = _spawn(ctrl, fds[0], zygote, pidns)
        os.close(fds[0])
        # The pidfd is opened before this process reaps anything, so it names exactly this
        # worker even if it has already exited; the pool signals through it, never by pid.
        try:
            pidfd = os.pidfd_open(pid) if pid > 0 else -1
        except OSError:
            pidfd = -1
        if pidfd < 0:  # no worker: the pool sees its channel closed, a failed start
            ctrl.send(struct.pack(">I", 0))
            continue
        try:
            socket.send_fds(ctrl, [struct.pack(">I", pid)], [pidfd])
        finally:
            os.close(pidfd)
    os._exit(0)


def _wait_for(child: int) -> None:  # pragma: no cover - the launcher's whole life
    while True:
        try:
            _pid, status = os.waitpid(child, 0)
        except ChildProcessError:
            os._exit(1)
        except InterruptedError:
            continue
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _spawn(ctrl: socket.socket, sock_fd: int, zygote: int, pidns: bool) -> int:
    """Fork one worker; with ``pidns``, as the init of new PID and IPC namespaces of its own.
    Returns its pid as this process sees it, or -1."""
    from sandbox import limits

    if not pidns:
        pid = os.fork()
        if pid == 0:
            ctrl.detach()  # the worker must not close (or use) the zygote's channel
            worker_main(sock_fd, zygote)
        return pid
    pid = limits.fork_into(limits.CLONE_NEWPID | limits.CLONE_NEWIPC)
    if pid == 0:
        ctrl.detach()
        worker_main(sock_fd, None)
    if pid < 0:  # not permitted here: a plain child, in the zygote's namespaces (still its own uid)
        return _spawn(ctrl, sock_fd, zygote, False)
    return pid


def _reap() -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


if __name__ == "__main__":  # pragma: no cover - started by sandbox.pool
    zygote_main(int(sys.argv[1]), sys.argv[2])
