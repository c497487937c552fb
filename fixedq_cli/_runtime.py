"""TensorFlow-side helpers of the CLI: a quiet import, model loading and warning display.

Commands call :func:`import_keras` only after their cheap argument checks, so bad input fails
fast and ``fixedq --help`` never loads TensorFlow.

Example:
    >>> from fixedq_cli._runtime import format_warning
    >>> format_warning("quantize", "quantize: no calibration samples given")
    'fixedq quantize: warning: no calibration samples given'
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

from fixedq_cli._io import CLIError

_OUR_DIRS = tuple(str(Path(__file__).resolve().parent.parent / name) for name in
                  ("fixedq", "fixedq_cli"))


def import_keras(verbose: bool = False) -> None:
    """Import TensorFlow and Keras; unless ``verbose``, hide the C++ log lines of the import.

    TensorFlow's C++ runtime writes straight to file descriptor 2 (absl/CUDA notices that
    ``TF_CPP_MIN_LOG_LEVEL`` does not cover), so fd 2 points to /dev/null during the import.
    """
    if "keras" in sys.modules and "tensorflow" in sys.modules:
        return
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if verbose:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        saved = None
    try:
        if saved is not None:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        import keras  # noqa: F401
        import tensorflow as tf
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
    tf.get_logger().setLevel(logging.ERROR)
    for name in ("absl", "tensorflow", "keras"):
        logging.getLogger(name).setLevel(logging.ERROR)


def load_model(path: Path, verbose: bool = False):
    """Load a model file with :func:`fixedq.load_model`; any failure becomes a :class:`CLIError`.

    fixedq's quantized layers are imported first so that quantized models deserialize.
    """
    import_keras(verbose)
    import fixedq
    import fixedq.models.builders  # noqa: F401  (registers every quantized layer class)

    try:
        return fixedq.load_model(path)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from exc
    except Exception as exc:  # Keras raises many kinds of errors on corrupt files
        if verbose:
            raise
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise CLIError(f"cannot load model {str(path)!r}: {first.strip()[:300]}") from exc


def is_ours(filename: str) -> bool:
    """Whether a warning was issued from fixedq's own code."""
    return str(Path(filename).resolve()).startswith(_OUR_DIRS)


def format_warning(command: str, message) -> str:
    """One line: ``fixedq <command>: warning: <message>`` (a leading ``<command>:`` dropped)."""
    text = " ".join(str(message).split())
    if text.startswith(f"{command}: "):
        text = text[len(command) + 2:]
    return f"fixedq {command}: warning: {text}"


def install_warning_display(command: str, verbose: bool) -> None:
    """Show fixedq's warnings as single lines; others (TensorFlow, absl) only when verbose."""
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if is_ours(filename):
            print(format_warning(command, message), file=sys.stderr, flush=True)
        elif verbose:
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    if not verbose:
        warnings.filterwarnings("ignore", module="tensorflow")
        warnings.filterwarnings("ignore", module="keras")
        warnings.filterwarnings("ignore", module="absl")
