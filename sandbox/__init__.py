"""Everything that touches untrusted filter code, and the walls around it.

What restricted code touches (the attack surface): :mod:`sandbox.view` (the read-only objects a
filter receives) and :mod:`sandbox.helpers` (the helper library), reachable only through the
namespace :mod:`sandbox.namespace` builds for each run.

The trusted machinery: :mod:`sandbox.policy` and :mod:`sandbox.compile` (what a filter may say,
and compiling it), :mod:`sandbox.store` (Arrow batch → the read-only view),
:mod:`sandbox.run` (running filters in this process), :mod:`sandbox.pool` (the engine's side of
the worker processes), :mod:`sandbox.digest` (results derived once and handed to every
worker), :mod:`sandbox.worker` (the workers' side), :mod:`sandbox.limits` and
:mod:`sandbox.seccomp` (uids, namespaces, resource limits, the syscall allow-list),
:mod:`sandbox.shares` (each user's fair share of a visit), :mod:`sandbox.text` (escaping what
filters say), :mod:`sandbox.keys` and :mod:`sandbox.errors`.

The engine calls into this package and never executes user code itself.
"""

from sandbox.compile import CompiledFilter, compile_filter, load_filter, read_filter_source
from sandbox.errors import FaultReason, FilterError, FilterFault, FilterRejected, PoolError, Problem
from sandbox.keys import FilterKey
from sandbox.pool import WorkerPool, safe_compile, safe_compile_many
from sandbox.run import InProcessRunner, Outcome, validate_result
from sandbox.shares import Shares

__all__ = [
    "CompiledFilter",
    "FaultReason",
    "FilterError",
    "FilterFault",
    "FilterKey",
    "FilterRejected",
    "InProcessRunner",
    "Outcome",
    "PoolError",
    "Problem",
    "Shares",
    "WorkerPool",
    "compile_filter",
    "load_filter",
    "read_filter_source",
    "safe_compile",
    "safe_compile_many",
    "validate_result",
]
