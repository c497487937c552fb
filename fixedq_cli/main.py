"""Entry point of the ``fixedq`` command: ``fixedq <command> [options]``.

Each command module in :mod:`fixedq_cli.commands` parses its options, checks its files cheaply,
imports TensorFlow only then, calls the public API and prints. User errors are one line on
stderr and exit code 2 (``-v`` shows the traceback and TensorFlow's logs instead). Ctrl-C
(SIGINT) ends a command with ``fixedq COMMAND: interrupted`` and exit code 130, SIGTERM with
``fixedq COMMAND: terminated`` and 143; both are exceptions, so partly written outputs are
removed (:mod:`fixedq.io.atomic`).

Example:
    $ fixedq --version
    fixedq 0.1.0
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
import warnings

from fixedq import __version__
from fixedq.io import Terminated
from fixedq_cli._io import CLIError
from fixedq_cli.commands import COMMANDS

__all__ = ["CLIError", "build_parser", "main"]

_VERBOSE_HELP = "show TensorFlow logs, all warnings and full tracebacks"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``fixedq quantize: error: ...`` and exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``fixedq`` parser with one subparser per module listed in ``COMMANDS``."""
    parser = _Parser(
        prog="fixedq",
        description="Quantize Keras models to FixedPoint and run them on an integer engine.",
        epilog="Run 'fixedq COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"fixedq {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help=_VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"fixedq_cli.commands.{name}")
        p = sub.add_parser(name, help=module.HELP,
                           description=getattr(module, "DESCRIPTION", module.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help=_VERBOSE_HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _raise_terminated(signum, frame):
    raise Terminated(signum)


@contextlib.contextmanager
def _sigterm_raises():
    """While a command runs (main thread only), SIGTERM raises :class:`Terminated`; an ignored
    SIGTERM (``SIG_IGN`` inherited from the parent, e.g. ``nohup``) stays ignored."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Run ``fixedq`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if not args.verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from fixedq_cli._runtime import install_warning_display

    try:
        with _sigterm_raises(), warnings.catch_warnings():
            install_warning_display(args.command, args.verbose)
            return int(args._run(args) or 0)
    except Terminated:
        print(f"fixedq {args.command}: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"fixedq {args.command}: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, TypeError, OSError) as exc:
        if args.verbose:
            raise
        print(f"fixedq {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
