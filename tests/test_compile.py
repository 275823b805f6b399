"""Filter files are checked at load time; every problem is reported with its line and rule."""

from __future__ import annotations

import pytest

from sandbox import FilterRejected, compile_filter, load_filter

GOOD = '''"""Bright, reliable detections."""
THRESHOLD = 20

def filter(alerts):
    return (alerts.diaSource.snr > THRESHOLD) & (alerts["diaSource.reliability"] > 0.9)
'''


def _problems(source: str) -> list:
    with pytest.raises(FilterRejected) as info:
        compile_filter(source, "f.py")
    return info.value.problems


def test_a_good_filter_compiles_with_its_description_and_columns() -> None:
    """A plain filter compiles; its docstring and the names it mentions are recorded."""
    f = compile_filter(GOOD, "bright.py")
    assert f.name == "bright"
    assert f.description == "Bright, reliable detections."
    assert f.reads({"diaSource.snr", "diaSource.reliability", "diaObject.ra", "diaSource.ra"}) == {
        "diaSource.snr",
        "diaSource.reliability",
    }


def test_all_problems_are_listed_at_once_with_lines() -> None:
    """One rejection lists every problem, each with file:line and a rule name."""
    problems = _problems(
        "import os\n\ndef filter(alerts):\n    global x\n    return alerts.__class__\n"
    )
    rules = {(p.line, p.rule) for p in problems}
    assert (1, "docstring") in rules
    assert (1, "no-import") in rules
    assert (4, "no-global") in rules
    assert any(p.line == 5 and "_" in p.message for p in problems)
    assert all(str(p).startswith("f.py:") for p in problems)


def test_missing_entry_point_is_explained() -> None:
    """A file without `def filter(alerts)` is told what to define."""
    (p,) = _problems('"""Nothing."""\nX = 1\n')
    assert p.rule == "entry-point" and "def filter(alerts)" in p.message


def test_syntax_errors_name_the_line() -> None:
    """A syntax error is a rejection with its line, not an exception of another kind."""
    (p,) = _problems('"""Broken."""\ndef filter(alerts):\n    return (alerts.diaSource.snr > 5\n')
    assert p.rule == "syntax" and p.line in (3, 4)


@pytest.mark.parametrize(
    "name",
    [
        '"diaObject." + b + "_psfFluxMean"',
        'f"diaObject.{b}_psfFluxMean"',
        '".".join(["diaObject", b])',
        '"diaObject.%s_psfFluxMean" % b',
    ],
)
def test_computed_column_names_are_refused_at_compile_time(name: str) -> None:
    """A filter that builds a column name at run time is refused with its line and what to do
    (it would otherwise widen the columns decoded and shared for everyone)."""
    src = f'"""Dynamic."""\ndef filter(alerts):\n    b = "g"\n    return alerts[{name}] > 1\n'
    with pytest.raises(FilterRejected) as info:
        compile_filter(src, "d.py")
    (p,) = info.value.problems
    assert (p.rule, p.line) == (
        "dynamic-column",
        4,
    ) and "write each column name out in full" in p.message


def test_f_strings_elsewhere_compile_and_read_only_named_columns() -> None:
    """An f-string that names no column (a message) is fine; the columns stay known."""
    f = compile_filter(
        '"""Msg."""\ndef filter(alerts):\n    n = len(alerts)\n    if n < 0:\n'
        '        raise ValueError(f"odd {n}")\n    return alerts.diaSource.snr > 1\n',
        "m.py",
    )
    assert f.reads({"diaSource.snr", "diaSource.ra", "diaObject.g_psfFluxMean"}) == {
        "diaSource.snr"
    }


def test_unreadable_files_are_rejected_with_advice(tmp_path) -> None:
    """Missing or non-UTF-8 files are rejections that say what to do."""
    with pytest.raises(FilterRejected, match="no such file"):
        load_filter(tmp_path / "missing.py")
    bad = tmp_path / "latin.py"
    bad.write_bytes(b'"""caf\xe9"""\n')
    with pytest.raises(FilterRejected, match="UTF-8"):
        load_filter(bad)
