"""The visit loop: hand each user's filters to that user's worker, enforce deadlines, collect
masks and faults (see :mod:`sandbox.pool` for the whole picture)."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import resource
import select
import signal
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from types import TracebackType

import numpy as np
import pyarrow as pa

from sandbox.compile import CompiledFilter
from sandbox.digest import Digest
from sandbox.errors import FaultReason, FilterFault
from sandbox.keys import FilterKey, display_name
from sandbox.pool import protocol as wire
from sandbox.pool.handle import _LIFETIME_CPU_S, _MB, _MIN_RESERVE_MB, Phase, WorkerHandle
from sandbox.pool.protocol import Kind, Status
from sandbox.pool.shm import leaf_paths, project, share_batch
from sandbox.pool.suspension import Suspensions
from sandbox.pool.uids import UidPool
from sandbox.pool.workdir import Workdir
from sandbox.pool.zygote import Zygote
from sandbox.run import Outcome
from sandbox.shares import Shares

__all__ = ["WorkerPool"]

log = logging.getLogger("sandbox.pool")

# The engine measures a filter's time from outside (IPC included), so it allows the worker's own
# account of a user's share this much slack before it kills.
_SHARE_GRACE_S = 0.05
# What a quiet job's first filter is allowed beyond its budget: the worker maps the batch first.
_MAP_S = 0.1
# A user is quick (may share a core) when each filter took under this fraction of its budget.
_QUICK = 0.1


def _enough_descriptors(workers: int) -> None:
    """Raise this process's soft descriptor limit for ``workers`` live workers (three each: the
    channel, the pidfd, the /proc stat file), as far as the hard limit allows: a common default
    of 1,024 would run out near 300 users."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 3 * workers + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if new > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            log.warning(
                "only %d file descriptors for %d workers; lower idle_workers or raise the "
                "hard limit (ulimit -Hn)",
                new,
                workers,
            )


