"""The ``minibroker`` command.

Exit codes: 0 success, 1 a runtime error (printed as one line ``minibroker: <message>``;
``--debug`` shows the traceback), 2 a usage error. Warnings print as one line too
(``minibroker: warning: <message>``).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from typing import TextIO

from engine import __version__
from engine.cli import (
    admin,
    bench,
    demo,
    filters,
    produce,
    replay,
    run,
    serve,
    simulate,
    submit,
    subscribe,
    test,
    vtp,
)
from engine.config import load_config
from engine.decode import configure as configure_decoder
from engine.errors import MinibrokerError

# One module per verb, in the order `--help` lists them.
_VERBS = (
    simulate,
    test,
    run,
    serve,
    produce,
    replay,
    submit,
    filters,
    subscribe,
    vtp,
    admin,
    bench,
    demo,
)

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="minibroker",
        description="LSST Simple Filtering Service: run your Python filters over Rubin alerts.",
    )
    p.add_argument("--version", action="version", version=f"minibroker {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--config", help="TOML file with settings (see engine/config.py)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for verb in _VERBS:
        verb.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``minibroker`` console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("minibroker: error: a command is required (try --help)", file=sys.stderr)
        return 2
    with warnings.catch_warnings():
        warnings.showwarning = _one_line  # restored on leaving: main() also runs inside tests
        warnings.simplefilter("default")
        return _run(args)


def _one_line(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Print a warning as ``minibroker: warning: <message>``: no source line, no location (on a
    terminal, over a progress bar being drawn, which redraws itself below)."""
    clear = "\r\x1b[K" if sys.stderr.isatty() else ""
    print(f"{clear}minibroker: warning: {message}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    try:
        config = load_config(
            file=args.config,
            redis_url=getattr(args, "redis_url", None),
            isolation=getattr(args, "isolation", None),
            budget_s=getattr(args, "budget_s", None),
        )
        configure_decoder(config)
        return int(args.run(args, config))
    except MinibrokerError as exc:
        if args.debug:
            raise
        print(f"minibroker: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file we were pointed at cannot be read or written
        if args.debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"minibroker: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("minibroker: interrupted", file=sys.stderr)
        return 130
    finally:
        configure_decoder(None)  # main() may run again in this process (tests) with other settings


if __name__ == "__main__":
    sys.exit(main())
