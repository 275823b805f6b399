"""Run filters in isolated worker processes: the service's runner.

:class:`WorkerPool` is a drop-in for :class:`sandbox.run.InProcessRunner` (same
:class:`~sandbox.run.Outcome` per filter, keys in the order given) that never runs user code in
the engine process:

- A **zygote** (fresh interpreter, scrubbed environment, empty network namespace, numpy and
  pyarrow imported, no user code) forks one **worker per user**, which then serves that user's
  visits one after another: two users' filters never share a process, and every worker comes
  from a fresh fork of the clean zygote. See :mod:`sandbox.worker`.
- A worker compiles its user's filters once (again only when :meth:`WorkerPool.update` changes
  one) and per visit only receives the new batch: written once per visit as Arrow IPC into a
  sealed memfd whose descriptor travels over the worker's socket; every worker maps the same
  pages read-only and builds a fresh column store; every filter run gets fresh globals. Masks
  come back as packed bits; nothing is unpickled.
- Each worker is hardened once, before it compiles anything (:mod:`sandbox.limits`): memory,
  CPU, file and process limits, user ``nobody``, seccomp. The hard limits last its whole life;
  each visit gets its own soft CPU and memory allowance. Between visits a worker is stopped
  (``SIGSTOP``): no user code runs while the engine is not waiting for it.
- The pool enforces wall-clock deadlines with ``SIGKILL``: ``compile_s`` to compile and
  ``budget_s`` to load and run each filter. A filter that overruns, crashes, exhausts memory,
  kills its worker or returns a bad result gets a fault and its worker is killed; its user's
  remaining filters continue in a fresh worker, as does its next visit; other users never
  notice. After ``max_faults`` faults in a row a filter is suspended until it is replaced
  (:meth:`WorkerPool.update`).
- At most ``workers`` workers run at once, at most ``max_idle_workers`` wait between visits
  (least recently used go first), and a worker is retired after ``max_visits_per_worker``
  visits, when its memory creeps or its CPU time nears its lifetime limit.

:func:`safe_compile` compiles a submitted file in a throwaway process with a deadline, so that
not even the parser ever chokes the engine on hostile input.
"""

from __future__ import annotations

import errno
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
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import numpy as np
import pyarrow as pa

from sandbox import worker as wire
from sandbox.compile import CompiledFilter, compile_filter
from sandbox.errors import FilterFault, FilterRejected, PoolError, Problem
from sandbox.limits import clean_environment
from sandbox.run import Outcome

__all__ = ["PoolError", "WorkerPool", "safe_compile"]

log = logging.getLogger("sandbox.pool")

# The directory holding the ``sandbox`` package: the zygote runs isolated (``python -I``) and
# is told explicitly where to import from, never through the engine's environment.
_ROOT = str(Path(__file__).resolve().parent.parent)


def _user(key: str) -> str:
    return key.split("/", 1)[0]


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


_CLK_TCK = os.sysconf("SC_CLK_TCK")
_MB = 2**20
# CPU seconds a worker may use over its whole life beyond its first visit's allowance: the
# hard RLIMIT_CPU, a backstop only. Each visit gets its own soft limit (sandbox.limits.rearm)
# and the wall-clock deadlines strike first; the pool retires a worker before its cumulative
# CPU time could reach this (an honest worker uses milliseconds per visit).
_LIFETIME_CPU_S = 600
# Address space a worker's limit keeps for the visit batches it maps after hardening, at the
# least; a batch larger than a worker's reserve goes to a fresh worker sized for it.
_MIN_RESERVE_MB = 256


