"""A real Comet VOEvent broker (PyPI ``comet``, Twisted) for tests, on a free loopback port.

Comet's ``twistd comet`` binds 0.0.0.0 and has no option for the interface, so this module
builds the very service ``twistd comet`` builds (``comet.service.broker.makeService`` with its
own options: receiver, schema and IVORN validators, previously-seen database, save-event
plugin) and only binds it to 127.0.0.1 on a port the kernel picks. Run as a script it starts the
broker and prints ``PORT <n>``; :class:`CometBroker` runs that script in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import comet

VOEVENT_XSD = Path(comet.__file__).parent / "schema" / "VOEvent-v2.0.xsd"
TRANSPORT_XSD = Path(comet.__file__).parent / "schema" / "transport-1.1.xsd"
LOCAL_IVO = "ivo://minibroker.test/comet"


class CometBroker:
    """``with CometBroker(tmp_path) as broker:`` a Comet receiver at ``broker.port`` saving each
    accepted event as a file in ``broker.events``."""

    def __init__(self, root: Path, port: int = 0):
        self.root = root
        self.events = root / "events"
        self.port = port
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> CometBroker:
        self.events.mkdir(parents=True, exist_ok=True)
        (self.root / "db").mkdir(exist_ok=True)
        args = [
            "--receive",
            "--receive-port",
            str(self.port),
            "--local-ivo",
            LOCAL_IVO,
            "--eventdb",
            str(self.root / "db"),
            "--save-event",
            "--save-event-directory",
            str(self.events),
        ]
        # cwd: the save-event plugin puts its lock files in the working directory.
        self._proc = subprocess.Popen(
            [sys.executable, __file__, *args],
            cwd=self.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.startswith("PORT "):
                self.port = int(line.split()[1])
                break
        else:
            self._proc.wait()
            raise RuntimeError(f"comet did not start (exit {self._proc.returncode})")
        return self

    def saved(self) -> list[bytes]:
        """The events the broker accepted, as it saved them."""
        return [p.read_bytes() for p in sorted(self.events.iterdir())]

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()


def _serve(argv: list[str]) -> None:
    from comet.service.broker import Options, makeService
    from twisted.internet import reactor

    options = Options()
    options.parseOptions(argv)
    service = makeService(options)
    for server in service:  # the TCPServer services: listen on loopback only
        server.kwargs["interface"] = "127.0.0.1"
    service.startService()
    print("PORT", service.getServiceNamed("Receiver")._port.getHost().port, flush=True)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


if __name__ == "__main__":
    _serve(sys.argv[1:])
