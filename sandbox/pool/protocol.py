"""The wire between the pool and its zygote and workers.

Wire format (everything is plain bytes; nothing is ever unpickled):

- pool → zygote (``SOCK_SEQPACKET``): ``b"F"`` carrying one descriptor, the worker's end of a
  fresh socket pair; the reply is the worker's pid (``>I``) carrying a pidfd for it.
- pool → worker, once per visit: ``>I`` length + a JSON job, carrying the read-only descriptor
  of the visit batch (Arrow IPC file format in a sealed memfd). The job lists the filters to
  run as ``[index, key, filename, source or null]``: a source means "compile this (again)";
  null means "run what you compiled for this key". The worker compiles under the full policy
  rather than trusting code objects. The first job also carries ``setup``: the limits.
- worker → pool: frames of :data:`FRAME` (kind, filter index, payload length) + payload.
  ``READY`` once the batch is mapped (on the first visit, JSON: which limits took effect),
  per filter ``COMPILED`` and then ``RESULT``: :data:`RESULT` (status, message length) + UTF-8
  message + for ``OK`` exactly ``ceil(n / 8)`` bytes of ``np.packbits(mask)``; and ``DONE``
  after the last (payload ``b"R"``: the previous visit's batch, which a worker unmaps after
  its DONE, could not be released; retire me). Frames
  the pool's deadlines do not wait for travel together (READY with the first COMPILED, the last
  RESULT with DONE). A filter not started because its user's share of the visit is used up
  gets a RESULT with status OVER_SHARE. The job carries ``share_s``, that share's remainder.
  A job may carry more descriptors after the batch's: results derived once for everyone
  (:mod:`sandbox.digest`), listed in its ``digest`` as ``[recipe, descriptor, layout]``; after
  the visit the worker may send one LEARNED frame (JSON: the recipes it derived itself) just
  before DONE.
  A job marked ``quiet`` (a live worker, nothing to compile) gets no READY and no COMPILED:
  only the RESULTs, each sent before the next filter starts, the last with DONE.
  The pool checks every length, index and status before use, and treats anything else as a
  fault.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from sandbox.errors import FaultReason

__all__ = [
    "FRAME",
    "JOB_HEADER",
    "MAX_DERIVED",
    "MAX_JOB",
    "MAX_LEARNED",
    "MAX_MESSAGE",
    "RESULT",
    "RETIRE",
    "STATUS_REASON",
    "Kind",
    "Status",
]

FRAME = struct.Struct(">BII")  # kind, filter index, payload length
RESULT = struct.Struct(">BI")  # status, message length (then message, then mask)
JOB_HEADER = struct.Struct(">I")


class Kind(IntEnum):
    """What a worker → pool frame carries."""

    READY = 1  # the batch is mapped (first visit: JSON of the limits that took effect)
    COMPILED = 2  # the current filter is compiled; its run starts now
    RESULT = 3  # the current filter's result (a mask or a fault message)
    DONE = 4  # the visit is over (payload RETIRE: the previous batch could not be released)
    LEARNED = 5  # before DONE: JSON list of recipes its filters derived (sandbox.digest)


class Status(IntEnum):
    """How a filter's run ended, as its RESULT frame says."""

    OK = 0
    ERROR = 1
    MEMORY = 2
    BAD_RESULT = 3
    REJECTED = 4
    OVER_SHARE = 5  # not run: its user's filters used their time share of this visit


STATUS_REASON = {
    Status.ERROR: FaultReason.ERROR,
    Status.MEMORY: FaultReason.MEMORY,
    Status.BAD_RESULT: FaultReason.BAD_RESULT,
    Status.REJECTED: FaultReason.ERROR,
}
MAX_MESSAGE = 2000  # characters of a fault message that reach the owner
MAX_JOB = 64 * 2**20
MAX_DERIVED = 48  # shared results (descriptors) a job carries besides the batch
MAX_LEARNED = 8 * 1024  # bytes of a LEARNED report
RETIRE = b"R"
