"""What `test`, `run`, `simulate` and `demo` tell a scientist: faults once with their visits, the
matches the cap withheld, why nothing passed, every bad input named in one line, and the real
alerts they already have accepted as a night."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import fastavro
import pytest
from alertdata import SHARED_ALERTS

from engine.cli import main

LOOSE = '"""Everything reliable at all."""\ndef filter(alerts):\n    return alerts.diaSource.reliability >= 0\n'


def _filter(tmp_path: Path, body: str, name: str = "f") -> Path:
    f = tmp_path / f"{name}.py"
    f.write_text(f'"""A test filter."""\ndef filter(alerts):\n    {body}\n')
    return f


def _test(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["test", *args, "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_fault_on_any_visit_exits_1_and_is_printed_once(tmp_path, small_night, capsys) -> None:
    """A filter that raises on every visit makes `test` exit 1, its fault printed once with the
    visits it hit."""
    code, out, err = _test(
        capsys,
        str(_filter(tmp_path, "return alerts.diaSource.snr > 1 / 0")),
        "--night",
        str(small_night),
    )
    assert code == 1
    assert out.count("ZeroDivisionError") == 1
    assert (
        "FAULT [1] in 3 of 3 visits" in out and out.count("FAULT [1]") == 4
    )  # 3 rows + the message
    assert "faulted on 3 of 3 visits" in err and "Traceback" not in err


def test_a_wrong_return_type_exits_1(tmp_path, small_night, capsys) -> None:
    """Returning a number instead of booleans is a fault on every visit, and exit 1."""
    code, out, _ = _test(
        capsys, str(_filter(tmp_path, "return alerts.diaSource.snr")), "--night", str(small_night)
    )
    assert code == 1 and out.count("expected booleans") == 1


def test_test_says_how_many_matches_the_cap_would_withhold(
    tmp_path, small_night, capsys, monkeypatch
) -> None:
    """Over the per-visit cap, `test` says how many matches the service would withhold."""
    monkeypatch.setenv("MINIBROKER_MAX_MATCHES", "100")
    f = tmp_path / "loose.py"
    f.write_text(LOOSE)
    code, out, _ = _test(capsys, str(f), "--night", str(small_night))
    assert code == 0
    assert (
        "cap: the service would withhold 600 of these matches, over its cap of 100 per filter per visit, in 3 visit(s)"
        in out
    )


def test_nothing_passed_names_the_column(tmp_path, small_night, capsys) -> None:
    """A null test on a column that is never null passes nothing, and `test` and the report say
    which column made it so."""
    f = _filter(tmp_path, "return (alerts.diaSource.snr > 5) & isnull(alerts.diaSource.ssObjectId)")
    report = tmp_path / "r.html"
    code, out, _ = _test(capsys, str(f), "--night", str(small_night), "--report", str(report))
    assert code == 0
    (line,) = [x for x in out.splitlines() if x.startswith("warning:")]
    assert "passed none of the night's 900 alerts" in line
    assert "diaSource.ssObjectId is never null" in line and "ssObjectId is 0, not null" in line
    assert (
        "Nothing passed" in report.read_text()
        and "diaSource.ssObjectId is never null" in report.read_text()
    )


def test_a_packet_directory_and_a_foreign_file_are_nights(tmp_path, capsys) -> None:
    """`test --night` takes the shared folder of Kafka bodies, and a fastavro container of the
    same alerts, with a one-line warning each and the same counts."""
    f = tmp_path / "all.py"
    f.write_text(LOOSE)
    packets = tmp_path / "packets"  # a copy: the shared folder may have been walked already
    shutil.copytree(SHARED_ALERTS / "lsstcam" / "v11_1", packets)
    code, out, err = _test(capsys, str(f), "--night", str(packets))
    assert code == 0 and "64 alerts in 21 visits" in out and "total: 64 of 64" in out
    assert err.count("minibroker: warning:") == 1 and len(err.strip().splitlines()) == 1
    assert "UserWarning" not in err and "warnings.warn" not in err

    from engine.alerts.schema import load_schema
    from engine.alerts.wire import unframe

    schema = load_schema("11.1")
    import io

    records = [
        fastavro.schemaless_reader(io.BytesIO(unframe(p.read_bytes())[1]), schema.avro, schema.avro)
        for p in sorted((SHARED_ALERTS / "lsstcam" / "v11_1").glob("*.avro"))
    ]
    night = tmp_path / "saved.avro"
    with open(night, "wb") as fo:
        fastavro.writer(fo, fastavro.parse_schema(schema.avro), records, codec="deflate")
    code, out2, err = _test(capsys, str(f), "--night", str(night))
    assert code == 0 and "64 alerts in 21 visits" in out2
    assert err.startswith(
        f"minibroker: warning: {night} is an Avro container file not written by minibroker"
    )
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("make", ["truncated", "random", "directory", "missing"])
def test_bad_night_is_one_line_naming_it(make, tmp_path, small_night, capsys) -> None:
    """A truncated night, random bytes, a directory of non-alerts or a missing path: exit 1, one
    line naming the path, no traceback."""
    night = tmp_path / "night.avro"
    if make == "truncated":
        night.write_bytes(small_night.read_bytes()[:100_000])
        expect = f"{night}: truncated: the file ends at byte 100000"
    elif make == "random":
        night.write_bytes(os.urandom(4096).replace(b"\x00", b"\x01"))
        expect = f"{night}: not an Avro object container file"
    elif make == "directory":
        night = tmp_path / "notes"
        night.mkdir()
        (night / "a.csv").write_text("ra,dec\n")
        expect = f"{night}: a directory given as a night must hold single-alert files"
    else:
        expect = f"{night}: no such night file or directory"
    f = tmp_path / "all.py"
    f.write_text(LOOSE)
    code, _, err = _test(capsys, str(f), "--night", str(night))
    assert code == 1
    assert err.startswith(f"minibroker: {expect}") and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_run_skips_bad_users_lists_every_problem_and_counts_withheld(
    tmp_path, small_night, redis_url, unique_user, capsys, monkeypatch
) -> None:
    """Directories that cannot be user names and a rejected file are each listed and left out;
    the good user's filters run, and `run` says how many matches the cap withheld and each
    fault once with its visits."""
    monkeypatch.setenv("MINIBROKER_MAX_MATCHES", "100")
    root = tmp_path / "filters"
    for bad in ("bad name", "odd!"):
        (root / bad).mkdir(parents=True)
        (root / bad / "x.py").write_text(LOOSE)
    (root / unique_user).mkdir()
    (root / unique_user / "loose.py").write_text(LOOSE)
    (root / unique_user / "broken.py").write_text("import os\n")
    (root / unique_user / "zero.py").write_text(
        '"""Faults."""\ndef filter(alerts):\n    return alerts.diaSource.snr > 1 / 0\n'
    )
    code = main(
        [
            "run",
            "--night",
            str(small_night),
            "--filters",
            str(root),
            "--redis-url",
            redis_url,
            "--isolation",
            "inprocess",
            "--no-progress",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"{root / 'bad name'} left out: 'bad name' cannot be a user name" in err
    assert (
        f"{root / 'odd!'} left out" in err
        and f"{unique_user}/broken left out: filter rejected" in err
    )
    assert "2 filters: 300 entries published" in out
    assert f"{unique_user}/loose: delivered 300, withheld 600" in out
    assert (
        out.count(f"{unique_user}/zero: faulted on 3 of 3 visits") == 1
        and "ZeroDivisionError" in out
    )


def test_demo_totals_add_up(redis_url, capsys) -> None:
    """The demo's matches, minus those the cap withheld, are what it published."""
    import re

    from engine.config import Config
    from engine.local.demo import run_demo

    config = dataclasses.replace(Config(), redis_url=redis_url, max_matches_per_visit=20)
    assert run_demo(config, visits=2, alerts_per_visit=300, isolation="inprocess") == 0
    out = capsys.readouterr().out
    m = re.search(
        r"(\d+) matches, (\d+) withheld by the cap of 20 per filter per visit, (\d+) published", out
    )
    assert m, out
    matches, withheld, published = map(int, m.groups())
    assert withheld > 0 and matches - withheld == published
    assert "withheld by the cap)" in out


