"""Everything that touches untrusted filter code: the policy, compilation, the read-only batch
view and helper library filters see, and the runners that execute them.

The engine calls into this package and never executes user code itself.
"""

from sandbox.compile import CompiledFilter, compile_filter, load_filter
from sandbox.errors import FilterError, FilterFault, FilterRejected, Problem
from sandbox.run import InProcessRunner, Outcome, validate_result

__all__ = [
    "CompiledFilter",
    "FilterError",
    "FilterFault",
    "FilterRejected",
    "InProcessRunner",
    "Outcome",
    "Problem",
    "compile_filter",
    "load_filter",
    "validate_result",
]
