"""Run filters in isolated worker processes: the service's runner.

:class:`WorkerPool` is a drop-in for :class:`sandbox.run.InProcessRunner` (same
:class:`~sandbox.run.Outcome` per filter, keys in the order given) that never runs user code in
the engine process:

- A **zygote** (fresh interpreter, scrubbed environment, empty network namespace, numpy and
  pyarrow imported, no user code) forks one **worker per user per visit**: two users' filters
  never share a process, and no process outlives its visit. See :mod:`sandbox.worker`.
- The visit batch is written once per visit as Arrow IPC into a sealed memfd; every worker maps
  the same pages read-only. Masks come back as packed bits over a socket; nothing is unpickled.
- Each worker is hardened before it compiles anything (:mod:`sandbox.limits`): memory, CPU,
  file and process limits, user ``nobody``, seccomp.
- The pool enforces wall-clock deadlines with ``SIGKILL``: ``compile_s`` to compile and
  ``budget_s`` to load and run each filter. A filter that overruns, crashes, exhausts memory,
  kills its worker or returns a bad result gets a fault; its user's remaining filters continue
  in a fresh worker; other users never notice. After ``max_faults`` faults in a row a filter is
  suspended until it is replaced (:meth:`WorkerPool.update`).

:func:`safe_compile` compiles a submitted file in a throwaway process with a deadline, so that
not even the parser ever chokes the engine on hostile input.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import numpy as np
import pyarrow as pa

from engine.errors import MinibrokerError
from sandbox import worker as wire
from sandbox.compile import CompiledFilter, compile_filter
from sandbox.errors import FilterFault, FilterRejected, Problem
from sandbox.limits import clean_environment
from sandbox.run import Outcome

__all__ = ["PoolError", "WorkerPool", "safe_compile"]

log = logging.getLogger("sandbox.pool")

# The directory holding the ``sandbox`` package: the zygote runs isolated (``python -I``) and
# is told explicitly where to import from, never through the engine's environment.
_ROOT = str(Path(__file__).resolve().parent.parent)


class PoolError(MinibrokerError):
    """The worker pool itself cannot work (the zygote did not start); not a filter's fault."""


def _python(code: str) -> list[str]:
    return [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {_ROOT!r}); {code}"]


