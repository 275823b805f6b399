"""The suite keeps its temporary files where it removes them (see ``conftest.py``)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path


def test_tmp_paths_and_child_processes_write_in_the_session_directory(
    tmp_path: Path, session_tmp: Path
) -> None:
    """tmp_path, tempfile and the temp dir of a child process all lie in the session's own
    directory, which the session removes at its end."""
    child = subprocess.run(
        [sys.executable, "-c", "import tempfile; print(tempfile.gettempdir())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    for path in (tmp_path, Path(tempfile.gettempdir()), Path(child)):
        assert path.resolve().is_relative_to(session_tmp.resolve()), path
