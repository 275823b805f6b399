"""Started by an ordinary user, the engine still works, applies the isolation it can, says in one
line what it could not, and leaves nothing behind.

Every check runs a real engine process as ``nobody`` (uid 65534, no groups), with a home, cache
and temp directory of its own, so setting this up needs root (the tests skip otherwise). The
interpreter may live where ``nobody`` cannot enter (pyenv under ``/root``, 0700): each child then
gets a private mount namespace in which that directory is an empty tmpfs with only the
interpreter (and the repository, if it is there too) bound back at the same paths. The child
runs the same interpreter at the same path and sees nothing else of root's; the mount
namespace changes nothing the engine's isolation depends on (a non-root zygote is refused new
PID, network and IPC namespaces either way).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from alertdata import packet_files
from procfs import all_stopped
from procfs import children as _children
from procfs import state as _state

from sandbox import seccomp
from sandbox.pool.protocol import MAX_DERIVED

NOBODY = 65534
ROOT = Path(__file__).resolve().parents[2]  # the repository: what the children import
_CLONE_NEWNS = 0x00020000
_MS_BIND, _MS_REC, _MS_PRIVATE = 0x1000, 0x4000, 0x40000

pytestmark = pytest.mark.skipif(
    os.getuid() != 0, reason="running the engine as another (non-root) user needs root"
)


def _closed_ancestor(path: Path) -> Path | None:
    """The outermost directory on ``path`` that others may not enter (None: all open)."""
    for parent in [*reversed(path.parents), path]:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return parent
    return None


def _hidden_paths() -> dict[Path, list[Path]]:
    """Closed directory → the paths inside it that a child needs: the interpreter's prefixes
    and the repository."""
    needed = {Path(p).resolve() for p in (sys.base_prefix, sys.prefix, ROOT)}
    hidden: dict[Path, list[Path]] = {}
    for path in sorted(needed):
        top = _closed_ancestor(path)
        if top is not None:
            hidden.setdefault(top, []).append(path)
    return hidden


def _as_nobody(hidden: dict[Path, list[Path]]) -> Callable[[], None]:
    """A ``preexec_fn``: open up ``hidden`` (see the module doc) in a mount namespace of the
    child's own, then become ``nobody`` with no supplementary groups.

    subprocess's own ``user=``/``group=`` cannot be used: they drop root before ``preexec_fn``
    runs, and mounting needs it.
    """
    # Looked up here, not in the child: between fork and exec only this thread exists, and
    # the less Python does there the better.
    libc = ctypes.CDLL(None, use_errno=True)
    unshare, mount = libc.unshare, libc.mount

    def check(result: int, what: str) -> None:
        if result != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def setup() -> None:
        if hidden:
            check(unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
            # Nothing mounted here may propagate back to the machine.
            check(mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "make / private")
            for top, inside in hidden.items():
                fds = [os.open(p, os.O_PATH | os.O_DIRECTORY) for p in inside]
                check(mount(b"tmpfs", bytes(top), b"tmpfs", 0, b"mode=0755"), f"tmpfs on {top}")
                for path, fd in zip(inside, fds, strict=True):
                    os.makedirs(path, exist_ok=True)
                    source = f"/proc/self/fd/{fd}".encode()
                    check(
                        mount(source, bytes(path), None, _MS_BIND | _MS_REC, None),
                        f"bind {path}",
                    )
                    os.close(fd)
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)

    return setup


@dataclass
class Nobody:
    """Runs commands as ``nobody`` with ``home`` as its home, cache and temp directory."""

    home: Path
    hidden: dict[Path, list[Path]]

    @property
    def tmp(self) -> Path:
        return self.home / "tmp"

    def env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",  # the decoders' C compiler
            "HOME": str(self.home),
            "TMPDIR": str(self.tmp),
            "MINIBROKER_CACHE": str(self.home / "cache"),
            "PYTHONPATH": str(ROOT),
            "LANG": "C.UTF-8",
        }

    def popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            args,
            env=self.env(),
            cwd=self.home,
            preexec_fn=_as_nobody(self.hidden),
            text=True,
            **kwargs,
        )

    def run(self, args: list[str], *, stdin: str = "", timeout: float = 30) -> tuple[int, str, str]:
        """Exit code, stdout and stderr of ``args``."""
        proc = self.popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return proc.returncode, out, err

    def python(self, code: str, *, stdin: str = "", timeout: float = 30) -> Any:
        """Run ``code`` as nobody; it prints one JSON object last, which is returned."""
        code_, out, err = self.run([sys.executable, "-c", code], stdin=stdin, timeout=timeout)
        assert code_ == 0, f"the child failed (exit {code_}):\n{err}"
        return json.loads(out.strip().splitlines()[-1])

    def give(self, path: Path) -> None:
        """Hand ``path`` (and what is under it) to nobody."""
        for p in [path, *path.rglob("*")]:
            os.chown(p, NOBODY, NOBODY, follow_symlinks=False)


@pytest.fixture(scope="module")
def nobody(small_night: Path) -> Iterator[Nobody]:
    """A home for nobody holding the 64 real v11.1 alerts and a copy of the small night; the
    decoders it compiles are cached there for the module's later children."""
    home = Path(tempfile.mkdtemp(prefix="nonroot-"))
    try:
        (home / "tmp").mkdir()
        alerts = home / "alerts"
        alerts.mkdir()
        for f in packet_files("lsstcam/v11_1"):
            shutil.copy(f, alerts / f.name)
        shutil.copy(small_night, home / "small.avro")
        os.chmod(home, 0o700)
        user = Nobody(home, _hidden_paths())
        user.give(home)
        try:
            probe = user.python("import json, os; print(json.dumps([os.getuid(), os.getgroups()]))")
        except subprocess.SubprocessError as exc:
            pytest.skip(f"cannot start a child as nobody with the interpreter visible ({exc})")
        assert probe == [NOBODY, []]
        yield user
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _running(pids: list[int], timeout_s: float) -> list[tuple[int, str | None]]:
    """Those of ``pids`` still alive (zombies count as gone) after waiting up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_state(p) not in (None, "Z") for p in pids):
        time.sleep(0.02)
    return [(p, _state(p)) for p in pids if _state(p) not in (None, "Z")]


# --- the pool, as nobody ------------------------------------------------------------------------

# Two users' filters over the real alerts, in-process and in the pool (two visits: the second
# resumes the workers stopped after the first); what the workers' kernel records say of them
# while they wait; and whether anything outlives close().
POOL_RUN = r"""
import glob, json, logging, os, sys, time
import numpy as np
from engine.decode import decode_messages
from sandbox import InProcessRunner, compile_filter
from sandbox.pool import WorkerPool

