"""Nothing outlives the engine: however it dies, its zygote and workers go with it, and the next
start removes what it left on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from procfs import all_stopped
from procfs import children as _children
from procfs import state as _state

from sandbox.pool.workdir import PREFIX, Workdir, remove_stale

ENGINE = r"""
import json, sys, time
import numpy as np, pyarrow as pa
from sandbox import compile_filter
from sandbox.pool import WorkerPool

src = "\"\"\"Big x.\"\"\"\ndef filter(alerts):\n    return alerts.x > 1\n"
batch = pa.record_batch({"x": np.arange(10.0)})
pool = WorkerPool([(f"user{i}/f", compile_filter(src, "f.py")) for i in range(3)])
assert all(o.fault is None for o in pool.run(batch))
launcher = pool._zygote.proc.pid
print(json.dumps({"workers": [w.pid for w in pool._idle.values()], "launcher": launcher,
                  "workdir": pool._workdir.path, "pidns": pool.enforced["pidns"]}), flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(os.getuid() != 0, reason="the PID-namespace guarantee needs root")
def test_sigkill_of_the_engine_takes_stopped_workers_with_it() -> None:
    """SIGKILL the engine while its workers are stopped between visits: none is left running,
    and the next pool to start removes the dead engine's worker directory."""
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root}
    engine = subprocess.Popen(
        [sys.executable, "-c", ENGINE], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        info = json.loads(engine.stdout.readline())  # type: ignore[union-attr]
        assert info["pidns"]
        zygotes = _children(info["launcher"])
        workers = info["workers"]
        assert len(workers) == 3 and all_stopped(workers), "workers are stopped when idle"
        engine.send_signal(signal.SIGKILL)
        engine.wait()
        left = [info["launcher"], *zygotes, *workers]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_state(p) not in (None, "Z") for p in left):
            time.sleep(0.05)
        assert [(p, _state(p)) for p in left if _state(p) not in (None, "Z")] == []
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()
    assert os.path.isdir(info["workdir"])  # the dead engine could not clean up ...
    Workdir().close()  # ... the next start does
    assert not os.path.exists(info["workdir"])


def test_a_live_engines_directory_is_kept(tmp_path: Path) -> None:
    """Only directories whose lock nobody holds are removed; a directory being created (no
    lock file yet) is left alone for a grace period."""
    live = Workdir()
    try:
        young = tempfile.mkdtemp(prefix=PREFIX)
        assert live.path not in remove_stale() and os.path.isdir(live.path)
        assert os.path.isdir(young)
        os.rmdir(young)
    finally:
        live.close()
    assert not os.path.exists(live.path)


def test_a_non_root_engine_says_in_one_line_what_it_could_not_apply() -> None:
    """Started without root, the pool logs one line naming each missing layer; as root, none."""
    from sandbox.pool.zygote import isolation_warning

    line = isolation_warning({"root": False, "pidns": False, "netns": False, "seccomp": True})
    assert (
        line is not None
        and "\n" not in line
        and line.startswith("sandbox isolation incomplete (not root)")
    )
    for layer in ("own uids", "PID namespaces", "IPC namespaces", "network namespace", "chroot"):
        assert layer in line
    assert "seccomp" not in line
    assert isolation_warning({"root": True, "pidns": True, "netns": True, "seccomp": True}) is None
