"""Filters run over a visit batch: null rules, exact ids, result validation, fault reports."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from sandbox import InProcessRunner, compile_filter

BATCH = pa.RecordBatch.from_pylist(
    [
        {
            "diaSourceId": 2**62 + 1,
            "diaSource": {"snr": 50.0, "band": "g", "pixelFlags_cr": None},
            "diaObject": {"nDiaSources": 3},
        },
        {
            "diaSourceId": 2**62 + 2,
            "diaSource": {"snr": None, "band": "r", "pixelFlags_cr": True},
            "diaObject": None,
        },
        {
            "diaSourceId": 2**62 + 113,
            "diaSource": {"snr": 4.0, "band": None, "pixelFlags_cr": False},
            "diaObject": {"nDiaSources": None},
        },
    ],
    schema=pa.schema(
        [
            ("diaSourceId", pa.int64()),
            (
                "diaSource",
                pa.struct(
                    [("snr", pa.float32()), ("band", pa.string()), ("pixelFlags_cr", pa.bool_())]
                ),
            ),
            ("diaObject", pa.struct([("nDiaSources", pa.int32())])),
        ]
    ),
)


def run(body: str) -> np.ndarray:
    """Run a one-expression filter over BATCH and return its mask (or raise its fault)."""
    f = compile_filter(f'"""Test."""\ndef filter(alerts):\n    return {body}\n', "t.py")
    (outcome,) = InProcessRunner([("u/t", f)]).run(BATCH)
    if outcome.fault:
        raise outcome.fault
    return outcome.mask.tolist()


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("alerts.diaSource.snr > 5", [True, False, False]),
        ("alerts.diaSource.snr <= 5", [False, False, True]),
        ("~(alerts.diaSource.snr > 5)", [False, True, True]),
        ("isnull(alerts.diaSource.snr)", [False, True, False]),
        ("notnull(alerts.diaObject.nDiaSources)", [True, False, False]),
        ("fill(alerts.diaSource.snr, 100) > 5", [True, True, False]),
        ("alerts['diaObject.nDiaSources'] >= 1", [True, False, False]),
        ("alerts.diaSource.band == 'g'", [True, False, False]),
        ("alerts.diaSource.band != 'g'", [False, True, False]),
        ("~alerts.diaSource.pixelFlags_cr", [True, False, True]),
        ("alerts.diaSource.pixelFlags_cr | (alerts.diaSource.snr > 10)", [True, True, False]),
        ("alerts.diaSourceId % 113 == (2**62 + 113) % 113", [False, False, True]),
        ("alerts.diaSourceId == 4611686018427387905", [True, False, False]),
        ("(alerts.diaSource.snr * 2 + 1) > 100", [True, False, False]),
        ("True", [True, True, True]),
    ],
)
def test_null_rules_and_operators(expr: str, expected: list[bool]) -> None:
    """Comparisons with null are False, null flags count as unset, int64 ids stay exact."""
    assert run(expr) == expected


@pytest.mark.parametrize(
    ("expr", "reason", "message"),
    [
        ("alerts.diaSource.snr", "bad-result", "float32"),
        ("[True, False, True]", "bad-result", "list"),
        ("alerts.diaSource.nope > 1", "error", "no column 'diaSource.nope'"),
        (
            "alerts.diaSource.snr > 1 and alerts.diaSource.snr < 2",
            "error",
            "combine conditions with & | ~",
        ),
        ("1 / 0", "error", "ZeroDivisionError"),
    ],
)
def test_faults_name_the_line_and_what_to_do(expr: str, reason: str, message: str) -> None:
    """A failing filter is a fault for its owner with file:line and advice, not a crash."""
    f = compile_filter(f'"""Test."""\ndef filter(alerts):\n    return {expr}\n', "t.py")
    (outcome,) = InProcessRunner([("u/t", f)]).run(BATCH)
    assert outcome.mask is None and outcome.fault is not None
    assert outcome.fault.reason == reason
    assert message in str(outcome.fault)
    if reason == "error":
        assert str(outcome.fault).startswith("u/t.py:3")  # named by owner/name


def test_one_failing_filter_does_not_disturb_others() -> None:
    """Filters before and after a failing one still deliver their masks."""
    ok = compile_filter(
        '"""Ok."""\ndef filter(alerts):\n    return alerts.diaSource.snr > 5\n', "ok.py"
    )
    bad = compile_filter('"""Bad."""\ndef filter(alerts):\n    return 1 / 0\n', "bad.py")
    outcomes = InProcessRunner([("a/ok", ok), ("b/bad", bad), ("c/ok", ok)]).run(BATCH)
    assert [o.passed for o in outcomes] == [1, 0, 1]
    assert outcomes[1].fault is not None


def test_columns_are_read_only_for_filters() -> None:
    """A filter cannot change column data another filter sees."""
    mutate = compile_filter(
        '"""Mutate."""\ndef filter(alerts):\n    c = alerts.diaSource.snr\n    c.fill(0)\n    return c > 5\n',
        "m.py",
    )
    ok = compile_filter(
        '"""Ok."""\ndef filter(alerts):\n    return alerts.diaSource.snr > 5\n', "ok.py"
    )
    outcomes = InProcessRunner([("a/m", mutate), ("b/ok", ok)]).run(BATCH)
    assert outcomes[1].mask.tolist() == [True, False, False]
