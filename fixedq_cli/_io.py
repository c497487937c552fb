"""Cheap checks of the command line's files, done before TensorFlow is imported.

Everything here uses only the standard library, NumPy and h5py, so a bad path, a non-model
file, a malformed ``.npz`` or an invalid JSON config fails in a fraction of a second. The
public API checks the same things again (and more) once the model is loaded. Samples and labels
are read by :mod:`fixedq.io.arrays` and outputs written by :mod:`fixedq.io.atomic`, shared with
the API.

Example:
    >>> from fixedq_cli._io import derived_path
    >>> str(derived_path("models/net.keras", "_i8_w8_a8"))
    'models/net_i8_w8_a8.keras'
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np

from fixedq.io import check_input_shape, read_samples, write_atomic
from fixedq.models.qconfig_schema import QConfigError, validate_qconfig

MODEL_EXTENSIONS = (".keras", ".h5")
QCONFIG_FORMAT = "fixedq-qconfig"  # the value fixedq.dump_config writes in "format"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class CLIError(Exception):
    """A user error: printed as one line on stderr, exit code 2."""


def model_file(path: str) -> Path:
    """``path`` if it is a readable ``.keras`` archive or HDF5 file, else :class:`CLIError`."""
    p = Path(path)
    if not p.exists():
        raise CLIError(f"model file not found: {path!r}")
    if not p.is_file():
        raise CLIError(f"{path!r} is not a file (a .keras or .h5 model file is expected)")
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise CLIError(f"cannot read model file {path!r}: {exc.strerror or exc}") from exc
    if head.startswith(b"PK"):
        if not zipfile.is_zipfile(p):
            raise CLIError(f"{path!r} is a corrupt zip archive, not a readable .keras model")
        return p
    if head == _HDF5_SIGNATURE:
        return p
    raise CLIError(f"{path!r} is not a Keras model file (neither a .keras zip archive nor an "
                   "HDF5 .h5 file)")


def derived_path(model: str | Path, suffix: str) -> Path:
    """``<dir>/<stem><suffix><ext>``: the default output name next to the input model."""
    p = Path(model)
    ext = p.suffix if p.suffix in MODEL_EXTENSIONS else ".keras"
    return p.with_name(f"{p.stem}{suffix}{ext}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def output_file(path: str | Path, inputs: list[Path], extensions=MODEL_EXTENSIONS,
                what: str = "output") -> Path:
    """Check an output path: allowed extension, existing directory, not one of ``inputs``."""
    p = Path(path)
    if extensions and p.suffix.lower() not in extensions:
        raise CLIError(f"{what} {str(p)!r} must end with one of {', '.join(extensions)}")
    parent = p.parent
    if not parent.is_dir():
        raise CLIError(f"cannot write {what} {str(p)!r}: directory {str(parent)!r} does not "
                       "exist")
    if p.is_dir():
        raise CLIError(f"cannot write {what} {str(p)!r}: it is a directory")
    for src in inputs:
        if _same_file(p, src) or p.resolve() == src.resolve():
            raise CLIError(f"{what} {str(p)!r} is the input file {str(src)!r}; refusing to "
                           "overwrite the input: choose another name")
    return p


def load_samples(path: str) -> np.ndarray:
    """Samples of a ``.npz``/``.npy`` file: :func:`fixedq.io.read_samples` (errors are
    ``ValueError``: one line, exit code 2)."""
    return read_samples(path)


def check_samples_shape(samples: np.ndarray, input_shape, path: str) -> None:
    """Samples ``(N, ...)`` must match the model's input shape ``(None, ...)``."""
    check_input_shape(samples, input_shape, f"samples {path!r}")


def _check_calibration(path: str, name: str, entry) -> None:
    """A q-config ``"calibration"`` entry: ``{"min": [...], "max": [...]}``, finite, same length."""
    ok = isinstance(entry, dict) and all(
        isinstance(entry.get(k), list) and entry[k]
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in entry[k]) for k in ("min", "max")) \
        and len(entry["min"]) == len(entry["max"])
    if not ok:
        raise CLIError(f"config {path!r}: layer {name!r}: \"calibration\" must be an object "
                       "{\"min\": [...], \"max\": [...]} of two equal-length lists of finite "
                       f"numbers (as written by 'fixedq config'), got {json.dumps(entry):.60}")


def read_qconfig(path: str) -> dict:
    """Read a q-config JSON file written by ``fixedq config``."""
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"config file not found: {path!r}")
    try:
        text = p.read_text(encoding="utf-8")
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CLIError(f"config {path!r} is not valid JSON: {exc.msg} at line {exc.lineno} "
                       f"column {exc.colno}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"cannot read config {path!r}: {exc}") from exc
    if not isinstance(config, dict) or config.get("format") != QCONFIG_FORMAT:
        raise CLIError(f"config {path!r} is not a fixedq q-config (expected a JSON object with "
                       f"\"format\": \"{QCONFIG_FORMAT}\", as written by 'fixedq config')")
    if not isinstance(config.get("layers", {}), dict):
        raise CLIError(f"config {path!r}: \"layers\" must be an object mapping layer names to "
                       "settings")
    for name, entry in config.get("layers", {}).items():
        if not isinstance(entry, dict):
            raise CLIError(f"config {path!r}: layer {name!r}: its settings must be an object, "
                           f"got {json.dumps(entry):.60}")
        if "calibration" in entry:
            _check_calibration(path, name, entry["calibration"])
    try:  # every key, type and range of the schema (fixedq/models/qconfig_schema.py)
        validate_qconfig(config)
    except QConfigError as exc:
        raise CLIError(f"config {path!r}: {exc}") from None
    return config


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` with :func:`fixedq.io.write_atomic`."""
    write_atomic(path, text)