class _Zygote:
    """The clean parent of all workers (see :mod:`sandbox.worker`)."""

    def __init__(self, workdir: str, timeout_s: float = 60.0):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        code = f"from sandbox.worker import zygote_main; zygote_main({theirs.fileno()}, {workdir!r})"
        self.proc = subprocess.Popen(
            _python(code),
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
            log.warning("sandbox zygote runs %s threads; forking it may deadlock", self.info.get("threads"))
        if not self.info.get("netns"):
            log.warning("sandbox workers share the host network namespace; only seccomp keeps them off the network")

    def fork(self) -> tuple[socket.socket, int, int]:
        """A new worker: our end of its channel, its pid and a pidfd to signal it."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            socket.send_fds(self.sock, [b"F"], [theirs.fileno()])
            data, fds, _flags, _addr = socket.recv_fds(self.sock, 16, 1)
        except OSError as exc:
            ours.close()
            raise PoolError(f"the sandbox zygote stopped answering ({exc})") from None
        finally:
            theirs.close()
        if len(data) != 4 or len(fds) != 1:
            ours.close()
            for fd in fds:
                os.close(fd)
            raise PoolError("the sandbox zygote stopped answering")
        return ours, struct.unpack(">I", data)[0], fds[0]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        self.sock.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class _Worker:
    """Our side of one worker: the user's filters it runs and where it is in them."""

    user: str
    items: list[int]
    sock: socket.socket
    pid: int
    pidfd: int
    deadline: float
    phase: str = "starting"  # starting → (compiling → running)* → finished | failed
    pos: int = 0
    started: float = 0.0
    buf: bytearray = field(default_factory=bytearray)
    failure: str | None = None

    def kill(self) -> None:
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def release(self) -> None:
        self.kill()  # also after a clean finish: a worker never outlives its last result
        self.sock.close()
        os.close(self.pidfd)


def share_batch(batch: pa.RecordBatch, wanted: Callable[[str], bool] = lambda name: True) -> int:
    """Write ``batch`` once as Arrow IPC into a sealed memfd; return a read-only descriptor.

    Only the top-level columns for which ``wanted(name)`` holds are written (a filter can only
    read a column whose every path part its source mentions; cutouts and unused lightcurves
    are most of a visit's bytes). The seals forbid any write, resize or new writable mapping,
    for everyone, for the memfd's life.
    """
    keep = [i for i, f in enumerate(batch.schema) if wanted(f.name)]
    if len(keep) != batch.num_columns:
        batch = batch.select(keep)
    fd = os.memfd_create("minibroker-visit", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        with pa.OSFile(f"/proc/self/fd/{fd}", "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
            writer.write_batch(batch)
        seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(fd)


class WorkerPool:
    """Runs filters in hardened, per-user worker processes; a drop-in for ``InProcessRunner``.

    Parameters
    ----------
    filters : sequence of (key, CompiledFilter)
        Keys are ``"user/filtername"``; the user is the part before the first slash.
    budget_s : float
        Wall-clock time each filter may take per visit to load and run (its module body and
        ``filter(alerts)``), measured by the engine; overrun means ``SIGKILL``.
    memory_mb : int
        Memory a worker may allocate beyond the interpreter and the mapped batch.
    workers : int
        Worker processes running at once.
    max_faults : int
        Consecutive faulty visits after which a filter is suspended.
    compile_s : float
        Wall-clock time to compile each filter in its worker.
    startup_s : float
        Time a new worker may take to map the batch and harden itself.

    Attributes
    ----------
    filters : list of (key, CompiledFilter)
        What runs, in order.
    """

    def __init__(
        self,
        filters: Sequence[tuple[str, CompiledFilter]],
        *,
        budget_s: float = 0.5,
        memory_mb: int = 1024,
        workers: int = 2,
        max_faults: int = 3,
        compile_s: float = 2.0,
        startup_s: float = 10.0,
    ):
        self.filters = list(filters)
        self.budget_s = budget_s
        self.memory_mb = memory_mb
        self.workers = max(1, workers)
        self.max_faults = max_faults
        self.compile_s = compile_s
        self.startup_s = startup_s
        self._faults: dict[str, int] = {}
        self._suspended: dict[str, FilterFault] = {}
        self._enforced: dict[str, bool] = {}
        self._workdir = tempfile.mkdtemp(prefix="minibroker-worker-")  # root-owned, 0700: empty for nobody
        self._zygote: _Zygote | None = _Zygote(self._workdir)

    # --- public surface -------------------------------------------------------------------

    @property
    def suspended(self) -> Mapping[str, FilterFault]:
        """Suspended filters: key → the fault that suspended it (``in``, iteration: the keys)."""
        return dict(self._suspended)

    @property
    def enforced(self) -> dict[str, bool]:
        """Which isolation layers took effect in the most recent worker (and the zygote)."""
        info = self._zygote.info if self._zygote else {}
        return {"netns": bool(info.get("netns")), **self._enforced}

    def update(self, key: str, compiled: CompiledFilter | None) -> None:
        """Replace (or add) the filter ``key`` after its owner resubmits it, lifting any
        suspension; ``None`` removes it."""
        self._suspended.pop(key, None)
        self._faults.pop(key, None)
        rest = [(k, c) for k, c in self.filters if k != key]
        if compiled is None:
            self.filters = rest
        elif len(rest) == len(self.filters):
            self.filters.append((key, compiled))
        else:
            self.filters = [(k, compiled if k == key else c) for k, c in self.filters]

    def run(self, batch: pa.RecordBatch) -> list[Outcome]:
        """Every filter over one visit; a failing filter yields a fault, never an exception.

        Raises
        ------
        PoolError
            Only when the zygote cannot be (re)started: an engine problem, not a filter's.
        """
        n = batch.num_rows
        results: list[Outcome | None] = [None] * len(self.filters)
        infra: set[int] = set()
        by_user: dict[str, list[int]] = {}
        for i, (key, _compiled) in enumerate(self.filters):
            if key in self._suspended:
                last = self._suspended[key]
                results[i] = Outcome(key, None, 0.0, FilterFault(
                    f"{key} is suspended after {self.max_faults} faults in a row (last: {last}); "
                    "fix it and resubmit to run it again", reason="suspended"))
            else:
                by_user.setdefault(key.split("/", 1)[0], []).append(i)
        if by_user:
            wanted = [self.filters[i][1].columns for items in by_user.values() for i in items]
            batch_fd = share_batch(batch, lambda name: any(c is None or name in c for c in wanted))
            try:
                self._run(batch_fd, n, deque(by_user.items()), results, infra)
            finally:
                os.close(batch_fd)
        out = [r for r in results if r is not None]
        assert len(out) == len(results)
        self._account(out, infra)
        return out

    def close(self) -> None:
        """Stop the zygote (and with it any worker) and remove the working directory."""
        if self._zygote is not None:
            self._zygote.close()
            self._zygote = None
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_zygote", None) is not None:
            self.close()

    # --- the visit loop --------------------------------------------------------------------

    def _run(self, batch_fd: int, n: int, queue: deque[tuple[str, list[int]]],
             results: list[Outcome | None], infra: set[int]) -> None:
        sel = selectors.DefaultSelector()
        active: list[_Worker] = []
        try:
            while queue or active:
                while queue and len(active) < self.workers:
                    user, items = queue.popleft()
                    w = self._start(user, items, batch_fd, n)
                    active.append(w)
                    sel.register(w.sock, selectors.EVENT_READ, w)
                timeout = max(0.0, min(w.deadline for w in active) - time.monotonic())
                for key, _events in sel.select(timeout):
                    self._read(key.data, n, results)
                now = time.monotonic()
                for w in list(active):
                    if w.phase == "finished":
                        pass
                    elif w.failure is not None or now >= w.deadline:
                        self._fail(w, n, now, results, infra, queue)
                    else:
                        continue
                    sel.unregister(w.sock)
                    w.release()
                    active.remove(w)
        finally:
            for w in active:
                w.release()
            sel.close()

    def _start(self, user: str, items: list[int], batch_fd: int, n: int) -> _Worker:
        if self._zygote is None or not self._zygote.alive():
            log.warning("sandbox zygote is gone; starting a new one")
            if self._zygote is not None:
                self._zygote.close()
            self._zygote = _Zygote(self._workdir)
        sock, pid, pidfd = self._zygote.fork()
        cpu = math.ceil(len(items) * (self.budget_s + self.compile_s) + self.startup_s)
        job = {
            "filters": [[i, self.filters[i][1].filename, self.filters[i][1].source] for i in items],
            "limits": {"memory_mb": self.memory_mb, "cpu_s": cpu, "nofile": 16},
        }
        body = json.dumps(job).encode()
        w = _Worker(user, items, sock, pid, pidfd, time.monotonic() + self.startup_s)
        try:
            header = wire.JOB_HEADER.pack(len(body))
            socket.send_fds(sock, [header + body[: 1 << 15]], [batch_fd])
            sock.sendall(body[1 << 15 :])
        except OSError as exc:
            w.failure = f"could not hand the job to the worker ({exc})"
        sock.setblocking(False)
        return w

    def _read(self, w: _Worker, n: int, results: list[Outcome | None]) -> None:
        try:
            chunk = w.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError as exc:
            w.failure = f"the worker's channel failed ({exc})"
            return
        if not chunk:
            if w.phase != "finished":
                w.failure = "died"
            return
        w.buf += chunk
        limit = wire.RESULT.size + 4 * wire.MAX_MESSAGE + (n + 7) // 8 + 4096
        while w.failure is None and w.phase != "finished" and len(w.buf) >= wire.FRAME.size:
            kind, index, length = wire.FRAME.unpack_from(w.buf)
            if length > limit:
                w.failure = "broke protocol (oversized frame)"
                return
            if len(w.buf) < wire.FRAME.size + length:
                return
            payload = bytes(w.buf[wire.FRAME.size : wire.FRAME.size + length])
            del w.buf[: wire.FRAME.size + length]
            self._frame(w, kind, index, payload, n, results)

    def _frame(self, w: _Worker, kind: int, index: int, payload: bytes, n: int,
               results: list[Outcome | None]) -> None:
        # Everything here comes from a process running untrusted code: check it all.
        now = time.monotonic()
        current = w.items[w.pos] if w.pos < len(w.items) else None
        if kind == wire.READY and w.phase == "starting":
            try:
                applied = json.loads(payload)
                self._enforced = {str(k): v is True for k, v in applied.items()}
            except (ValueError, AttributeError):
                w.failure = "broke protocol (bad READY)"
                return
            w.phase, w.deadline = "compiling", now + self.compile_s
        elif kind == wire.COMPILED and w.phase == "compiling" and index == current and not payload:
            w.phase, w.started, w.deadline = "running", now, now + self.budget_s
        elif kind == wire.RESULT_KIND and w.phase in ("compiling", "running") and index == current:
            outcome = self._outcome(w, index, payload, n, now)
            if outcome is None:
                w.failure = "broke protocol (bad RESULT)"
                return
            results[index] = outcome
            w.pos += 1
            if w.pos == len(w.items):
                w.phase = "finished"
            else:
                w.phase, w.deadline = "compiling", now + self.compile_s
        else:
            w.failure = f"broke protocol (frame {kind} in phase {w.phase})"

    def _outcome(self, w: _Worker, index: int, payload: bytes, n: int, now: float) -> Outcome | None:
        key, compiled = self.filters[index]
        if len(payload) < wire.RESULT.size:
            return None
        status, mlen = wire.RESULT.unpack_from(payload)
        rest = payload[wire.RESULT.size :]
        if mlen > len(rest):
            return None
        message = rest[:mlen].decode("utf-8", "replace")[: wire.MAX_MESSAGE]
        bits = rest[mlen:]
        seconds = now - w.started if w.phase == "running" else 0.0
        if status == wire.OK:
            if len(bits) != (n + 7) // 8 or mlen:
                return None
            mask = np.unpackbits(np.frombuffer(bits, np.uint8), count=n).astype(bool)
            return Outcome(key, mask, seconds)
        if status not in wire.STATUS_REASON or bits:
            return None
        return Outcome(key, None, seconds, FilterFault(message or f"{compiled.filename}: failed",
                                                       reason=wire.STATUS_REASON[status]))

    def _fail(self, w: _Worker, n: int, now: float, results: list[Outcome | None],
              infra: set[int], queue: deque[tuple[str, list[int]]]) -> None:
        """Kill ``w``; fault the filter it was on; queue the user's remaining filters."""
        w.kill()
        if w.phase == "starting":
            # Not any filter's doing (no user code has run yet): report, but do not count.
            log.error("sandbox worker for %s failed to start: %s", w.user, w.failure or "timed out")
            for i in w.items:
                infra.add(i)
                results[i] = Outcome(self.filters[i][0], None, 0.0, FilterFault(
                    f"{self.filters[i][1].filename}: not run on this visit: the engine could not "
                    "start a worker (not a problem with your filter)", reason="killed"))
            return
        index = w.items[w.pos]
        key, compiled = self.filters[index]
        name = compiled.filename
        seconds = now - w.started if w.phase == "running" else 0.0
        if w.failure is None and w.phase == "running":
            fault = FilterFault(
                f"{name}: stopped after exceeding its time budget of {self.budget_s:g} s on {n} "
                "alerts; use column operations instead of Python loops over alerts", reason="timeout")
        elif w.failure is None:
            fault = FilterFault(f"{name}: stopped: compiling took longer than {self.compile_s:g} s; "
                                "simplify the file", reason="timeout")
        elif w.failure == "died":
            fault = FilterFault(
                f"{name}: the process running this filter died (it may have exceeded the memory "
                f"limit of {self.memory_mb} MB or another resource limit)", reason="killed")
        else:
            fault = FilterFault(f"{name}: stopped: its worker {w.failure}", reason="killed")
        results[index] = Outcome(key, None, seconds, fault)
        rest = w.items[w.pos + 1 :]
        if rest:
            queue.appendleft((w.user, rest))  # a fresh worker; the faulty filter is not in it

    def _account(self, outcomes: list[Outcome], infra: set[int]) -> None:
        for i, o in enumerate(outcomes):
            if i in infra or (o.fault is not None and o.fault.reason == "suspended"):
                continue
            if o.fault is None:
                self._faults.pop(o.key, None)
                continue
            count = self._faults[o.key] = self._faults.get(o.key, 0) + 1
            if count >= self.max_faults:
                self._suspended[o.key] = o.fault
                log.warning("filter %s suspended after %d faults: %s", o.key, count, o.fault)


# --- compiling at submit ------------------------------------------------------------------------


def safe_compile(source: str, filename: str = "<filter>", timeout_s: float = 10.0) -> CompiledFilter:
    """Compile a submitted filter without risking the calling process.

    The file is first compiled in a throwaway interpreter with a memory and CPU limit and a
    wall-clock deadline (``SIGKILL``); only source that compiles cleanly there is compiled
    again here for its code object. Every failure, including a crash, a hang or an exception
    other than ``SyntaxError`` inside the compiler, becomes :class:`FilterRejected`.

    Parameters
    ----------
    source : str
        The file's text.
    filename : str
        Shown in every problem.
    timeout_s : float
        Wall-clock limit of the throwaway compile, including interpreter start (~0.3 s).
    """

    def reject(rule: str, message: str) -> FilterRejected:
        return FilterRejected([Problem(filename, None, rule, message)])

    if not isinstance(source, str):
        raise reject("encoding", "a filter is UTF-8 text")
    try:
        data = source.encode("utf-8")
    except UnicodeError:
        raise reject("encoding", "the file is not valid UTF-8 text; save it as UTF-8") from None
    try:
        proc = subprocess.run(
            _python("from sandbox.pool import _compile_child; _compile_child()") + [filename],
            input=data, capture_output=True, timeout=timeout_s, env=clean_environment(), cwd="/",
        )
    except subprocess.TimeoutExpired:
        raise reject("too-complex", f"compiling took longer than {timeout_s:g} s; simplify the file") from None
    try:
        report = json.loads(proc.stdout)
        problems = [Problem(filename, p[0] if isinstance(p[0], int) else None, str(p[1]), str(p[2]))
                    for p in report["problems"]]
    except (ValueError, KeyError, TypeError, IndexError):
        raise reject("too-complex", f"the compiler failed on this file (exit status {proc.returncode}); "
                     "simplify it") from None
    if problems:
        raise FilterRejected(problems)
    try:
        return compile_filter(source, filename)
    except FilterRejected:
        raise
    except Exception as exc:  # the child compiled it; anything here is still a rejection
        raise reject("too-complex", f"the file cannot be compiled ({type(exc).__name__})") from None


def _compile_child() -> None:  # pragma: no cover - runs in the throwaway interpreter
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))
    resource.setrlimit(resource.RLIMIT_CPU, (30, 31))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    filename = sys.argv[1] if len(sys.argv) > 1 else "<filter>"
    problems: list[list[object]] = []
    try:
        source = sys.stdin.buffer.read().decode("utf-8")
        compile_filter(source, filename)
    except FilterRejected as exc:
        problems = [[p.line, p.rule, p.message] for p in exc.problems]
    except BaseException as exc:  # noqa: B036 - every failure is a rejection, reported as data
        problems = [[None, "too-complex", f"the file cannot be compiled ({type(exc).__name__}); simplify it"]]
    sys.stdout.write(json.dumps({"problems": problems}))
    sys.stdout.flush()