class _Queue:
    """The users still to run this visit, each queued for the core its worker is pinned to
    (-1: no worker yet). A free core takes, in order: a user put back in front (a retry), the
    first queued of its own users and users without a worker, and only then the last user
    queued for the busiest other core. Re-pinning a worker is a system call that, on a virtual
    machine, costs more than a small filter (~0.25-0.6 ms measured), so it happens only when
    one core runs out of users before the other. Otherwise the order is kept (eviction relies
    on it)."""

    def __init__(self) -> None:
        self._front: deque[tuple[str, list[int]]] = deque()
        self._cores: dict[int, deque[tuple[int, str, list[int]]]] = {}
        self._pushed = 0

    def push(self, user: str, items: list[int], cpu: int = -1, *, front: bool = False) -> None:
        if front:
            self._front.appendleft((user, items))
        else:
            self._pushed += 1
            self._cores.setdefault(cpu, deque()).append((self._pushed, user, items))

    def pop(self, cpu: int) -> tuple[str, list[int]]:
        if self._front:
            return self._front.popleft()
        heads = [q for q in (self._cores.get(cpu), self._cores.get(-1)) if q]
        if heads:
            _seq, user, items = min(heads, key=lambda q: q[0][0]).popleft()
        else:
            _seq, user, items = max(self._cores.values(), key=len).pop()
        return user, items

    def pop_quick(self, cpu: int, quick: set[str]) -> tuple[str, list[int]] | None:
        """The first user queued for ``cpu`` when it is one of ``quick``, else None (retries
        and users without a worker never share a core)."""
        q = self._cores.get(cpu)
        if self._front or not q or q[0][1] not in quick:
            return None
        _seq, user, items = q.popleft()
        return user, items

    def __bool__(self) -> bool:
        return bool(self._front) or any(self._cores.values())


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
        Workers running a visit at once, pinned evenly to the cores (up to two per core).
        Deadlines and shares are wall-clock, so beyond one per core a filter's time includes
        waiting for the core it shares; in exchange the cores never wait for the engine
        (measured: 1,000 one-filter users ~1.15 s per visit with 4 workers on 2 cores against
        ~1.3 s with 2).
    shared_workers : int
        Workers that may run beyond ``workers``, sharing a core, for quick users only: users
        whose every filter ran without a fault in under a tenth of ``budget_s`` on their last
        visit, and only beside quick users. Two on a core at most double each other's time,
        which leaves a quick filter five times its last time before its budget, while the
        cores stop waiting for the engine between workers (measured at 1,000 one-filter users:
        ~13 % less per visit with one).
    max_faults, fault_window : int
        A filter that faulted on ``max_faults`` of its last ``fault_window`` visits is suspended
        (see :mod:`sandbox.pool.suspension`).
    shares : Shares
        Per-user limits per visit: active filters and total evaluation time
        (:mod:`sandbox.shares`).
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
    max_idle_rss_mb : int
        A worker whose resident memory exceeds this after a visit is retired rather than kept
        idle (idle workers are stopped, but their memory stays taken).

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
        fault_window: int = 5,
        shares: Shares | None = None,
        max_idle_rss_mb: int = 256,
        shared_workers: int = 1,
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
        self.shares = shares or Shares()
        self.max_idle_rss_mb = max_idle_rss_mb
        self.shared_workers = max(0, shared_workers)
        self._quick: set[str] = set()  # users who may share a core (see shared_workers)
        self._suspensions = Suspensions(max_faults, fault_window)
        self._share_left: dict[str, float] = {}  # user → evaluation time left this visit [s]
        self._enforced: dict[str, bool] = {}
        self._idle: OrderedDict[str, WorkerHandle] = (
            OrderedDict()
        )  # user → worker, least recent first
        self._visit_no = 0
        # Cores to pin running workers to, one each (see _pin); none when they would share.
        cpus = sorted(os.sched_getaffinity(0))
        self._cpus = cpus if 1 < len(cpus) and self.workers <= 2 * len(cpus) else []
        self._reads_schema: pa.Schema | None = None
        self._reads: dict[
            int, tuple[CompiledFilter, frozenset[str]]
        ] = {}  # id → (filter, its columns)
        self._batch_of: dict[str, tuple[int, int]] = {}  # user → (memfd, size) of this visit
        self._paths_of: dict[str, frozenset[str]] = {}  # user → columns they may read, this visit
        self._available: frozenset[str] = frozenset()  # every column path of the visits' schema
        self._digest = Digest()
        self._to_fork = 0  # users of this visit still without a worker (forks to ask ahead)
        self._told_idle = False  # warned that idle_workers is below the number of users
        _enough_descriptors(self.max_idle_workers + self.workers)
        self._uids = UidPool()
        self._workdir = Workdir()
        self._epoll = select.epoll()
        self._watched: dict[int, WorkerHandle] = {}  # channel → live worker (see _hear)
        self._zygote: Zygote | None = Zygote(self._workdir.path)

    # --- public surface -------------------------------------------------------------------

    @property
    def suspended(self) -> Mapping[str, FilterFault]:
        """Suspended filters: key → the fault that suspended it (``in``, iteration: the keys)."""
        return self._suspensions.suspended

    @property
    def enforced(self) -> dict[str, bool]:
        """Which isolation layers took effect in the most recent worker (and the zygote)."""
        info = self._zygote.info if self._zygote else {}
        return {
            "netns": bool(info.get("netns")),
            "pidns": bool(info.get("pidns")),
            **self._enforced,
        }

    def update(self, key: str, compiled: CompiledFilter | None) -> None:
        """Replace (or add) the filter ``key`` after its owner resubmits it, lifting any
        suspension; ``None`` removes it.

        The user's live worker, if any, compiles the new version on its next visit (the old one
        is dropped there); a user left with no filter loses their worker now.
        """
        self._suspensions.clear(key)
        self._quick.discard(FilterKey.parse(key).owner)
        self._reads = {}
        self._digest.forget(FilterKey.parse(key).owner)
        rest = [(k, c) for k, c in self.filters if k != key]
        if compiled is None:
            self.filters = rest
            user = FilterKey.parse(key).owner
            if user in self._idle and not any(FilterKey.parse(k).owner == user for k, _ in rest):
                self._release(self._idle.pop(user))
        elif len(rest) == len(self.filters):
            self.filters.append((key, compiled))
        else:
            self.filters = [(k, compiled if k == key else c) for k, c in self.filters]

    def warm(self, schema: pa.Schema) -> None:
        """Start every user's worker and compile their filters now, before the first visit
        (the service does so at start), so that the first visit costs what later ones do.

        Runs an empty visit of ``schema``; nothing is recorded (a fault here counts for
        nothing, and its worker is simply not kept).
        """
        empty = pa.RecordBatch.from_arrays(
            [pa.array([], type=f.type) for f in schema], schema=schema
        )
        self._evaluate(empty, record=False)

    def run(self, batch: pa.RecordBatch) -> list[Outcome]:
        """Every filter over one visit; a failing filter yields a fault, never an exception.

        Raises
        ------
        PoolError
            Only when the zygote cannot be (re)started: an engine problem, not a filter's.
        """
        return self._evaluate(batch, record=True)

    def _evaluate(self, batch: pa.RecordBatch, *, record: bool) -> list[Outcome]:
        n = batch.num_rows
        self._visit_no += 1
        results: list[Outcome | None] = [None] * len(self.filters)
        infra: set[int] = set()
        runnable = []
        for i, (key, _compiled) in enumerate(self.filters):
            if self._suspensions.get(key) is not None:
                results[i] = Outcome(key, None, 0.0, self._suspensions.fault(key, self._label(i)))
            else:
                runnable.append(i)
        admitted, over = self.shares.admit([self.filters[i][0] for i in runnable])
        for pos, owner in over.items():
            i = runnable[pos]
            results[i] = Outcome(
                self.filters[i][0], None, 0.0, self.shares.too_many(self._label(i), owner)
            )
        by_user = {owner: [runnable[p] for p in positions] for owner, positions in admitted.items()}
        budget = self.shares.budget_s
        self._share_left = {user: math.inf if budget is None else budget for user in by_user}
        shared: dict[frozenset[str], tuple[int, int]] = {}  # columns → (memfd, its size)
        try:
            self._paths_of = self._columns_of(batch, by_user)
            self._digest.start(batch)
            for user, paths in self._paths_of.items():
                if paths not in shared:
                    fd = share_batch(project(batch, paths))
                    shared[paths] = (fd, os.fstat(fd).st_size)
                self._batch_of[user] = shared[paths]
            if len(by_user) > self.max_idle_workers and not self._told_idle:
                self._told_idle = True
                log.warning(
                    "%d users but only %d idle workers kept between visits: %d users' workers "
                    "start afresh on every visit (~10 ms each); raise idle_workers (each idle "
                    "worker holds ~6 MB)",
                    len(by_user),
                    self.max_idle_workers,
                    len(by_user) - self.max_idle_workers,
                )
            if by_user:
                self._to_fork = sum(user not in self._idle for user in by_user)
                queue = _Queue()
                for user, items in by_user.items():
                    idle = self._idle.get(user)
                    queue.push(user, items, -1 if idle is None else idle.cpu)
                self._run(n, queue, results, infra)
        finally:
            self._batch_of.clear()
            self._digest.finish()
            for fd, _size in shared.values():
                os.close(fd)
        out = [r for r in results if r is not None]
        assert len(out) == len(results)
        if record:
            self._suspensions.record(out, infra)
            quick = self.budget_s * _QUICK
            for user, items in by_user.items():
                if all(out[i].fault is None and out[i].seconds < quick for i in items):
                    self._quick.add(user)
                else:
                    self._quick.discard(user)
        return out

    def close(self) -> None:
        """Stop every worker and the zygote, and remove the working directory."""
        while self._idle:
            pidfd = self._idle.popitem()[1].release()
            if pidfd >= 0:
                os.close(pidfd)
        self._watched.clear()
        self._epoll.close()
        if self._zygote is not None:
            self._zygote.close()
            self._zygote = None
        self._uids.close()
        self._workdir.close()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_zygote", None) is not None:
            self.close()

    # --- the visit loop --------------------------------------------------------------------

    def _columns_of(
        self, batch: pa.RecordBatch, by_user: dict[str, list[int]]
    ) -> dict[str, frozenset[str]]:
        """The columns each user's worker receives: what that user's filters can read, no more
        (another user's columns never reach it, whatever the filter does). Worked out once per
        schema and filter set (visits share one schema)."""
        if self._reads_schema is None or not self._reads_schema.equals(batch.schema):
            self._reads_schema, self._reads = batch.schema, {}
            self._available = leaf_paths(batch.schema)
        out = {}
        for user, items in by_user.items():
            paths: set[str] = set()
            for i in items:
                compiled = self.filters[i][1]
                reads = self._reads.get(id(compiled))
                if reads is None or reads[0] is not compiled:
                    got = compiled.reads(self._available)
                    reads = self._reads[id(compiled)] = (
                        compiled,
                        self._available if got is None else frozenset(got),
                    )
                paths |= reads[1]
            out[user] = frozenset(paths)
        return out

    def _run(
        self,
        n: int,
        queue: _Queue,
        results: list[Outcome | None],
        infra: set[int],
    ) -> None:
        active: list[WorkerHandle] = []
        self._hear(0.0, n, results)  # what idle workers did since the last visit
        try:
            while queue or active:
                while queue:
                    picked = self._next(queue, active)
                    if picked is None:
                        break
                    user, items, cpu = picked
                    if self._share_left[user] <= 0:
                        for i in items:
                            results[i] = Outcome(
                                self.filters[i][0],
                                None,
                                0.0,
                                self.shares.out_of_time(self._label(i), user),
                            )
                        continue
                    w = self._dispatch(user, items, n, cpu)
                    self._pin(w, cpu)
                    active.append(w)
                    w.active = True
                if not active:
                    continue  # what was queued needed no worker (its user's share was used up)
                self._hear(max(0.0, min(w.deadline for w in active) - time.monotonic()), n, results)
                now = time.monotonic()
                for w in list(active):
                    if w.phase == Phase.IDLE and w.failure is None:
                        active.remove(w)
                        w.active = False
                        self._park(w)
                    elif w.phase == Phase.SPLIT:
                        active.remove(w)
                        if w.pos < len(w.items):
                            queue.push(w.user, w.items[w.pos :], front=True)
                        self._release(w)
                    elif w.failure is not None or now >= w.deadline:
                        active.remove(w)
                        if w.phase in (Phase.CLOSING, Phase.IDLE):
                            # Every result is in; it just did not finish the visit cleanly.
                            log.info(
                                "sandbox worker for %s retired: %s",
                                w.user,
                                w.failure or "slow to finish",
                            )
                        else:
                            self._fail(w, n, now, results, infra, queue)
                        self._release(w)
        finally:
            for w in active:
                self._release(w)

    def _next(self, queue: _Queue, active: list[WorkerHandle]) -> tuple[str, list[int], int] | None:
        """The next user to start and the core for it, or None while the running workers are
        enough: up to ``workers`` for anyone, each on the least busy core; then, when every
        core has a lane of its own, up to ``shared_workers`` more: anyone on a core with
        nobody running, a quick user beside one quick user (see the class parameters)."""
        if len(active) >= self.workers + self.shared_workers:
            return None  # the common case while a visit runs: checked before any counting
        load = {c: 0 for c in self._cpus}
        for x in active:
            if x.cpu in load:
                load[x.cpu] += 1
        if len(active) < self.workers:
            cpu = min(load, key=load.__getitem__) if load else -1
            return (*queue.pop(cpu), cpu)
        if not load or self.workers < len(load):
            return None
        for cpu in sorted(load, key=load.__getitem__):
            if load[cpu] == 0:
                return (*queue.pop(cpu), cpu)
            if load[cpu] == 1 and all(x.user in self._quick for x in active if x.cpu == cpu):
                got = queue.pop_quick(cpu, self._quick)
                if got is not None:
                    return (*got, cpu)
        return None

    def _hear(self, timeout: float, n: int, results: list[Outcome | None]) -> None:
        """Read what running workers sent, waiting up to ``timeout`` seconds for anything.

        Every live worker's channel stays in one epoll set from its fork to its release (two
        system calls per worker per visit fewer than adding and removing it). An idle worker
        must be silent: one that wrote, or whose channel closed, is marked and dropped from the
        set, and its user's next visit goes to a fresh worker (see _reusable).
        """
        for fd, _events in self._epoll.poll(timeout):
            w = self._watched.get(fd)
            if w is None:
                continue
            if w.active:
                self._read(w, n, results)
            else:
                w.noisy = True
                self._unwatch(w)

    def _watch(self, w: WorkerHandle) -> None:
        self._epoll.register(w.sock.fileno(), select.EPOLLIN)
        self._watched[w.sock.fileno()] = w

    def _unwatch(self, w: WorkerHandle) -> None:
        fd = w.sock.fileno()
        if fd >= 0 and self._watched.get(fd) is w:
            del self._watched[fd]
            self._epoll.unregister(fd)

    def _dispatch(self, user: str, items: list[int], n: int, core: int) -> WorkerHandle:
        """Hand this visit to the user's live worker, or to a fresh one; never to another
        user's."""
        batch_fd, size = self._batch_of[user]
        cpu = math.ceil(len(items) * (self.budget_s + self.compile_s) + self.startup_s)
        w = self._idle.pop(user, None)
        if w is not None and not self._reusable(w, cpu, size):
            self._release(w)
            w = None
        stopped = w is not None
        if w is None:
            w = self._fork(user, cpu, size)
        w.items, w.job, w.sent, w.pos, w.buf = items, {}, set(), 0, bytearray()
        w.phase, w.failure, w.retire = Phase.STARTING, None, False
        w.deadline = time.monotonic() + self.startup_s
        w.batch_bytes = size
        w.last_visit = self._visit_no
        entries = []
        for i in items:
            key, compiled = self.filters[i]
            w.job[key] = compiled
            if w.compiled.get(key) is compiled:
                entries.append([i, key, display_name(key, compiled.filename), None])
            else:
                # New, changed or never compiled there: send the source; the old version (if
                # any) is gone from the worker as soon as it reads this.
                w.compiled.pop(key, None)
                w.sent.add(key)
                entries.append([i, key, display_name(key, compiled.filename), compiled.source])
        share = self._share_left[user]
        # A live worker with nothing to compile answers with its results only: each frame
        # wakes the engine, and on a virtual machine a wake-up across cores costs ~50 µs.
        w.quiet, w.heard, w.learned = not w.fresh and not w.sent, False, False
        job: dict[str, object] = {
            "filters": entries,
            "cpu_s": cpu,
            "memory_mb": self.memory_mb,
            "share_s": None if math.isinf(share) else share,
            "quiet": w.quiet,
        }
        if w.fresh:
            job["setup"] = {
                "limits": {
                    "memory_mb": self.memory_mb,
                    "cpu_s": math.ceil(w.cpu_limit),
                    "nofile": 16 + wire.MAX_DERIVED,  # a job's descriptors arrive together
                    "reserve_mb": w.reserve // _MB + self.memory_mb,
                    "uid": w.uid,
                    "root": self._workdir.root,
                },
            }
            if core >= 0:
                # It pins itself before hardening: the call costs the engine ~0.6 ms otherwise.
                job["setup"]["core"] = w.cpu = core  # type: ignore[index]
        derived_fds, derived = self._digest.encoded(user, wire.MAX_DERIVED)
        body = (json.dumps(job)[:-1] + f', "digest": {derived}}}').encode()
        # Resumed before its job is sent: measured faster than queueing the job first and then
        # resuming it (~1.5 s against ~2.1 s for 1,000 one-filter users).
        if stopped and not w.signal(signal.SIGCONT):
            w.failure = "it is gone"
        try:
            socket.send_fds(
                w.sock,
                [wire.JOB_HEADER.pack(len(body)) + body[: 1 << 15]],
                [batch_fd, *derived_fds],
            )
            if len(body) > 1 << 15:  # sources: rarely, and only they need to wait for room
                w.sock.setblocking(True)
                w.sock.sendall(body[1 << 15 :])
        except OSError as exc:
            w.failure = f"could not hand the job to the worker ({exc})"
        if w.sock.getblocking():  # each change is a system call: only when fresh or after sources
            w.sock.setblocking(False)
        if w.quiet:
            self._start_filter(w, time.monotonic(), _MAP_S)
        return w

    def _start_filter(self, w: WorkerHandle, now: float, extra: float = 0.0) -> None:
        """The current filter starts now, under its budget capped by its user's remaining
        share (the worker keeps the same account and does not start a filter beyond it; this
        deadline is the backstop)."""
        share = self._share_left[w.user] + _SHARE_GRACE_S
        w.share_capped = share < self.budget_s
        w.phase, w.started = Phase.RUNNING, now
        w.deadline = now + min(self.budget_s, share) + extra

    def _pin(self, w: WorkerHandle, cpu: int) -> None:
        """Run ``w`` on core ``cpu``, the least busy one (see :class:`_Queue`).

        Left alone, the scheduler tends to wake a worker on the core of the engine that woke
        it, so the two running workers often share one core while the other idles (measured:
        ~170 ms instead of ~135 ms for 100 one-filter users). A worker stays pinned across
        visits. Pinning needs no privilege over our own children beyond what we have (root,
        or the same user); without it we go on unpinned.
        """
        if cpu < 0 or w.cpu == cpu:
            return
        try:
            os.sched_setaffinity(w.pid, {cpu})
            w.cpu = cpu
        except OSError as exc:  # gone already (it fails on its own), or not permitted
            if exc.errno == errno.EPERM:
                self._cpus = []

    def _reusable(self, w: WorkerHandle, cpu: int, size: int) -> bool:
        """Whether an idle (stopped) worker can take this visit: silent while idle, and within
        its CPU and address-space budgets."""
        if w.noisy:  # it wrote while idle, or its channel closed (see _hear): it is not ours
            log.warning("sandbox worker for %s is retired: its channel is not quiet", w.user)
            return False
        # Its CPU time is what it was when it was stopped (read then, see _park).
        return w.cpu_used + cpu <= w.cpu_limit - 1 and size <= w.reserve

    def _label(self, index: int) -> str:
        key, compiled = self.filters[index]
        return display_name(key, compiled.filename)

    def _release(self, w: WorkerHandle) -> None:
        self._unwatch(w)
        self._uids.give_back(w.uid, w.release())

    def _fork(self, user: str, cpu: int, size: int) -> WorkerHandle:
        if self._zygote is None or not self._zygote.alive():
            log.warning("sandbox zygote is gone; starting a new one")
            if self._zygote is not None:
                self._zygote.close()
            self._zygote = Zygote(self._workdir.path)
        sock, pid, pidfd = self._zygote.fork()
        self._to_fork -= 1
        if self._to_fork > 0 and not self._zygote.asked:
            self._zygote.request()  # the next user's: forked while this one starts
        try:
            statfd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            statfd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)  # gone already: stat() fails
        reserve = max(_MIN_RESERVE_MB * _MB, 2 * size)
        w = WorkerHandle(
            user,
            sock,
            pid,
            pidfd,
            self._uids.take(),
            statfd,
            cpu_limit=cpu + _LIFETIME_CPU_S,
            reserve=reserve,
        )
        self._watch(w)
        return w

    def _park(self, w: WorkerHandle) -> None:
        """After a clean visit: stop the worker until its user's next visit, or retire it."""
        w.visits += 1
        w.fresh = False
        w.compiled = {k: c for k, c in w.job.items() if w.compiled.get(k) is c}
        usage = w.usage()
        if usage is not None:
            w.cpu_used = usage[0]
        reason = None
        if w.retire:
            reason = "it could not release its previous batch"
        elif usage is None:
            reason = "it is gone"
        elif w.visits >= self.max_visits_per_worker:
            reason = f"{w.visits} visits"
        elif w.base_vm is not None and usage[1] - w.base_vm > self.memory_mb * _MB // 2:
            reason = f"its memory grew by {(usage[1] - w.base_vm) // _MB} MB"
        elif usage[2] > self.max_idle_rss_mb * _MB:
            reason = f"it holds {usage[2] // _MB} MB resident (limit {self.max_idle_rss_mb} MB when idle)"
        if reason is None and self.max_idle_workers and w.signal(signal.SIGSTOP):
            self._idle[w.user] = w
            self._evict()
            return
        if reason is not None:
            log.info("sandbox worker for %s retired: %s", w.user, reason)
        self._release(w)

    def _evict(self) -> None:
        """Keep at most ``max_idle_workers`` idle: drop the least recently used. Workers not
        yet used in this visit are kept (they are about to be), so that users who visit in a
        steady order keep the same workers."""
        while len(self._idle) > self.max_idle_workers:
            victim = next(
                (u for u, w in self._idle.items() if w.last_visit == self._visit_no), None
            )
            if victim is None:
                victim = next(iter(self._idle))
            self._release(self._idle.pop(victim))

    def _read(self, w: WorkerHandle, n: int, results: list[Outcome | None]) -> None:
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
        limit = max(wire.RESULT.size + 4 * wire.MAX_MESSAGE + (n + 7) // 8 + 4096, wire.MAX_LEARNED)
        while (
            w.failure is None
            and w.phase not in (Phase.IDLE, Phase.SPLIT)
            and len(w.buf) >= wire.FRAME.size
        ):
            kind, index, length = wire.FRAME.unpack_from(w.buf)
            if length > limit:
                w.failure = "broke protocol (oversized frame)"
                return
            if len(w.buf) < wire.FRAME.size + length:
                return
            payload = bytes(w.buf[wire.FRAME.size : wire.FRAME.size + length])
            del w.buf[: wire.FRAME.size + length]
            self._frame(w, kind, index, payload, n, results)
        if w.phase == Phase.IDLE and w.buf:
            w.failure = "broke protocol (data after DONE)"

    def _frame(
        self,
        w: WorkerHandle,
        kind: int,
        index: int,
        payload: bytes,
        n: int,
        results: list[Outcome | None],
    ) -> None:
        # Everything here comes from a process running untrusted code: check it all.
        now = time.monotonic()
        w.heard = True
        current = w.items[w.pos] if w.pos < len(w.items) else None
        if kind == Kind.READY and w.phase == Phase.STARTING and not w.quiet:
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
                    w.base_vm = stat[1] - w.batch_bytes  # the mapped batch is not its own
            elif payload:
                w.failure = "broke protocol (bad READY)"
                return
            w.phase, w.deadline = Phase.COMPILING, now + self.compile_s
        elif (
            kind == Kind.COMPILED
            and not w.quiet
            and w.phase == Phase.COMPILING
            and index == current
            and not payload
        ):
            key, compiled = self.filters[index]
            if key in w.sent:
                w.compiled[key] = compiled
            self._start_filter(w, now)
        elif (
            kind == Kind.RESULT and w.phase in (Phase.COMPILING, Phase.RUNNING) and index == current
        ):
            outcome = self._outcome(w, index, payload, n, now)
            if outcome is None:
                w.failure = "broke protocol (bad RESULT)"
                return
            results[index] = outcome
            self._share_left[w.user] -= outcome.seconds
            w.pos += 1
            if outcome.fault is not None and outcome.fault.reason == FaultReason.MEMORY:
                # Out of memory may have left the interpreter half-broken: the worker goes, and
                # the user's remaining filters continue in a fresh one (see _run).
                w.phase = Phase.SPLIT
            elif w.pos == len(w.items):
                w.phase, w.deadline = Phase.CLOSING, now + max(1.0, self.compile_s)
            elif w.quiet:
                self._start_filter(w, now)
            else:
                w.phase, w.deadline = Phase.COMPILING, now + self.compile_s
        elif kind == Kind.LEARNED and w.phase == Phase.CLOSING and not w.learned:
            w.learned = True
            self._digest.learn(
                w.user, payload, self._paths_of.get(w.user, frozenset()), self._available
            )
        elif kind == Kind.DONE and w.phase == Phase.CLOSING and payload in (b"", wire.RETIRE):
            w.phase, w.retire = Phase.IDLE, payload == wire.RETIRE
        else:
            w.failure = f"broke protocol (frame {kind} in phase {w.phase})"

    def _outcome(
        self, w: WorkerHandle, index: int, payload: bytes, n: int, now: float
    ) -> Outcome | None:
        key, compiled = self.filters[index]
        if len(payload) < wire.RESULT.size:
            return None
        status, mlen = wire.RESULT.unpack_from(payload)
        rest = payload[wire.RESULT.size :]
        if mlen > len(rest):
            return None
        message = rest[:mlen].decode("utf-8", "replace")[: wire.MAX_MESSAGE]
        bits = rest[mlen:]
        seconds = now - w.started if w.phase == Phase.RUNNING else 0.0
        if status == Status.OK:
            if len(bits) != (n + 7) // 8 or mlen:
                return None
            mask = np.unpackbits(np.frombuffer(bits, np.uint8), count=n).view(bool)  # 0s and 1s
            return Outcome(key, mask, seconds)
        if status == Status.OVER_SHARE and not bits:
            return Outcome(key, None, 0.0, self.shares.out_of_time(self._label(index), w.user))
        if status not in wire.STATUS_REASON or bits:
            return None
        return Outcome(
            key,
            None,
            seconds,
            FilterFault(
                message or f"{display_name(key, compiled.filename)}: failed",
                reason=wire.STATUS_REASON[status],
            ),
        )

    def _fail(
        self,
        w: WorkerHandle,
        n: int,
        now: float,
        results: list[Outcome | None],
        infra: set[int],
        queue: _Queue,
    ) -> None:
        """Kill ``w``; fault the filter it was on; queue the user's remaining filters."""
        w.signal(signal.SIGKILL)
        unheard = w.quiet and not w.heard and w.failure is not None
        if (w.phase == Phase.STARTING or unheard) and not w.fresh:
            # A live worker that failed to take a new visit (say, it died while stopped):
            # nothing of this visit ran; a fresh worker takes it.
            log.warning(
                "sandbox worker for %s failed to resume (%s); forking a fresh one",
                w.user,
                w.failure or "timed out",
            )
            queue.push(w.user, w.items, front=True)
            return
        if w.phase == Phase.STARTING:
            # Not any filter's doing (no user code has run yet): report, but do not count.
            log.error("sandbox worker for %s failed to start: %s", w.user, w.failure or "timed out")
            for i in w.items:
                infra.add(i)
                results[i] = Outcome(
                    self.filters[i][0],
                    None,
                    0.0,
                    FilterFault(
                        f"{display_name(self.filters[i][0], self.filters[i][1].filename)}: not run on this visit: the engine could not "
                        "start a worker (not a problem with your filter)",
                        reason=FaultReason.KILLED,
                    ),
                )
            return
        index = w.items[w.pos]
        key, compiled = self.filters[index]
        name = display_name(key, compiled.filename)
        seconds = now - w.started if w.phase == Phase.RUNNING else 0.0
        self._share_left[w.user] -= seconds
        if w.failure is None and w.phase == Phase.RUNNING and w.share_capped:
            fault = FilterFault(
                f"{name}: stopped: {w.user}'s filters used their share of "
                f"{self.shares.budget_s:g} s on this visit",
                reason=FaultReason.OVER_SHARE,
            )
        elif w.failure is None and w.phase == Phase.RUNNING:
            fault = FilterFault(
                f"{name}: stopped after exceeding its time budget of {self.budget_s:g} s on {n} "
                "alerts; use column operations instead of Python loops over alerts",
                reason=FaultReason.TIMEOUT,
            )
        elif w.failure is None:
            fault = FilterFault(
                f"{name}: stopped: compiling took longer than {self.compile_s:g} s; "
                "simplify the file",
                reason=FaultReason.TIMEOUT,
            )
        elif w.failure == "died":
            fault = FilterFault(
                f"{name}: the process running this filter died (it may have exceeded the memory "
                f"limit of {self.memory_mb} MB or another resource limit)",
                reason=FaultReason.KILLED,
            )
        else:
            fault = FilterFault(
                f"{name}: stopped: its worker {w.failure}", reason=FaultReason.KILLED
            )
        results[index] = Outcome(key, None, seconds, fault)
        rest = w.items[w.pos + 1 :]
        if rest:
            queue.push(w.user, rest, front=True)  # a fresh worker; the faulty filter is not in it
