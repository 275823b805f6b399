"""The ``minibroker`` command.

Exit codes: 0 success, 1 a runtime error (printed as one line ``minibroker: <message>``;
``--debug`` shows the traceback), 2 a usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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
_VERBS = (simulate, test, run, serve, produce, replay, submit, filters, subscribe, vtp, admin, bench, demo)

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
    except KeyboardInterrupt:
        print("minibroker: interrupted", file=sys.stderr)
        return 130
    finally:
        configure_decoder(None)  # main() may run again in this process (tests) with other settings


if __name__ == "__main__":
    sys.exit(main())
