"""From filter file to registry: submit as the user, validated and answered by the engine."""

from __future__ import annotations

import threading
import uuid

import pytest

from engine.cli import main
from engine.config import load_config
from engine.decode import decode_block
from engine.registry.inbox import Op, Status, request, submit_file
from engine.registry.store import ActiveFilters, FilterStatus, Registry
from engine.registry.users import add_user, connect, remove_user
from engine.service.submissions import process_pending
from engine.sources.night import night_info, read_night

GOOD = '''"""Bright, reliable detections."""
def filter(alerts):
    return (alerts.diaSource.snr > 50) & (alerts.diaSource.reliability > 0.8)
'''
STRICTER = GOOD.replace("> 50", "> 100")
BAD = '''"""Breaks two rules."""
import os

def filter(alerts):
    return alerts.__class__
'''
GREEDY = '''"""Everything."""
def filter(alerts):
    return True
'''
CRASHES = '''"""Fails when it runs."""
def filter(alerts):
    return alerts.diaSource.snr / 0 > "x"
'''


@pytest.fixture(scope="module")
def reference(small_night):
    """The first visit of the small sample night: the dry-run reference."""
    schema, _ = night_info(small_night)
    return decode_block(next(iter(read_night(small_night))), schema)


@pytest.fixture()
def user(redis_url):
    """A fresh user: (name, REDIS_URL printed by add-user, that user's client)."""
    import redis

    admin = redis.Redis.from_url(redis_url)
    name = f"s{uuid.uuid4().hex[:8]}"
    url = add_user(admin, redis_url, name)
    client = connect(url)
    yield name, url, client
    client.close()
    remove_user(admin, name)
    admin.close()


@pytest.fixture()
def engine(redis_client, reference):
    """Answers requests in the background (as `serve` does once per visit) while a test talks
    to it as a user; call it to start."""
    config = load_config(env={}, isolation="inprocess")
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            process_pending(redis_client, reference, config)
            stop.wait(0.05)

    thread = threading.Thread(target=loop, daemon=True)
    yield thread.start
    stop.set()
    if thread.is_alive():
        thread.join(10)


def test_submit_accepts_versions_and_the_engine_picks_them_up(
    user, engine, redis_client, tmp_path
) -> None:
    """An accepted file becomes version 1, a changed one version 2; the active set follows
    submit, disable, enable and delete without a restart."""
    name, _, client = user
    path = tmp_path / "bright.py"
    path.write_text(GOOD)
    active = ActiveFilters(redis_client)
    active.refresh()
    engine()
    reply = submit_file(client, name, path, wait_s=20)
    assert reply.status is Status.ACCEPTED and reply.version == 1, reply
    assert reply.alerts == 300 and 0 < reply.passed <= 15
    assert active.refresh()
    mine = [f for f in active.filters if f.user == name]
    assert [f.compiled.name for f in mine] == ["bright"]

    path.write_text(STRICTER)
    assert submit_file(client, name, path, wait_s=20).version == 2
    active.refresh()
    (now,) = [f for f in active.filters if f.user == name]
    assert "> 100" in now.compiled.source
    history = Registry(client).history(name, "bright")  # the user reads their own registry
    assert [v.version for v in history] == [1, 2] and history[0].code == GOOD

    assert request(client, name, Op.DISABLE, "bright", wait_s=20).ok
    active.refresh()
    assert not [f for f in active.filters if f.user == name]
    assert Registry(client).get(name, "bright").status is FilterStatus.DISABLED
    assert request(client, name, Op.ENABLE, "bright", wait_s=20).ok
    active.refresh()
    assert [f for f in active.filters if f.user == name]
    assert request(client, name, Op.DELETE, "bright", wait_s=20).ok
    active.refresh()
    assert not [f for f in active.filters if f.user == name]
    assert request(client, name, Op.DELETE, "bright", wait_s=20).status is Status.REFUSED


def test_rejections_list_every_problem_with_its_line(user, engine, tmp_path) -> None:
    """A file breaking the policy is rejected with each problem as file:line and rule."""
    name, _, client = user
    path = tmp_path / "bad.py"
    path.write_text(BAD)
    engine()
    reply = submit_file(client, name, path, wait_s=20)
    assert reply.status is Status.REJECTED
    lines = {(file, line) for file, line, _, _ in reply.problems}
    assert ("bad.py", 2) in lines and ("bad.py", 5) in lines


def test_a_filter_passing_too_much_is_refused_with_numbers(user, engine, tmp_path) -> None:
    """A dry run passing more than 5% of the reference visit is refused, with the counts."""
    name, _, client = user
    path = tmp_path / "all.py"
    path.write_text(GREEDY)
    engine()
    reply = submit_file(client, name, path, wait_s=20)
    assert reply.status is Status.REJECTED
    (problem,) = reply.problems
    assert problem[2] == "selectivity" and "passes 300 of the 300 alerts" in problem[3]


