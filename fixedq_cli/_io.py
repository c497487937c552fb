"""Cheap checks of the command line's files, done before TensorFlow is imported.

Everything here uses only the standard library, NumPy and h5py, so a bad path, a non-model
file, a malformed ``.npz`` or an invalid JSON config fails in a fraction of a second. The
public API checks the same things again (and more) once the model is loaded.

Example:
    >>> from fixedq_cli._io import derived_path
    >>> str(derived_path("models/net.keras", "_i8_w8_a8"))
    'models/net_i8_w8_a8.keras'
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

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
    """Read calibration samples: the arrays of a ``.npz`` (concatenated) or one ``.npy``."""
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"samples file not found: {path!r}")
    try:
        loaded = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise CLIError(f"cannot read samples {path!r} as a NumPy .npz/.npy file: "
                       f"{' '.join(str(exc).split())}") from exc
    try:
        if isinstance(loaded, np.lib.npyio.NpzFile):
            names = list(loaded.files)
            arrays = [(name, loaded[name]) for name in names]
        else:
            arrays = [("array", loaded)]
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise CLIError(f"cannot read samples {path!r}: {' '.join(str(exc).split())}") from exc
    if not arrays:
        raise CLIError(f"samples file {path!r} contains no arrays")
    first_name, first = arrays[0]
    for name, arr in arrays:
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) \
                or np.issubdtype(arr.dtype, np.complexfloating):
            raise CLIError(f"samples {path!r}: array {name!r} has dtype {arr.dtype}; real "
                           "numbers (float or int) are expected")
        if arr.ndim < 2 or arr.shape[0] == 0:
            raise CLIError(f"samples {path!r}: array {name!r} has shape {arr.shape}; expected "
                           "(N, *input_shape) with N >= 1")
        if arr.shape[1:] != first.shape[1:]:
            raise CLIError(f"samples {path!r}: array {name!r} has shape {arr.shape} but "
                           f"{first_name!r} has {first.shape}; all arrays must share the "
                           "sample shape to be concatenated")
    if len(arrays) == 1:
        return first
    return np.concatenate([arr.astype(np.float32, copy=False) for _, arr in arrays])


def check_samples_shape(samples: np.ndarray, input_shape, path: str) -> None:
    """Samples ``(N, ...)`` must match the model's input shape ``(None, ...)``."""
    expected = tuple(input_shape[1:])
    got = tuple(samples.shape[1:])
    if len(got) != len(expected) or any(e is not None and e != g
                                        for e, g in zip(expected, got, strict=True)):
        want = ", ".join("?" if e is None else str(e) for e in expected)
        raise CLIError(f"samples {path!r} have shape {samples.shape}; the model expects "
                       f"(N, {want})")


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
    return config


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
