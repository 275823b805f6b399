"""The adversarial suite: every attack in :mod:`attack_suite` has its precise outcome, leaves no
trace outside (no file, no connection) and changes no other filter's result."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from attack_suite import ATTACKS, HONEST, Attack, Outside

from sandbox import FilterRejected, InProcessRunner, compile_filter
from sandbox.pool import WorkerPool

REJECTED = [a for a in ATTACKS if a.expect.startswith("rejected:")]
RUNTIME = [a for a in ATTACKS if not a.expect.startswith("rejected:")]
BUDGET_S = 0.3


def test_the_suite_is_large_and_covers_every_category() -> None:
    """At least 60 distinct attacks, across every category the issue names."""
    assert len({a.name for a in ATTACKS}) == len(ATTACKS) >= 60
    assert {a.category for a in ATTACKS} >= {
        "frames",
        "format",
        "subclasses",
        "builtins",
        "numpy",
        "files",
        "network",
        "processes",
        "cpu",
        "memory",
        "recursion",
        "numbers",
        "regex",
        "state",
        "result",
        "source",
    }


@pytest.mark.parametrize("attack", REJECTED, ids=lambda a: a.name)
def test_rejected_at_compile(attack: Attack, outside: Outside) -> None:
    """The attack is refused at submit with its rule, a line where there is one, and advice."""
    with pytest.raises(FilterRejected) as info:
        compile_filter(
            attack.source(str(outside.marker_dir / "m"), outside.port), f"{attack.name}.py"
        )
    rule = attack.expect.split(":", 1)[1]
    problems = [p for p in info.value.problems if p.rule == rule]
    assert problems, info.value
    if rule not in ("too-large", "entry-point", "too-deep"):
        assert all(p.line for p in problems), info.value
    assert all(len(p.message) > 15 for p in problems)
    assert f"{attack.name}.py" in str(info.value)
    outside.assert_untouched()


def _reference(visit: pa.RecordBatch) -> dict[str, np.ndarray]:
    runner = InProcessRunner([(k, compile_filter(src, f"{k}.py")) for k, src in HONEST.items()])
    masks = {o.key: o.mask for o in runner.run(visit)}
    assert all(m is not None for m in masks.values())
    masks["all"] = np.ones(visit.num_rows, bool)
    return masks


@pytest.fixture(scope="module")
def pool_outcomes(visit: pa.RecordBatch, outside: Outside) -> list[dict]:
    """Two visits through one pool: every runtime attack as its own user, honest filters as
    another, and a user whose honest filters sit between attacks in the same worker."""
    filters = []
    for i, a in enumerate(RUNTIME):
        src = a.source(str(outside.marker_dir / f"m{i}"), outside.port)
        filters.append((f"attacker{i}/{a.name}", compile_filter(src, f"{a.name}.py")))
    honest = [(f"honest/{k}", compile_filter(src, f"{k}.py")) for k, src in HONEST.items()]
    mixed = []
    killers = [a for a in RUNTIME if a.expect in ("timeout", "memory", "error")][:6]
    for k, (key, cf) in enumerate(honest):
        mixed.append((f"mixed/{key.split('/')[1]}", cf))
        if k < len(killers):
            mixed.append(
                (
                    f"mixed/{killers[k].name}",
                    compile_filter(killers[k].source(), f"{killers[k].name}.py"),
                )
            )
    with WorkerPool(
        honest[:3] + filters + mixed + honest[3:], budget_s=BUDGET_S, max_faults=5
    ) as pool:
        runs = [{o.key: o for o in pool.run(visit)} for _ in range(2)]
        assert pool.enforced == {
            "netns": True,
            "pidns": True,
            "rlimits": True,
            "chroot": True,
            "uid": True,
            "no_new_privs": True,
            "seccomp": True,
        }
    return runs


@pytest.mark.parametrize("attack", RUNTIME, ids=lambda a: a.name)
def test_runtime_attack_is_contained(
    attack: Attack, pool_outcomes: list[dict], visit: pa.RecordBatch, outside: Outside
) -> None:
    """In the worker pool the attack ends exactly as expected, on both visits."""
    i = RUNTIME.index(attack)
    reference = _reference(visit)
    for run in pool_outcomes:
        o = run[f"attacker{i}/{attack.name}"]
        if attack.expect.startswith("ok:"):
            assert o.fault is None, o.fault
            np.testing.assert_array_equal(o.mask, reference[attack.expect[3:]])
        else:
            assert o.mask is None
            assert o.fault is not None and o.fault.reason == attack.expect, o.fault
            assert f"{attack.name}.py" in str(o.fault)
    outside.assert_untouched()


def test_honest_filters_deliver_unchanged(pool_outcomes: list[dict], visit: pa.RecordBatch) -> None:
    """Honest filters, alone or sharing a worker with attacks, return the in-process masks."""
    reference = _reference(visit)
    for run in pool_outcomes:
        for k in HONEST:
            for key in (f"honest/{k}", f"mixed/{k}"):
                assert run[key].fault is None, run[key].fault
                np.testing.assert_array_equal(run[key].mask, reference[k])


@pytest.mark.parametrize(
    "attack",
    [a for a in RUNTIME if a.expect in ("error", "bad-result") or a.expect.startswith("ok:")],
    ids=lambda a: a.name,
)
def test_language_layers_contain_it_in_process_too(attack: Attack, visit: pa.RecordBatch) -> None:
    """Attacks that end in an error are already stopped by the namespace (defence in depth)."""
    cf = compile_filter(attack.source(), f"{attack.name}.py")
    (o,) = InProcessRunner([("u/a", cf)]).run(visit)
    if attack.expect.startswith("ok:"):
        np.testing.assert_array_equal(o.mask, _reference(visit)[attack.expect[3:]])
    else:
        assert o.fault is not None and o.fault.reason == attack.expect, o.fault