lines = []
class Keep(logging.Handler):
    def emit(self, record):
        lines.append(record.getMessage())
logging.getLogger().addHandler(Keep())
logging.getLogger().setLevel(logging.INFO)

def state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None

def proc(pid, name):
    with open(f"/proc/{pid}/{name}") as f:
        return f.read()

spec = json.load(sys.stdin)
batch = decode_messages([open(p, "rb").read() for p in sorted(glob.glob("alerts/*.avro"))]).batch
filters = [(key, compile_filter(src, name)) for key, name, src in spec["filters"]]
masks = lambda outcomes: {o.key: None if o.mask is None else np.flatnonzero(o.mask).tolist()
                          for o in outcomes}
faults = lambda outcomes: {o.key: str(o.fault) for o in outcomes if o.fault is not None}
want = InProcessRunner(filters).run(batch)
pool = WorkerPool(filters)
visits = [pool.run(batch) for _ in range(2)]
workers = {user: w.pid for user, w in pool._idle.items()}
deadline = time.monotonic() + 5
while time.monotonic() < deadline and not all(state(p) == "T" for p in workers.values()):
    time.sleep(0.02)  # SIGSTOP takes effect asynchronously
seen = {user: {"state": state(p), "status": proc(p, "status"), "limits": proc(p, "limits")}
        for user, p in workers.items()}
zygote = pool._zygote.proc.pid
workdir = pool._workdir.path
enforced = pool.enforced
pool.close()
deadline = time.monotonic() + 5
left = [zygote, *workers.values()]
while time.monotonic() < deadline and any(state(p) not in (None, "Z") for p in left):
    time.sleep(0.02)