@dataclass
class _Worker:
    """Our side of one user's long-lived worker: its channel, its budgets, what it has compiled,
    and where it is in the current visit."""

    user: str
    sock: socket.socket
    pid: int
    pidfd: int
    statfd: int  # /proc/<pid>/stat, opened at fork: the engine's own view of its CPU and memory
    cpu_limit: float  # its hard RLIMIT_CPU [s]
    reserve: int  # bytes of visit batch its address-space limit leaves room for
    compiled: dict[str, CompiledFilter] = field(default_factory=dict)  # key → what it compiled
    visits: int = 0
    base_vm: int | None = None  # its address-space size when hardened (batch excluded)
    fresh: bool = True  # no visit finished yet
    last_visit: int = 0  # WorkerPool._visit_no of its last visit (for LRU eviction)
    # The current visit. Phases: starting → (compiling → running)* → closing → idle, or
    # split after an out-of-memory result (the rest of the visit goes to a fresh worker).
    items: list[int] = field(default_factory=list)
    job: dict[str, CompiledFilter] = field(default_factory=dict)  # key → filter, this visit
    sent: set[str] = field(default_factory=set)  # keys whose source went with this job
    phase: str = "starting"
    pos: int = 0
    started: float = 0.0
    deadline: float = 0.0
    buf: bytearray = field(default_factory=bytearray)
    failure: str | None = None
    retire: bool = False
    cpu: int = -1  # the core it is pinned to for this visit

    def signal(self, sig: int) -> bool:
        try:
            signal.pidfd_send_signal(self.pidfd, sig)
            return True
        except ProcessLookupError:
            return False

    def stat(self) -> tuple[float, int] | None:
        """CPU seconds used and address-space bytes, as the kernel reports them; None if gone."""
        try:
            data = os.pread(self.statfd, 1024, 0)
            fields = data.rsplit(b")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / _CLK_TCK, int(fields[20])
        except (OSError, IndexError, ValueError):
            return None

    def release(self) -> None:
        self.signal(signal.SIGKILL)  # never trust it to exit: it may be stopped or hostile
        self.sock.close()
        os.close(self.pidfd)
        os.close(self.statfd)


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
        Memory a worker may allocate per visit beyond what it holds (the interpreter, its
        compiled filters and the mapped batch).
    workers : int
        Workers running a visit at once (deadlines are wall-clock: do not exceed the cores).
    max_faults : int
        Consecutive faulty visits after which a filter is suspended.
    compile_s : float
        Wall-clock time to compile each filter in its worker (only when it is new or changed).
    startup_s : float
        Time a worker may take to start (fork and harden) and to map a visit's batch.
    max_idle_workers : int
        Live workers kept between visits, one per user; beyond it the least recently used are
        stopped (their users' next visit starts a fresh worker). Idle workers are ``SIGSTOP``-ed:
        no user code runs between visits.
    max_visits_per_worker : int
        Visits after which a worker is retired and its user's next visit starts a fresh one, so
        that its memory cannot creep. A worker is also retired early when its address space
        grows by more than ``memory_mb / 2`` between visits, when its cumulative CPU time nears
        its lifetime limit, when a batch would not fit its reserve, and after any fault.

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
        max_idle_workers: int = 64,
        max_visits_per_worker: int = 1000,
    ):
        self.filters = list(filters)
        self.budget_s = budget_s
        self.memory_mb = memory_mb
        self.workers = max(1, workers)
        self.max_faults = max_faults
        self.compile_s = compile_s
        self.startup_s = startup_s
        self.max_idle_workers = max(0, max_idle_workers)
        self.max_visits_per_worker = max(1, max_visits_per_worker)
        self._faults: dict[str, int] = {}
        self._suspended: dict[str, FilterFault] = {}
        self._enforced: dict[str, bool] = {}
        self._idle: OrderedDict[str, _Worker] = OrderedDict()  # user → worker, least recent first
        self._visit_no = 0
        # Cores to pin running workers to, one each (see _pin); none when they would share.
        cpus = sorted(os.sched_getaffinity(0))
        self._cpus = cpus if 1 < len(cpus) and self.workers <= len(cpus) else []
        self._batch_bytes = 0
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
        suspension; ``None`` removes it.

        The user's live worker, if any, compiles the new version on its next visit (the old one
        is dropped there); a user left with no filter loses their worker now.
        """
        self._suspended.pop(key, None)
        self._faults.pop(key, None)
        rest = [(k, c) for k, c in self.filters if k != key]
        if compiled is None:
            self.filters = rest
            user = _user(key)
            if user in self._idle and not any(_user(k) == user for k, _ in rest):
                self._idle.pop(user).release()
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
        self._visit_no += 1
        results: list[Outcome | None] = [None] * len(self.filters)
        infra: set[int] = set()
        by_user: dict[str, list[int]] = {}
        columns: set[str] | None = set()
        for i, (key, compiled) in enumerate(self.filters):
            if key in self._suspended:
                last = self._suspended[key]
                results[i] = Outcome(key, None, 0.0, FilterFault(
                    f"{key} is suspended after {self.max_faults} faults in a row (last: {last}); "
                    "fix it and resubmit to run it again", reason="suspended"))
                continue
            by_user.setdefault(_user(key), []).append(i)
            if columns is not None:
                columns = None if compiled.columns is None else columns | compiled.columns
        if by_user:
            batch_fd = share_batch(batch, lambda name: columns is None or name in columns)
            try:
                size = self._batch_bytes = os.fstat(batch_fd).st_size
                queue = deque(by_user.items())
                self._run(batch_fd, size, n, queue, results, infra)
            finally:
                os.close(batch_fd)
        out = [r for r in results if r is not None]
        assert len(out) == len(results)
        self._account(out, infra)
        return out

    def close(self) -> None:
        """Stop every worker and the zygote, and remove the working directory."""
        while self._idle:
            self._idle.popitem()[1].release()
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

    def _run(self, batch_fd: int, size: int, n: int, queue: deque[tuple[str, list[int]]],
             results: list[Outcome | None], infra: set[int]) -> None:
        sel = selectors.DefaultSelector()
        active: list[_Worker] = []
        try:
            while queue or active:
                while queue and len(active) < self.workers:
                    user, items = queue.popleft()
                    w = self._dispatch(user, items, batch_fd, size, n)
                    self._pin(w, active)
                    active.append(w)
                    sel.register(w.sock, selectors.EVENT_READ, w)
                timeout = max(0.0, min(w.deadline for w in active) - time.monotonic())
                for key, _events in sel.select(timeout):
                    self._read(key.data, n, results)
                now = time.monotonic()
                for w in list(active):
                    if w.phase == "idle" and w.failure is None:
                        sel.unregister(w.sock)
                        active.remove(w)
                        self._park(w)
                    elif w.phase == "split":
                        sel.unregister(w.sock)
                        active.remove(w)
                        if w.pos < len(w.items):
                            queue.appendleft((w.user, w.items[w.pos :]))
                        w.release()
                    elif w.failure is not None or now >= w.deadline:
                        sel.unregister(w.sock)
                        active.remove(w)
                        if w.phase in ("closing", "idle"):
                            # Every result is in; it just did not release the batch cleanly.
                            log.info("sandbox worker for %s retired: %s", w.user, w.failure or "slow to finish")
                        else:
                            self._fail(w, n, now, results, infra, queue)
                        w.release()
        finally:
            for w in active:
                w.release()
            sel.close()

    def _dispatch(self, user: str, items: list[int], batch_fd: int, size: int, n: int) -> _Worker:
        """Hand this visit to the user's live worker, or to a fresh one; never to another
        user's."""
        cpu = math.ceil(len(items) * (self.budget_s + self.compile_s) + self.startup_s)
        w = self._idle.pop(user, None)
        if w is not None and not self._reusable(w, cpu, size):
            w.release()
            w = None
        if w is None:
            w = self._fork(user, cpu, size)
        w.items, w.job, w.sent, w.pos, w.buf = items, {}, set(), 0, bytearray()
        w.phase, w.failure, w.retire = "starting", None, False
        w.deadline = time.monotonic() + self.startup_s
        w.last_visit = self._visit_no
        entries = []
        for i in items:
            key, compiled = self.filters[i]
            w.job[key] = compiled
            if w.compiled.get(key) is compiled:
                entries.append([i, key, compiled.filename, None])
            else:
                # New, changed or never compiled there: send the source; the old version (if
                # any) is gone from the worker as soon as it reads this.
                w.compiled.pop(key, None)
                w.sent.add(key)
                entries.append([i, key, compiled.filename, compiled.source])
        job: dict[str, object] = {"filters": entries, "cpu_s": cpu, "memory_mb": self.memory_mb}
        if w.fresh:
            job["setup"] = {"limits": {"memory_mb": self.memory_mb, "cpu_s": math.ceil(w.cpu_limit),
                                       "nofile": 16, "reserve_mb": w.reserve // _MB + self.memory_mb}}
        body = json.dumps(job).encode()
        try:
            socket.send_fds(w.sock, [wire.JOB_HEADER.pack(len(body)) + body[: 1 << 15]], [batch_fd])
            w.sock.sendall(body[1 << 15 :])
        except OSError as exc:
            w.failure = f"could not hand the job to the worker ({exc})"
        w.sock.setblocking(False)
        return w

    def _pin(self, w: _Worker, active: list[_Worker]) -> None:
        """Run ``w`` on a core no other running worker has.

        Left alone, the scheduler tends to wake a worker on the core of the engine that woke
        it, so the two running workers often share one core while the other idles (measured:
        ~170 ms instead of ~135 ms for 100 one-filter users). Pinning needs no privilege over
        our own children beyond what we have (root, or the same user); without it we go on
        unpinned.
        """
        if not self._cpus:
            return
        taken = {x.cpu for x in active}
        w.cpu = next((c for c in self._cpus if c not in taken), -1)
        if w.cpu < 0:
            return
        try:
            os.sched_setaffinity(w.pid, {w.cpu})
        except OSError as exc:  # gone already (it fails on its own), or not permitted
            if exc.errno == errno.EPERM:
                self._cpus = []

    def _reusable(self, w: _Worker, cpu: int, size: int) -> bool:
        """Whether an idle worker can take this visit: alive, silent while idle, and within
        its CPU and address-space budgets. Then it is resumed."""
        try:
            w.sock.setblocking(False)
            pending = w.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            pending = None
        except OSError:
            pending = b""
        if pending is not None:  # it wrote while idle, or its channel closed: it is not ours
            log.warning("sandbox worker for %s is retired: its channel is not quiet", w.user)
            return False
        stat = w.stat()
        if stat is None or stat[0] + cpu > w.cpu_limit - 1 or size > w.reserve:
            return False
        return w.signal(signal.SIGCONT)

    def _fork(self, user: str, cpu: int, size: int) -> _Worker:
        if self._zygote is None or not self._zygote.alive():
            log.warning("sandbox zygote is gone; starting a new one")
            if self._zygote is not None:
                self._zygote.close()
            self._zygote = _Zygote(self._workdir)
        sock, pid, pidfd = self._zygote.fork()
        try:
            statfd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            statfd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)  # gone already: stat() fails
        reserve = max(_MIN_RESERVE_MB * _MB, 2 * size)
        return _Worker(user, sock, pid, pidfd, statfd, cpu_limit=cpu + _LIFETIME_CPU_S, reserve=reserve)

    def _park(self, w: _Worker) -> None:
        """After a clean visit: stop the worker until its user's next visit, or retire it."""
        w.visits += 1
        w.fresh = False
        w.compiled = {k: c for k, c in w.job.items() if w.compiled.get(k) is c}
        stat = w.stat()
        reason = None
        if w.retire:
            reason = "it could not release the batch"
        elif stat is None:
            reason = "it is gone"
        elif w.visits >= self.max_visits_per_worker:
            reason = f"{w.visits} visits"
        elif w.base_vm is not None and stat[1] - w.base_vm > self.memory_mb * _MB // 2:
            reason = f"its memory grew by {(stat[1] - w.base_vm) // _MB} MB"
        if reason is None and self.max_idle_workers and w.signal(signal.SIGSTOP):
            self._idle[w.user] = w
            self._evict()
            return
        if reason is not None:
            log.info("sandbox worker for %s retired: %s", w.user, reason)
        w.release()

    def _evict(self) -> None:
        """Keep at most ``max_idle_workers`` idle: drop the least recently used. Workers not
        yet used in this visit are kept (they are about to be), so that users who visit in a
        steady order keep the same workers."""
        while len(self._idle) > self.max_idle_workers:
            victim = next((u for u, w in self._idle.items() if w.last_visit == self._visit_no), None)
            if victim is None:
                victim = next(iter(self._idle))
            self._idle.pop(victim).release()

    def _read(self, w: _Worker, n: int, results: list[Outcome | None]) -> None:
        try:
            chunk = w.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError as exc:
            w.failure = f"the worker's channel failed ({exc})"
            return
        if not chunk:
            w.failure = "died"
            return
        w.buf += chunk
        limit = wire.RESULT.size + 4 * wire.MAX_MESSAGE + (n + 7) // 8 + 4096
        while w.failure is None and w.phase not in ("idle", "split") and len(w.buf) >= wire.FRAME.size:
            kind, index, length = wire.FRAME.unpack_from(w.buf)
            if length > limit:
                w.failure = "broke protocol (oversized frame)"
                return
            if len(w.buf) < wire.FRAME.size + length:
                return
            payload = bytes(w.buf[wire.FRAME.size : wire.FRAME.size + length])
            del w.buf[: wire.FRAME.size + length]
            self._frame(w, kind, index, payload, n, results)
        if w.phase == "idle" and w.buf:
            w.failure = "broke protocol (data after DONE)"

    def _frame(self, w: _Worker, kind: int, index: int, payload: bytes, n: int,
               results: list[Outcome | None]) -> None:
        # Everything here comes from a process running untrusted code: check it all.
        now = time.monotonic()
        current = w.items[w.pos] if w.pos < len(w.items) else None
        if kind == wire.READY and w.phase == "starting":
            if w.fresh:
                # No user code has run in it yet: what it says about its limits is trustworthy.
                try:
                    applied = json.loads(payload)
                    self._enforced = {str(k): v is True for k, v in applied.items()}
                except (ValueError, AttributeError):
                    w.failure = "broke protocol (bad READY)"
                    return
                stat = w.stat()
                if stat is not None:
                    w.base_vm = stat[1] - self._batch_bytes  # the mapped batch is not its own
            elif payload:
                w.failure = "broke protocol (bad READY)"
                return
            w.phase, w.deadline = "compiling", now + self.compile_s
        elif kind == wire.COMPILED and w.phase == "compiling" and index == current and not payload:
            key, compiled = self.filters[index]
            if key in w.sent:
                w.compiled[key] = compiled
            w.phase, w.started, w.deadline = "running", now, now + self.budget_s
        elif kind == wire.RESULT_KIND and w.phase in ("compiling", "running") and index == current:
            outcome = self._outcome(w, index, payload, n, now)
            if outcome is None:
                w.failure = "broke protocol (bad RESULT)"
                return
            results[index] = outcome
            w.pos += 1
            if outcome.fault is not None and outcome.fault.reason == "memory":
                # Out of memory may have left the interpreter half-broken: the worker goes, and
                # the user's remaining filters continue in a fresh one (see _run).
                w.phase = "split"
            elif w.pos == len(w.items):
                w.phase, w.deadline = "closing", now + max(1.0, self.compile_s)
            else:
                w.phase, w.deadline = "compiling", now + self.compile_s
        elif kind == wire.DONE and w.phase == "closing" and payload in (b"", wire.RETIRE):
            w.phase, w.retire = "idle", payload == wire.RETIRE
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
        w.signal(signal.SIGKILL)
        if w.phase == "starting" and not w.fresh:
            # A live worker that failed to take a new visit (say, it died while stopped):
            # nothing of this visit ran; a fresh worker takes it.
            log.warning("sandbox worker for %s failed to resume (%s); forking a fresh one",
                        w.user, w.failure or "timed out")
            queue.appendleft((w.user, w.items))
            return
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

