"""The README's examples work as written."""

from __future__ import annotations

import re
from pathlib import Path

from sandbox import InProcessRunner, compile_filter

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_filter_compiles_and_runs(v11_packets) -> None:
    """The tour's filter passes the policy and finds something in the real LSSTCam alerts (the
    sample night is checked in test_docs)."""
    from engine.decode import decode_messages

    (source,) = re.findall(r"```python\n(.*?)```", README, re.S)
    compiled = compile_filter(source, "readme.py")
    (outcome,) = InProcessRunner([("u/readme", compiled)]).run(decode_messages(v11_packets).batch)
    assert outcome.fault is None and outcome.mask is not None
    assert 1 <= int(outcome.mask.sum()) < len(v11_packets) // 4


def test_readme_commands_exist() -> None:
    """Every `minibroker VERB` the README shows is a real command."""
    from engine.cli import _VERBS

    verbs = set(re.findall(r"^minibroker (\w+)", README, re.M)) | set(
        re.findall(r"&& minibroker (\w+)", README)
    )
    assert verbs and verbs <= {m.__name__.rpartition(".")[2] for m in _VERBS}
