"""Progress on long work: a redrawn bar on a terminal, a few plain lines in a log."""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """``[#####     ] 5/10 visits  detail`` on stderr.

    On a terminal the line is redrawn in place; when stderr is a file or a pipe (CI logs), a
    plain line is written at every tenth of the work instead, so logs stay readable.
    """

    def __init__(
        self,
        total: int | None,
        unit: str = "visits",
        *,
        stream: TextIO | None = None,
        width: int = 20,
        enabled: bool = True,
    ):
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stderr
        self.width = width
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._drawn = False
        self._last_tenth = -1

    def update(self, done: int, detail: str = "") -> None:
        """Show that ``done`` of ``total`` units are finished."""
        if not self.enabled:
            return
        count = f"{done}/{self.total} {self.unit}" if self.total else f"{done} {self.unit}"
        if self.total:
            fill = min(self.width, round(self.width * done / self.total))
            bar = f"[{'#' * fill}{' ' * (self.width - fill)}] "
        else:
            bar = ""
        if self.tty:
            self.stream.write(f"\r{bar}{count}  {detail}\033[K")
            self._drawn = True
        else:
            tenth = 10 * done // self.total if self.total else done
            if tenth == self._last_tenth:
                return
            self._last_tenth = tenth
            self.stream.write(f"{bar}{count}  {detail}".rstrip() + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Blank the bar's line, so other output can be printed there."""
        if self.enabled and self.tty and self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def close(self) -> None:
        """End the bar's line."""
        if self.enabled and self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