def test_a_filter_failing_its_dry_run_is_refused(user, engine, tmp_path) -> None:
    """A filter that raises on the reference visit is refused with the line that failed."""
    name, _, client = user
    path = tmp_path / "crash.py"
    path.write_text(CRASHES)
    engine()
    reply = submit_file(client, name, path, wait_s=20)
    assert reply.status is Status.REJECTED
    assert reply.problems[0][2] == "dry-run-error" and "crash.py:3" in reply.problems[0][3]


def test_submit_and_filters_commands(
    user, engine, tmp_path, capsys, small_night, redis_url
) -> None:
    """`submit` exits 0 when accepted and 1 with every problem when rejected; `filters`
    lists, shows and changes the user's filters; `run` without --filters runs the registry."""
    name, url, _ = user
    good, bad = tmp_path / "bright.py", tmp_path / "bad.py"
    good.write_text(GOOD)
    bad.write_text(BAD)
    engine()
    assert main(["submit", str(good), "--redis-url", url, "--wait", "20"]) == 0
    assert "bright: accepted as version 1" in capsys.readouterr().out
    assert main(["submit", str(bad), "--name", "other", "--redis-url", url, "--wait", "20"]) == 1
    err = capsys.readouterr().err
    assert "bad.py:2:" in err and "bad.py:5:" in err

    assert (
        main(
            [
                "run",
                "--night",
                str(small_night),
                "--redis-url",
                redis_url,
                "--isolation",
                "inprocess",
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"{name}/bright: delivered " in out and "withheld" in out

    assert main(["filters", "list", "--redis-url", url]) == 0
    out = capsys.readouterr().out
    assert out.startswith("bright") and "active" in out and "visits 3" in out
    assert main(["filters", "show", "bright", "--redis-url", url]) == 0
    assert "reliability > 0.8" in capsys.readouterr().out
    assert main(["filters", "history", "bright", "--redis-url", url]) == 0
    assert capsys.readouterr().out.startswith("v1 ")
    assert main(["filters", "disable", "bright", "--redis-url", url, "--wait", "20"]) == 0
    assert "disabled" in capsys.readouterr().out
    assert main(["filters", "enable", "bright", "--redis-url", url, "--wait", "20"]) == 0
    assert main(["filters", "delete", "bright", "--redis-url", url, "--wait", "20"]) == 0
    capsys.readouterr()
    assert main(["filters", "show", "bright", "--redis-url", url]) == 1
    assert "no filter named 'bright'" in capsys.readouterr().err


def test_submit_without_an_engine_says_so_and_process_submissions_answers(
    user, tmp_path, capsys, redis_url, small_night
) -> None:
    """With no engine answering, submit gives up after --wait and says what to do; the request
    stays in the inbox and `admin process-submissions --wait` answers it."""
    name, url, client = user
    path = tmp_path / "bright.py"
    path.write_text(GOOD)
    assert main(["submit", str(path), "--redis-url", url, "--wait", "0.3"]) == 1
    assert "process-submissions" in capsys.readouterr().err
    assert (
        main(
            [
                "admin",
                "process-submissions",
                "--wait",
                "0.2",
                "--reference",
                str(small_night),
                "--redis-url",
                redis_url,
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith("1 request(s) answered")
    assert Registry(client).get(name, "bright").version == 1


def test_control_plane_between_visits(user, redis_client, reference) -> None:
    """A serve loop's ControlPlane answers a request and reports the changed active set at once."""
    from engine.registry import keys
    from engine.service.control import ControlPlane

    name, _, client = user
    control = ControlPlane(redis_client, load_config(env={}, isolation="inprocess"), reference)
    control.between_visits()
    client.xadd(
        keys.inbox_key(name),
        {"request": "r1", "op": "submit", "name": "bright", "filename": "bright.py", "code": GOOD},
    )
    assert control.between_visits()
    assert f"{name}/bright" in {f.key for f in control.filters} and control.answered >= 1
    assert not control.between_visits()


def test_a_filter_overrunning_the_budget_in_its_dry_run_is_refused(user, reference) -> None:
    """With the service's worker pool, a dry run that overruns the time budget is stopped and
    the submission refused with the budget named."""
    from engine.service.submissions import validate

    name, _, _ = user
    loop = '"""Never ends."""\n\ndef filter(alerts):\n    while True:\n        pass\n'
    config = load_config(env={}, isolation="pool", budget_s=0.3)
    reply, code_hash = validate(name, "loop", "loop.py", loop, reference, config)
    assert code_hash is None and reply.status is Status.REJECTED
    assert reply.problems[0][2] == "dry-run-timeout" and "0.3 s" in reply.problems[0][3]
