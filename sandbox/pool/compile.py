"""Compiling a submitted filter in a throwaway process, so that not even the parser ever chokes
the engine on hostile input."""

from __future__ import annotations

import json
import subprocess
import sys

from sandbox.compile import CompiledFilter, compile_filter
from sandbox.errors import FilterRejected, Problem
from sandbox.limits import clean_environment
from sandbox.pool.zygote import python_command

__all__ = ["safe_compile"]


def safe_compile(source: str, filename: str = "<filter>", timeout_s: float = 10.0) -> CompiledFilter:
    """Compile a submitted filter without risking the calling process.

    The file is first compiled in a throwaway interpreter with a memory and CPU limit and a
    wall-clock deadline (``SIGKILL``); only source that compiles cleanly there is compiled
    again here for its code object. Every failure, including a crash, a hang or an exception
    other than ``SyntaxError`` inside the compiler, becomes :class:`FilterRejected`.

    Parameters
    ----------
    source : str
        The file's text.
    filename : str
        Shown in every problem.
    timeout_s : float
        Wall-clock limit of the throwaway compile, including interpreter start (~0.3 s).
    """

    def reject(rule: str, message: str) -> FilterRejected:
        return FilterRejected([Problem(filename, None, rule, message)])

    if not isinstance(source, str):
        raise reject("encoding", "a filter is UTF-8 text")
    try:
        data = source.encode("utf-8")
    except UnicodeError:
        raise reject("encoding", "the file is not valid UTF-8 text; save it as UTF-8") from None
    try:
        proc = subprocess.run(
            python_command("from sandbox.pool.compile import _compile_child; _compile_child()") + [filename],
            input=data, capture_output=True, timeout=timeout_s, env=clean_environment(), cwd="/",
        )
    except subprocess.TimeoutExpired:
        raise reject("too-complex", f"compiling took longer than {timeout_s:g} s; simplify the file") from None
    try:
        report = json.loads(proc.stdout)
        problems = [Problem(filename, p[0] if isinstance(p[0], int) else None, str(p[1]), str(p[2]))
                    for p in report["problems"]]
    except (ValueError, KeyError, TypeError, IndexError):
        raise reject("too-complex", f"the compiler failed on this file (exit status {proc.returncode}); "
                     "simplify it") from None
    if problems:
        raise FilterRejected(problems)
    try:
        return compile_filter(source, filename)
    except FilterRejected:
        raise
    except Exception as exc:  # the child compiled it; anything here is still a rejection
        raise reject("too-complex", f"the file cannot be compiled ({type(exc).__name__})") from None


def _compile_child() -> None:  # pragma: no cover - runs in the throwaway interpreter
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))
    resource.setrlimit(resource.RLIMIT_CPU, (30, 31))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    filename = sys.argv[1] if len(sys.argv) > 1 else "<filter>"
    problems: list[list[object]] = []
    try:
        source = sys.stdin.buffer.read().decode("utf-8")
        compile_filter(source, filename)
    except FilterRejected as exc:
        problems = [[p.line, p.rule, p.message] for p in exc.problems]
    except BaseException as exc:  # noqa: B036 - every failure is a rejection, reported as data
        problems = [[None, "too-complex", f"the file cannot be compiled ({type(exc).__name__}); simplify it"]]
    sys.stdout.write(json.dumps({"problems": problems}))
    sys.stdout.flush()
