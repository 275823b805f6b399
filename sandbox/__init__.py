"""Everything that touches untrusted filter code: the policy, compilation, the read-only batch
view and helper library filters see, and the runners that execute them.

The engine calls into this package and never executes user code itself.
"""

from sandbox.compile import CompiledFilter, compile_filter, load_filter, read_filter_source
from sandbox.errors import FilterError, FilterFault, FilterRejected, PoolError, Problem
from sandbox.pool import WorkerPool, safe_compile
from sandbox.run import InProcessRunner, Outcome, validate_result

__all__ = [
    "CompiledFilter",
    "FilterError",
    "FilterFault",
    "FilterRejected",
    "InProcessRunner",
    "Outcome",
    "PoolError",
    "Problem",
    "WorkerPool",
    "compile_filter",
    "load_filter",
    "read_filter_source",
    "safe_compile",
    "validate_result",
]
