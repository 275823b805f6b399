"""Compiling a submitted filter in a throwaway process, so that not even the parser ever chokes
the engine on hostile input."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Sequence

from sandbox.compile import CompiledFilter, compile_filter
from sandbox.errors import FilterRejected, Problem
from sandbox.limits import clean_environment
from sandbox.pool.zygote import python_command

__all__ = ["safe_compile", "safe_compile_many"]


def safe_compile(
    source: str, filename: str = "<filter>", timeout_s: float = 10.0
) -> CompiledFilter:
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
    (result,) = safe_compile_many([(source, filename)], timeout_s)
    if isinstance(result, FilterRejected):
        raise result
    return result


def safe_compile_many(
    files: Sequence[tuple[str, str]],
    timeout_s: float = 10.0,
) -> list[CompiledFilter | FilterRejected]:
    """:func:`safe_compile` for many files at once: one throwaway interpreter compiles them one
    after another (starting an interpreter per file cost ~120 ms each), each file with its own
    wall-clock deadline. A file that hangs or crashes the compiler is rejected and the
    interpreter killed; the files after it go to a fresh one.

    Parameters
    ----------
    files : sequence of (source, filename)
    timeout_s : float
        Wall-clock limit per file (the first also pays for the interpreter's start).

    Returns
    -------
    list
        Per file, in order: its :class:`CompiledFilter`, or the :class:`FilterRejected` saying why.
    """
    results: list[CompiledFilter | FilterRejected | None] = [None] * len(files)
    pending = []
    for i, (source, filename) in enumerate(files):
        if not isinstance(source, str):
            results[i] = _reject(filename, "encoding", "a filter is UTF-8 text")
            continue
        try:
            source.encode("utf-8")
        except UnicodeError:
            results[i] = _reject(
                filename, "encoding", "the file is not valid UTF-8 text; save it as UTF-8"
            )
            continue
        pending.append(i)
    while pending:
        done = _compile_batch([files[i] for i in pending], timeout_s)
        for k, problems in enumerate(done):
            i = pending[k]
            source, filename = files[i]
            if problems:
                results[i] = FilterRejected(problems)
                continue
            try:
                results[i] = compile_filter(source, filename)
            except FilterRejected as exc:
                results[i] = exc
            except Exception as exc:  # the child compiled it; anything here is still a rejection
                results[i] = _reject(
                    filename, "too-complex", f"the file cannot be compiled ({type(exc).__name__})"
                )
        pending = pending[len(done) :]
    return [r for r in results if r is not None]


def _reject(filename: str, rule: str, message: str) -> FilterRejected:
    return FilterRejected([Problem(filename, None, rule, message)])


def _compile_batch(files: Sequence[tuple[str, str]], timeout_s: float) -> list[list[Problem]]:
    """Problems of each file, in order, as far as one throwaway interpreter got: the file it
    stopped on (a hang, a crash) is in the list with its rejection, the rest are not."""
    proc = subprocess.Popen(
        python_command("from sandbox.pool.compile import _compile_child; _compile_child()")
        + [str(len(files))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=clean_environment(),
        cwd="/",
    )
    assert proc.stdin is not None and proc.stdout is not None
    out: list[list[Problem]] = []
    try:
        try:
            proc.stdin.write(json.dumps([[name, src] for src, name in files]).encode())
            proc.stdin.close()
        except OSError:
            pass  # it died reading: reported below as a failure on the first file
        fd = proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout_s
        while len(out) < len(files):
            left = deadline - time.monotonic()
            ready = select.select([fd], [], [], max(0.0, left))[0] if left > 0 else []
            if not ready:
                out.append(
                    [
                        Problem(
                            files[len(out)][1],
                            None,
                            "too-complex",
                            f"compiling took longer than {timeout_s:g} s; simplify the file",
                        )
                    ]
                )
                break
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                out.append(
                    [
                        Problem(
                            files[len(out)][1],
                            None,
                            "too-complex",
                            f"the compiler failed on this file (exit status {proc.poll()}); simplify it",
                        )
                    ]
                )
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                name = files[len(out)][1]
                try:
                    report = json.loads(line)
                    out.append(
                        [
                            Problem(
                                name, p[0] if isinstance(p[0], int) else None, str(p[1]), str(p[2])
                            )
                            for p in report["problems"]
                        ]
                    )
                except (ValueError, KeyError, TypeError, IndexError):
                    out.append(
                        [
                            Problem(
                                name,
                                None,
                                "too-complex",
                                "the compiler failed on this file; simplify it",
                            )
                        ]
                    )
                deadline = time.monotonic() + timeout_s
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    return out


def _compile_child() -> None:  # pragma: no cover - runs in the throwaway interpreter
    import resource

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))
    cpu = 30 + count // 10  # the engine's per-file deadlines strike first
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    files = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    for filename, source in files:
        problems: list[list[object]] = []
        try:
            compile_filter(source, filename)
        except FilterRejected as exc:
            problems = [[p.line, p.rule, p.message] for p in exc.problems]
        except BaseException as exc:  # noqa: B036 - every failure is a rejection, reported as data
            problems = [
                [
                    None,
                    "too-complex",
                    f"the file cannot be compiled ({type(exc).__name__}); simplify it",
                ]
            ]
        sys.stdout.write(json.dumps({"problems": problems}) + "\n")
        sys.stdout.flush()
