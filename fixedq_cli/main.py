"""Entry point of the ``fixedq`` command: ``fixedq <command> [options]``.

Example:
    $ fixedq --version
    fixedq 0.1.0
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from fixedq import __version__
from fixedq_cli.commands import COMMANDS


class CLIError(Exception):
    """A user error: printed as one line on stderr, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fixedq",
        description="Quantize Keras models to FixedPoint and run them on an integer engine.",
    )
    parser.add_argument("--version", action="version", version=f"fixedq {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show TensorFlow logs and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"fixedq_cli.commands.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="show TensorFlow logs and full tracebacks")
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if not args.verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("fixedq: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, TypeError, FileNotFoundError, OSError) as exc:
        if args.verbose:
            raise
        print(f"fixedq {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
