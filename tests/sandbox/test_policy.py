"""The policy does not surprise an honest astronomer: typical filters compile and run, common
mistakes get a message with the line, the rule and what to do, and the docs list every rule."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from attack_suite import HONEST

from sandbox import FilterRejected, InProcessRunner, compile_filter
from sandbox.policy import POLICY

DOC = Path(__file__).resolve().parents[2] / "docs" / "filters-policy.md"


def _rejected(body: str) -> list:
    src = f'"""Mistake."""\n\ndef filter(alerts):\n{body}\n'
    with pytest.raises(FilterRejected) as info:
        compile_filter(src, "mine.py")
    return info.value.problems


@pytest.mark.parametrize("name", list(HONEST))
def test_typical_science_filters_compile_and_run(name: str, visit: pa.RecordBatch) -> None:
    """Quality cuts, lightcurve statistics, sky regions and magnitudes all work."""
    (o,) = InProcessRunner([("u/f", compile_filter(HONEST[name], f"{name}.py"))]).run(visit)
    assert o.fault is None and o.mask.dtype == bool and len(o.mask) == visit.num_rows


@pytest.mark.parametrize(
    ("body", "rule", "line", "advice"),
    [
        ("    import math\n    return True", "no-import", 4, "already in scope"),
        ("    print(alerts)\n    return True", "forbidden-name", 4, "minibroker test"),
        ("    return np.log10(alerts.diaSource.psfFlux) > 1", "forbidden-name", 4, "helpers"),
        ("    return type(alerts) is None", "forbidden-name", 4, "isinstance"),
        (
            "    try:\n        return True\n    except ValueError:\n        return False",
            "no-try",
            4,
            "reported to you",
        ),
        ("    return '{}'.format(1) == '1'", "forbidden-attribute", 4, "filters-policy.md"),
    ],
)
def test_common_mistakes_say_where_and_what_to_do(
    body: str, rule: str, line: int, advice: str
) -> None:
    """Each message names mine.py, the line, the rule and a way forward."""
    (p,) = [p for p in _rejected(body) if p.rule == rule]
    assert p.line == line and advice in p.message and str(p).startswith(f"mine.py:{line}:")


def test_and_instead_of_ampersand_explains_itself(visit: pa.RecordBatch) -> None:
    """Using `and` on columns is a runtime error that says to use & and parentheses."""
    src = '"""x"""\n\ndef filter(alerts):\n    return alerts.diaSource.snr > 5 and alerts.diaSource.snr < 50\n'
    (o,) = InProcessRunner([("u/mine", compile_filter(src, "/srv/filters/u/mine.py"))]).run(visit)
    assert (
        o.fault.reason == "error" and str(o.fault).startswith("u/mine.py:4") and "&" in str(o.fault)
    )


def test_long_condition_chains_are_not_too_deep() -> None:
    """Forty conditions joined with & stay within the nesting limit."""
    cond = " & ".join(f"(alerts.diaSource.snr > {i})" for i in range(40))
    compile_filter(f'"""Many cuts."""\n\ndef filter(alerts):\n    return {cond}\n', "many.py")


def test_the_documented_policy_matches_the_code() -> None:
    """Every forbidden name and node rule in Policy appears in docs/filters-policy.md."""
    doc = DOC.read_text()
    missing = [n for n in POLICY.forbidden_names if f"{n}" not in doc]
    assert not missing, missing
    assert all(rule in doc for _node, rule, _msg in POLICY.forbidden_nodes)
