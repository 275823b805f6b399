"""Every filter example in the guides and the README compiles under the policy, runs on real
alerts, and finds at least one alert on the default sample night."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from sandbox import InProcessRunner, compile_filter

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _as_file(block: str) -> str:
    """A guide's code block as a filter file: whole files as they are (given a docstring if
    they lack one), fragments as the body of ``filter(alerts)``."""
    if re.search(r"^def (filter|filter_alert)\(", block, re.M):
        return block if block.lstrip().startswith('"""') else f'"""Example."""\n{block}'
    body = block if re.search(r"^return ", block, re.M) else block + "return True\n"
    return '"""Example."""\ndef filter(alerts):\n' + textwrap.indent(body, "    ")


EXAMPLES = [
    pytest.param(_as_file(block), id=f"{doc.name}#{i}")
    for doc in sorted(DOCS.glob("*.md"))
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", doc.read_text(), re.S))
]
README = DOCS.parent / "README.md"
ALL_EXAMPLES = EXAMPLES + [
    pytest.param(_as_file(block), id=f"README.md#{i}")
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", README.read_text(), re.S))
]


@pytest.fixture(scope="module")
def sample_batches(sample_night):
    """The default sample night, every visit decoded in full once for this module."""
    from engine.decode import decode_block
    from engine.sources import open_night

    night = open_night(sample_night)
    return [decode_block(b, night.schema).batch for b in night.blocks()]


def test_the_guides_have_examples() -> None:
    """The guides show code, and this test finds it."""
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize("source", EXAMPLES)
def test_example_runs(source: str, v11_packets) -> None:
    """The example passes the policy and runs without a fault over 64 real alerts."""
    from engine.decode import decode_messages

    compiled = compile_filter(source, "example.py")
    (outcome,) = InProcessRunner([("u/doc", compiled)]).run(decode_messages(v11_packets).batch)
    assert outcome.fault is None, outcome.fault


@pytest.mark.parametrize("source", ALL_EXAMPLES)
def test_example_finds_alerts_on_the_sample_night(source: str, sample_batches) -> None:
    """No example teaches a pattern that is always false: each passes at least one alert of
    the default sample night (10 visits x 1000 alerts, seed 0)."""
    runner = InProcessRunner([("u/doc", compile_filter(source, "example.py"))])
    passed = 0
    for batch in sample_batches:
        (outcome,) = runner.run(batch)
        assert outcome.fault is None, outcome.fault
        passed += outcome.passed
    assert passed >= 1


def test_every_other_code_block_is_a_tested_original() -> None:
    """In the filter guides, code that is not a filter (```py, ```sql, ```json) appears only as
    the original of a port in "Porting a filter from another broker", where
    tests/test_porting.py runs it."""
    for doc in (DOCS / "filters.md", DOCS / "filters-policy.md"):
        text = doc.read_text()
        porting = text.split("## Porting a filter from another broker", 1)
        outside = porting[0] + (
            porting[1].split("\n## ", 1)[1] if len(porting) > 1 and "\n## " in porting[1] else ""
        )
        others = [lang for lang in re.findall(r"^```(\w+)\n", outside, re.M) if lang != "python"]
        assert others == [], f"{doc.name}: untested {others} blocks outside the porting section"