def test_simulate_refuses_a_missing_directory(tmp_path, capsys) -> None:
    """`simulate --out` into a directory that does not exist is refused, and nothing is created."""
    out = tmp_path / "no" / "such" / "x.avro"
    assert (
        main(
            [
                "simulate",
                "--out",
                str(out),
                "--visits",
                "1",
                "--alerts-per-visit",
                "5",
                "--no-progress",
            ]
        )
        == 1
    )
    assert "does not exist; create it first" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def test_simulate_same_bytes_in_separate_processes(tmp_path) -> None:
    """Two processes with different hash seeds write byte-identical nights and sidecars."""
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"n{seed}.avro"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run(
            [
                sys.executable,
                "-m",
                "engine.cli",
                "simulate",
                "--out",
                str(out),
                "--visits",
                "2",
                "--alerts-per-visit",
                "40",
                "--seed",
                "5",
                "--no-progress",
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        outs.append(out)
    assert outs[0].read_bytes() == outs[1].read_bytes()
    assert Path(f"{outs[0]}.truth.json").read_bytes() == Path(f"{outs[1]}.truth.json").read_bytes()


def test_without_a_c_compiler_decoding_falls_back_and_says_so_once(tmp_path, small_night) -> None:
    """With no compiler on PATH, `test` gives the same counts through fastavro and one warning line."""
    f = tmp_path / "loose.py"
    f.write_text(LOOSE)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CC", "MINIBROKER_CC", "MINIBROKER_DECODER")
    }
    env["PATH"] = str(tmp_path)  # no gcc, no cc
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "test",
            str(f),
            "--night",
            str(small_night),
            "--no-progress",
            "--show",
            "0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "total: 900 of 900 alerts passed" in proc.stdout
    assert proc.stderr.count("minibroker: warning: fast decoding is off (no C compiler found") == 1
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_corrupt_visit_is_skipped_named_and_exits_1(tmp_path, small_night, capsys) -> None:
    """A visit whose alerts are corrupt is reported as SKIPPED with where, the others run, and
    `test` exits 1 naming the file."""
    from engine.sources.night import _read_header

    data = bytearray(small_night.read_bytes())
    _, _, start = _read_header(memoryview(bytes(data)))
    data[start + 12 : start + 76] = b"\xff" * 64  # the first alert's leading fields
    night = tmp_path / "corrupt.avro"
    night.write_bytes(bytes(data))
    f = tmp_path / "all.py"
    f.write_text(LOOSE)
    code, out, err = _test(capsys, str(f), "--night", str(night))
    assert code == 1
    assert "SKIPPED" in out and "600 alerts in 2 visits" in out
    assert (
        err.startswith(f"minibroker: {night}: 1 visit(s) could not be decoded")
        and "Traceback" not in err
    )


def test_a_bad_filter_file_is_named_before_any_sample_night_is_made(
    tmp_path, monkeypatch, capsys
) -> None:
    """`test` with no --night checks the filter file first: a missing file fails at once, without
    generating the default sample night."""
    monkeypatch.setenv("MINIBROKER_CACHE", str(tmp_path / "cache"))
    assert main(["test", str(tmp_path / "missing.py"), "--no-progress"]) == 1
    assert "missing.py: no such file" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "nights").exists()
