"""The `minibroker` command, run in-process: exit codes, messages, and each verb."""

from __future__ import annotations

import json

import pytest

from engine.cli import main

FILTER = '''"""Bright, reliable detections."""
def filter(alerts):
    return (alerts.diaSource.snr > 30) & (alerts.diaSource.reliability > 0.8)
'''


def test_no_command_is_a_usage_error(capsys) -> None:
    """Without a command the CLI exits 2 and says so."""
    assert main([]) == 2
    assert "a command is required" in capsys.readouterr().err


def test_simulate_writes_a_night(tmp_path, capsys) -> None:
    """`simulate` writes the night file and reports what it wrote."""
    out = tmp_path / "n.avro"
    assert (
        main(
            [
                "simulate",
                "--out",
                str(out),
                "--visits",
                "2",
                "--alerts-per-visit",
                "50",
                "--no-progress",
            ]
        )
        == 0
    )
    assert out.exists() and "100 alerts in 2 visits" in capsys.readouterr().out


def test_test_prints_counts_and_matches(tmp_path, small_night, capsys) -> None:
    """`test` prints per-visit pass counts, the total, timing and a table of matches."""
    f = tmp_path / "bright.py"
    f.write_text(FILTER)
    assert main(["test", str(f), "--night", str(small_night), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "filter bright: 900 alerts in 3 visits" in out
    assert "total:" in out and "evaluation" in out and "first" in out and "diaSourceId" in out


def test_test_lists_every_policy_problem_and_exits_1(tmp_path, small_night, capsys) -> None:
    """A rejected filter prints all its problems with file:line and exits 1."""
    f = tmp_path / "bad.py"
    f.write_text("import os\ndef filter(alerts):\n    return alerts.__dict__\n")
    assert main(["test", str(f), "--night", str(small_night), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("minibroker: filter rejected")
    assert f"{f}:1" in err and f"{f}:3" in err


def test_run_and_subscribe(tmp_path, small_night, redis_url, unique_user, capsys) -> None:
    """`run` publishes to the owner's stream; `subscribe` prints them as JSON lines."""
    d = tmp_path / "filters" / unique_user
    d.mkdir(parents=True)
    (d / "bright.py").write_text(FILTER)
    assert (
        main(
            [
                "run",
                "--night",
                str(small_night),
                "--filters",
                str(tmp_path / "filters"),
                "--redis-url",
                redis_url,
                "--isolation",
                "inprocess",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "entries published" in capsys.readouterr().out
    assert (
        main(
            [
                "subscribe",
                "--user",
                unique_user,
                "--redis-url",
                redis_url,
                "--since",
                "0",
                "--exit-when-idle",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    entries = [json.loads(line) for line in lines]
    assert entries and all(e["filter"] == "bright" for e in entries if e["kind"] == "match")
    assert {e["kind"] for e in entries} >= {"match", "visit"}


def test_unreachable_redis_is_one_line_with_advice(tmp_path, small_night, capsys) -> None:
    """A Redis that is not there gives exit 1 and a message saying what to do."""
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "bright.py").write_text(FILTER)
    code = main(
        [
            "run",
            "--night",
            str(small_night),
            "--filters",
            str(tmp_path / "f"),
            "--redis-url",
            "redis://127.0.0.1:1/0",
            "--no-progress",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("minibroker: cannot reach Redis")
        and "minibroker demo" in err
        and "\n" not in err
    )


@pytest.mark.parametrize(
    "args", [["test", "x.py", "--night", "/nonexistent.avro", "--no-progress"]]
)
def test_missing_files_are_reported(args, tmp_path, capsys) -> None:
    """A missing night file is named with the command that makes one."""
    f = tmp_path / "x.py"
    f.write_text(FILTER)
    args = [str(f) if a == "x.py" else a for a in args]
    assert main(args) == 1
    assert "minibroker simulate" in capsys.readouterr().err


def test_subscribe_exits_cleanly_on_ctrl_c(redis_url, unique_user) -> None:
    """Ctrl-C (SIGINT) ends `subscribe` with exit 0 and no traceback."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "subscribe",
            "--user",
            unique_user,
            "--redis-url",
            redis_url,
            "--wait",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.5)  # connected and blocked in XREAD
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err
