"""Progress output: a redrawn bar on a terminal, a few plain lines in logs."""

from __future__ import annotations

import io

from engine.progress import Progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_gets_one_redrawn_line() -> None:
    """On a terminal every update redraws the same line, and close ends it."""
    out = _Tty()
    bar = Progress(4, stream=out)
    for i in range(1, 5):
        bar.update(i, f"step {i}")
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n") and "4/4 visits  step 4" in text


def test_logs_get_a_line_per_tenth() -> None:
    """In a log (not a tty) at most one plain line per tenth of the work is written."""
    out = io.StringIO()
    bar = Progress(100, stream=out)
    for i in range(1, 101):
        bar.update(i)
    assert (
        "\r" not in out.getvalue() and len(out.getvalue().splitlines()) == 11
    )  # start + 10 tenths


def test_disabled_bar_writes_nothing() -> None:
    """--no-progress silences it."""
    out = _Tty()
    bar = Progress(3, stream=out, enabled=False)
    bar.update(1)
    bar.close()
    assert out.getvalue() == ""
