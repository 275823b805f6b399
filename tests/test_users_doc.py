"""docs/users.md works as written: every command of the walk-through, in order, as its actor."""

from __future__ import annotations

import re
import shlex
import threading
from pathlib import Path

from engine.cli import main
from engine.config import load_config
from engine.decode import decode_block
from engine.registry.users import remove_user
from engine.service.submissions import process_pending
from engine.sources.night import night_info, read_night

DOC = (Path(__file__).resolve().parents[1] / "docs" / "users.md").read_text()


def _steps() -> list[tuple[str, str]]:
    """(actor, command line) for every `$ ` line of the console blocks, in order."""
    steps = []
    for block in re.findall(r"```console\n(.*?)```", DOC, re.S):
        lines = block.splitlines()
        actor = lines[0].lstrip("# ").strip()
        steps += [(actor, line[2:]) for line in lines[1:] if line.startswith("$ ")]
    return steps


def test_the_walk_through_runs(tmp_path, monkeypatch, capsys, redis_url, redis_client) -> None:
    """Operator and user run each command of docs/users.md; every one exits 0 and the user's
    stream ends up with the filter's matches (and the files written by --out)."""
    (source,) = re.findall(r"```python\n(.*?)```", DOC, re.S)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bright.py").write_text(source)
    monkeypatch.setenv("MINIBROKER_ISOLATION", "inprocess")
    urls = {"operator": redis_url}
    stop, thread = threading.Event(), None

    def engine() -> None:  # what a running `serve` does between visits
        schema, _ = night_info(tmp_path / "night.avro")
        reference = decode_block(next(iter(read_night(tmp_path / "night.avro"))), schema)
        config = load_config(env={}, isolation="inprocess")
        while not stop.is_set():
            process_pending(redis_client, reference, config)
            stop.wait(0.05)

    steps = _steps()
    assert {actor for actor, _ in steps} == {"operator", "alice"}
    try:
        for actor, line in steps:
            if line.startswith("export REDIS_URL="):
                continue  # the URL add-user printed, set below
            argv = shlex.split(line)
            assert argv[0] == "minibroker", line
            monkeypatch.setenv("REDIS_URL", urls.get(actor, redis_url))
            code = main(argv[1:])
            out = capsys.readouterr()
            assert code == 0, f"{line}: {out.err}"
            if argv[1:3] == ["admin", "add-user"]:
                urls[argv[3]] = out.out.strip()
                thread = threading.Thread(target=engine, daemon=True)
                thread.start()
        assert len(list((tmp_path / "alerts").glob("bright-*.avro"))) > 0
    finally:
        stop.set()
        if thread is not None:
            thread.join(10)
        remove_user(redis_client, "alice")


def test_readme_walk_through_is_the_tested_one() -> None:
    """Every command of the README's "own stream" section is a step of docs/users.md, which the
    walk-through above runs."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## From filter file to alerts on your own stream", 1)[1].split(
        "\n## ", 1
    )[0]
    (block,) = re.findall(r"```console\n(.*?)```", section, re.S)
    commands = [line[2:] for line in block.splitlines() if line.startswith("$ ")]
    tested = {line for _, line in _steps()}
    assert commands and all(c in tested for c in commands), [c for c in commands if c not in tested]
