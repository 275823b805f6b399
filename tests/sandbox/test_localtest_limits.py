"""`minibroker test` runs a filter under the service's budget and limits by default, so a
filter that passes locally behaves the same in production."""

from __future__ import annotations

import time

import pytest

from engine.cli import main

FOREVER = '"""Never ends."""\ndef filter(alerts):\n    while True:\n        pass\n'
GREEDY = '"""Wants 10 GB."""\ndef filter(alerts):\n    x = [0] * (10 * 2**30 // 8)\n    return alerts.diaSource.snr > len(x)\n'


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (FOREVER, "stopped after exceeding its time budget of 0.5 s"),
        (GREEDY, "memory"),
    ],
)
def test_test_applies_the_service_limits(
    source: str, expected: str, tmp_path, small_night, capsys
) -> None:
    """An endless loop stops after the budget and a 10 GB allocation is refused, each with a
    clear message, and the command finishes (exit 1: the filter faulted)."""
    f = tmp_path / "limits.py"
    f.write_text(source)
    start = time.monotonic()
    assert main(["test", str(f), "--night", str(small_night), "--no-progress"]) == 1  # it faulted
    out = capsys.readouterr().out
    assert expected in out, out
    assert time.monotonic() - start < 30
