"""Shared memory: one visit batch written once, mapped read-only by every worker."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable

import pyarrow as pa

__all__ = ["share_batch"]


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