print(json.dumps({
    "want": masks(want), "visits": [masks(v) for v in visits], "faults": [faults(v) for v in visits],
    "log": lines, "enforced": enforced, "workers": seen, "zygote": zygote,
    "left": [(p, state(p)) for p in left if state(p) not in (None, "Z")],
    "workdir_left": os.path.exists(workdir), "uid": os.getuid(),
}))
"""

FILTERS = {
    "alice": ["quality_cut.py", "ddf_region.py"],
    "bob": ["solar_system.py", "young_transients.py"],
}


def _spec() -> str:
    filters = [
        [f"{user}/{name.removesuffix('.py')}", name, (ROOT / "sample_filters" / name).read_text()]
        for user, names in FILTERS.items()
        for name in names
    ]
    return json.dumps({"filters": filters})


def _limits(text: str) -> dict[str, tuple[str, str]]:
    """/proc/<pid>/limits: name → (soft, hard)."""
    out = {}
    for line in text.splitlines()[1:]:
        name, soft, hard = line[:26].strip(), *line[26:].split()[:2]
        out[name] = (soft, hard)
    return out


def _status(text: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_the_pool_as_nobody_matches_in_process_and_says_what_it_could_not_apply(
    nobody: Nobody,
) -> None:
    """Run as nobody, the pool's masks equal the in-process runner's over two visits of two
    users; it logs one line naming every layer a non-root engine lacks; ``enforced`` says
    exactly what took effect, and the workers' kernel records agree; close() leaves no
    process and no directory."""
    got = nobody.python(POOL_RUN, stdin=_spec())
    assert got["uid"] == NOBODY
    # 1. the same masks (and some alerts pass each user, so that the comparison means something)
    assert got["faults"] == [{}, {}]
    assert got["visits"] == [got["want"], got["want"]]
    for user in FILTERS:
        assert any(got["want"][k] for k in got["want"] if k.startswith(f"{user}/")), user
    # 2. one line says what could not be applied
    with_seccomp = seccomp.prepare()
    warnings = [line for line in got["log"] if line.startswith("sandbox isolation incomplete")]
    assert len(warnings) == 1, got["log"]
    (line,) = warnings
    assert line.startswith("sandbox isolation incomplete (not root)") and "\n" not in line
    for layer in ("own uids", "PID namespaces", "IPC namespaces", "network namespace", "chroot"):
        assert layer in line, line
    assert ("seccomp" in line) is not with_seccomp, line
    assert got["enforced"] == {
        "netns": False,
        "pidns": False,
        "rlimits": True,
        "chroot": False,
        "uid": False,
        "no_new_privs": True,
        "seccomp": with_seccomp,
    }
    # ... and the kernel agrees, for each user's (stopped, idle) worker
    assert set(got["workers"]) == set(FILTERS)
    for user, seen in got["workers"].items():
        assert seen["state"] == "T", f"{user}'s worker is stopped between visits"
        status = _status(seen["status"])
        assert status["Uid"].split() == [str(NOBODY)] * 4  # the engine's: no uid of its own
        assert status["Groups"].strip() == ""
        # no_new_privs is set whether or not seccomp could be installed
        assert status["NoNewPrivs"] == "1"
        assert status["Seccomp"] == ("2" if with_seccomp else "0")
        limits = _limits(seen["limits"])
        assert limits["Max processes"] == ("0", "0")
        assert limits["Max file size"] == ("0", "0")
        assert limits["Max core file size"] == ("0", "0")
        files = str(16 + MAX_DERIVED)  # a job's descriptors arrive together
        assert limits["Max open files"] == (files, files)
        assert limits["Max cpu time"][1] != "unlimited"
        assert limits["Max address space"][1] != "unlimited"
    # 3. nothing outlives close()
    assert got["left"] == []
    assert not got["workdir_left"]


# --- SIGKILL of a non-root engine -----------------------------------------------------------------

ENGINE = r"""
import json, os, time
import numpy as np, pyarrow as pa
from sandbox import compile_filter
from sandbox.pool import WorkerPool

src = "\"\"\"Big x.\"\"\"\ndef filter(alerts):\n    return alerts.x > 1\n"
batch = pa.record_batch({"x": np.arange(10.0)})
pool = WorkerPool([(f"user{i}/f", compile_filter(src, "f.py")) for i in range(3)])
assert all(o.fault is None for o in pool.run(batch))
print(json.dumps({"workers": [w.pid for w in pool._idle.values()], "zygote": pool._zygote.proc.pid,
                  "workdir": pool._workdir.path, "pidns": pool.enforced["pidns"]}), flush=True)
time.sleep(600)
"""


def test_sigkill_of_a_non_root_engine_takes_stopped_workers_with_it(nobody: Nobody) -> None:
    """SIGKILL a nobody engine while its workers are stopped between visits: without a PID
    namespace, parent-death signals alone must take the zygote and every worker; the next
    start (as nobody) removes the dead engine's worker directory."""
    engine = nobody.popen([sys.executable, "-c", ENGINE], stdout=subprocess.PIPE)
    try:
        info = json.loads(engine.stdout.readline())  # type: ignore[union-attr]
        assert not info["pidns"]  # the guarantee under test is the parent-death signals
        workers = info["workers"]
        assert sorted(_children(info["zygote"])) == sorted(workers)
        assert len(workers) == 3 and all_stopped(workers), "workers are stopped when idle"
        engine.send_signal(signal.SIGKILL)
        engine.wait()
        left = _running([info["zygote"], *workers], timeout_s=5)
        for pid, _state_letter in left:  # a failure must not leave them behind either
            os.kill(pid, signal.SIGKILL)
        assert left == []
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()
    assert os.path.isdir(info["workdir"])  # the dead engine could not clean up ...
    after = nobody.python(
        "import json; from sandbox.pool.workdir import Workdir\n"
        "w = Workdir(); w.close(); print(json.dumps(w.path))"
    )
    assert not os.path.exists(info["workdir"])  # ... the next start does
    assert not os.path.exists(str(after))
    assert not any(nobody.tmp.iterdir())


# --- the command line ---------------------------------------------------------------------------


def test_minibroker_test_as_nobody_works_and_warns_in_one_line(nobody: Nobody) -> None:
    """``minibroker test`` runs the filter in the worker pool (its default), so as nobody it
    succeeds and its stderr is the one isolation line, nothing else."""
    code, out, err = nobody.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "test",
            str(ROOT / "sample_filters" / "quality_cut.py"),
            "--night",
            str(nobody.home / "small.avro"),
            "--no-progress",
        ]
    )
    assert code == 0, err
    assert "filter quality_cut: 900 alerts in 3 visits" in out, out
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sandbox isolation incomplete (not root)"), err
    assert "run the engine as root for full isolation" in lines[0]
    assert not any(nobody.tmp.iterdir())  # its worker directory went with it
