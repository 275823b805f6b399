"""Run filters in isolated worker processes: the service's runner (trusted machinery).

:class:`WorkerPool` is a drop-in for :class:`sandbox.run.InProcessRunner` (same
:class:`~sandbox.run.Outcome` per filter, keys in the order given) that never runs user code in
the engine process:

- A **zygote** (fresh interpreter, scrubbed environment, numpy and pyarrow imported, no user
  code; when root, the init of its own PID namespace with empty network and IPC namespaces,
  so that every worker dies with it, and it with the engine) forks one **worker per user**,
  each into PID and IPC namespaces of its own, which then serves that user's visits one after
  another: two users' filters never share a process, and every worker comes from a fresh
  fork of the clean zygote. See :mod:`sandbox.worker`.
- A worker compiles its user's filters once (again only when :meth:`WorkerPool.update` changes
  one; :meth:`WorkerPool.warm` does it before the first visit) and per visit only receives the
  new batch, projected to the columns its user's filters can read: written once per visit and
  column set as Arrow IPC into a sealed memfd whose descriptor travels over the worker's
  socket; workers map those pages read-only and build a fresh column store; every filter run
  gets fresh globals. Masks come back as packed bits; nothing is unpickled.
- What a hundred filters of one process would share (lightcurve histories, reductions, band
  selections, sky transforms, converted columns), a thousand workers would each compute
  again: so each worker reports what its filters derived, and from the next visit on the pool
  computes each such result once, on the trusted side, and hands it over in sealed shared
  memory with the batch, only to users whose filters may read every column it comes from
  (:mod:`sandbox.digest`).
- Each worker is hardened once, before it compiles anything (:mod:`sandbox.limits`): memory,
  CPU, file and process limits, an empty chroot, a uid no other live worker has
  (:mod:`sandbox.pool.uids`), the seccomp allow-list (:mod:`sandbox.seccomp`). The hard limits
  last its whole life; each visit gets its own soft CPU and memory allowance. Between visits a
  worker is stopped (``SIGSTOP``): no user code runs while the engine is not waiting for it.
- The pool enforces wall-clock deadlines with ``SIGKILL``: ``compile_s`` to compile and
  ``budget_s`` to load and run each filter. A filter that overruns, crashes, exhausts memory,
  kills its worker or returns a bad result gets a fault and its worker is killed; its user's
  remaining filters continue in a fresh worker, as does its next visit; other users never
  notice. After ``max_faults`` faults among its last ``fault_window`` visits a filter is
  suspended until it is replaced (:meth:`WorkerPool.update`). Each user's filters get a fair
  share of every visit (:mod:`sandbox.shares`).
- At most ``workers`` workers run at once, each pinned to a core and scheduled as a batch
  task (``SCHED_BATCH``: waking one never preempts the engine, whose loop is the visit's
  serial part), plus ``shared_workers`` more for quick users, two to a core at most and only
  among quick users (whose filters ran in under a tenth of their budget on their last visit),
  so that the cores need not wait for the engine between workers; at most
  ``max_idle_workers`` wait between visits
  (least recently used go first), and a worker is retired after ``max_visits_per_worker``
  visits, when its memory creeps or stays resident above ``max_idle_rss_mb``, or its CPU time
  nears its lifetime limit.

:func:`safe_compile` and :func:`safe_compile_many` compile submitted files in throwaway
processes with a deadline per file, so that not even the parser ever chokes the engine on
hostile input.

Modules: :mod:`~sandbox.pool.scheduler` (the visit loop, :class:`WorkerPool`),
:mod:`~sandbox.pool.zygote` (starting the clean parent), :mod:`~sandbox.pool.handle` (the
engine's record of one worker and its :class:`~sandbox.pool.handle.Phase`),
:mod:`~sandbox.pool.shm` (the visit batch in sealed shared memory), :mod:`sandbox.digest`
(results derived once for every worker),
:mod:`~sandbox.pool.protocol` (the wire), :mod:`~sandbox.pool.suspension` (faults and
suspension), :mod:`~sandbox.pool.uids` (a uid per live worker),
:mod:`~sandbox.pool.workdir` (the working directory, and removing dead engines' ones) and
:mod:`~sandbox.pool.compile` (compiling submissions in throwaway processes).
The workers' own side is :mod:`sandbox.worker`; their limits are :mod:`sandbox.limits`.
"""

from sandbox.errors import PoolError
from sandbox.pool.compile import safe_compile, safe_compile_many
from sandbox.pool.scheduler import WorkerPool
from sandbox.pool.shm import share_batch

__all__ = ["PoolError", "WorkerPool", "safe_compile", "safe_compile_many", "share_batch"]
