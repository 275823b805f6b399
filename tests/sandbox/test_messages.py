"""Messages a filter can influence are safe to print: one line, escaped, named by owner/name,
without memory addresses; building one never ends a visit."""

from __future__ import annotations

import pyarrow as pa
import pytest

from sandbox import FilterRejected, InProcessRunner, compile_filter
from sandbox.errors import FilterFault
from sandbox.pool import WorkerPool
from sandbox.text import escape

DOC = '"""A test filter."""\n'

NASTY = DOC + (
    "def filter(alerts):\n"
    "    raise ValueError('line one\\nline two \\x1b[2J\\x1b[31mred \\u202egnp.exe \\ud800 \\r\\t')\n"
)
ADDRESSES = DOC + (
    "def g():\n"
    "    return 1\n\n"
    "def filter(alerts):\n"
    "    texts = [str(sqrt), str(g), f'{g}', f'{g!r}', f'{sqrt!s}', '%r' % g, '%s %s' % (g, sqrt),\n"
    "             str([g, sqrt]), str(reversed([1])), str((x for x in [1]))]\n"
    "    raise ValueError(' | '.join(texts))\n"
)
RAISE_FUNCTION = DOC + "def filter(alerts):\n    raise ValueError(sqrt)\n"
ADDRESS_AS_BITS = DOC + (
    "def filter(alerts):\n"
    "    return alerts.diaSource.snr.isnull() | ('0x' in str(sqrt) + f'{sqrt}' + '%s' % sqrt)\n"
)
UNPRINTABLE_MESSAGE = DOC + (
    "def filter(alerts):\n"
    "    x = []\n"
    "    for i in range(100000):\n"
    "        x = [x]\n"
    "    raise ValueError(x)\n"
)
SURROGATE = DOC + "def filter(alerts):\n    raise ValueError('\\udc80\\ud800')\n"
HONEST = DOC + "def filter(alerts):\n    return alerts.diaSource.snr > 5\n"


def _printable_line(text: str) -> bool:
    return text.isprintable() and "\n" not in text and text.encode("utf-8") is not None


def test_escape_makes_one_printable_line() -> None:
    """Newlines, escape sequences, bidi overrides and lone surrogates are written out."""
    out = escape("a\nb\x1b[31m\u202e\ud800\u2028 <function f at 0x7f3a2b>")
    assert out == "a\\nb\\x1b[31m\\u202e\\ud800\\u2028 <function f>"
    assert _printable_line(out)
    assert str(FilterFault("x\ny")) == "x\\ny"


@pytest.mark.parametrize("runner", ["inprocess", "pool"])
def test_a_fault_message_is_one_escaped_line_named_by_owner(
    runner: str, visit: pa.RecordBatch
) -> None:
    """Control characters and lone surrogates from a filter reach nobody raw, and the filter
    is named by owner/name, not by where its file lies on the server."""
    filters = [
        ("alice/nasty", compile_filter(NASTY, "/srv/minibroker/filters/alice/nasty.py")),
        ("bob/surrogate", compile_filter(SURROGATE, "/srv/minibroker/filters/bob/surrogate.py")),
    ]
    outcomes = _run(runner, filters, visit)
    for o in outcomes:
        message = str(o.fault)
        assert _printable_line(message), message
        assert "/srv/" not in message
    assert str(outcomes[0].fault).startswith(
        "alice/nasty.py:3: ValueError: line one\\nline two \\x1b[2J"
    )
    assert str(outcomes[1].fault).startswith("bob/surrogate.py:3: ValueError: \\udc80")


@pytest.mark.parametrize("runner", ["inprocess", "pool"])
def test_no_value_a_filter_can_stringify_shows_an_address(
    runner: str, visit: pa.RecordBatch
) -> None:
    """str(), f-strings (plain, !s, !r) and %-formatting of functions, iterators and
    generators give no address, neither in a message nor as bits of a mask."""
    filters = [
        ("a/texts", compile_filter(ADDRESSES, "texts.py")),
        ("a/raise", compile_filter(RAISE_FUNCTION, "raise.py")),
        ("a/bits", compile_filter(ADDRESS_AS_BITS, "bits.py")),
    ]
    texts, raised, bits = _run(runner, filters, visit)
    assert "<function sqrt>" in str(texts.fault) and "<function g>" in str(texts.fault)
    assert "0x" not in str(texts.fault) and "0x" not in str(raised.fault)
    assert bits.fault is None and bits.passed == 0


def test_in_process_evaluation_survives_any_message(visit: pa.RecordBatch) -> None:
    """A message that recurses without end while being built, or holds lone surrogates, is a
    fault for its filter only; the next filter runs."""
    filters = [
        ("a/deep", compile_filter(UNPRINTABLE_MESSAGE, "deep.py")),
        ("a/surrogate", compile_filter(SURROGATE, "surrogate.py")),
        ("b/honest", compile_filter(HONEST, "honest.py")),
    ]
    deep, surrogate, honest = InProcessRunner(filters).run(visit)
    assert deep.fault is not None and str(deep.fault).startswith("a/deep.py:")
    assert surrogate.fault is not None and _printable_line(str(surrogate.fault))
    assert honest.fault is None and honest.passed > 0


def test_a_rejected_line_is_escaped() -> None:
    """A syntax error quotes the offending line: escaped like any message."""
    with pytest.raises(FilterRejected) as info:
        compile_filter(DOC + "x = (\x1b[2J\n", "bad.py")
    for problem in info.value.problems:
        assert _printable_line(str(problem)), str(problem)


def _run(runner: str, filters: list, visit: pa.RecordBatch) -> list:
    if runner == "inprocess":
        return InProcessRunner(filters).run(visit)
    with WorkerPool(filters, budget_s=5) as pool:
        return pool.run(visit)
