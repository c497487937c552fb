"""Read samples and labels from NumPy ``.npy``/``.npz`` files, checking what they hold.

The one reader of array files used by every ``fixedq`` command and offered to API users:

- :func:`read_arrays`: every array of a ``.npz`` (or the one array of a ``.npy``), each with a
  real numeric dtype (float, int or bool; never object, complex or strings) and read with
  ``allow_pickle=False``;
- :func:`read_samples` / :func:`read_labelled_samples`: samples ``(N, *input_shape)`` with
  ``N >= 1`` and finite values, from a ``.npy`` or a ``.npz`` (its array ``x`` if present, else
  all its arrays except ``y``, concatenated); ``y`` holds the labels;
- :func:`read_labels` / :func:`class_ids`: integer class ids ``(N,)`` or one-hot rows ``(N, C)``,
  ``C >= 1``, as ``int64`` class ids, ``N`` matching the samples;
- :func:`check_samples` / :func:`check_input_shape`: the same checks on arrays in memory.

Every problem is an :class:`ArrayFileError` (a ``ValueError``) naming the file, the array and
what was expected. Directories, devices and other special files are reported as such, a file
that is not a ``.npy``/``.npz`` is described plainly, and nothing is ever unpickled.

Example:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from fixedq.io import read_labelled_samples
    >>> path = os.path.join(tempfile.mkdtemp(), "calib.npz")
    >>> np.savez(path, x=np.zeros((4, 8, 8, 1), "float32"), y=np.array([0, 1, 2, 1]))
    >>> x, y = read_labelled_samples(path)
    >>> x.shape, y.tolist()
    ((4, 8, 8, 1), [0, 1, 2, 1])
"""

from __future__ import annotations

import os
import stat
import zipfile
import zlib
from pathlib import Path

import numpy as np

__all__ = ["ArrayFileError", "check_dtype", "check_input_shape", "check_samples", "class_ids",
           "read_arrays", "read_labelled_samples", "read_labels", "read_samples"]

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_REAL_KINDS = "biuf"  # bool, signed, unsigned, float
_READ_ERRORS = (ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile, MemoryError)


class ArrayFileError(ValueError):
    """A ``.npy``/``.npz`` file or array that cannot be used; the message names the file, the
    array and what was expected.

    Example:
        >>> issubclass(ArrayFileError, ValueError)
        True
    """


def _where(what: str, path, name: str | None = None) -> str:
    """``samples 'a.npz', array 'x'`` (the array only for ``.npz`` members)."""
    text = f"{what} {str(path)!r}" if path is not None else what
    return f"{text}, array {name!r}" if name is not None else text


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _kind_of(mode: int) -> str | None:
    """A phrase for a special file (``None`` for a regular file)."""
    for test, kind in ((stat.S_ISREG, None), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "a special file"


def _regular_file(path, what: str) -> Path:
    """``path`` if it is an existing regular file, else :class:`ArrayFileError`."""
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise ArrayFileError(f"{what} file not found: {str(path)!r}") from None
    except OSError as exc:
        raise ArrayFileError(f"cannot read {what} {str(path)!r}: "
                             f"{exc.strerror or _one_line(exc)}") from None
    kind = _kind_of(mode)
    if kind is not None:
        raise ArrayFileError(f"{what} {str(path)!r} is {kind}, not a NumPy .npy/.npz file")
    return p


def check_dtype(dtype, name: str = "samples") -> None:
    """Accept real numbers (float, int or bool); reject objects, complex, strings, records.

    Args:
        dtype: a NumPy dtype (or anything ``np.dtype`` accepts).
        name: how messages name the array.

    Raises:
        ArrayFileError: another dtype.

    Example:
        >>> check_dtype("float16")
        >>> check_dtype(object, "x")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        fixedq.io.arrays.ArrayFileError: x: dtype object (Python objects such as None, not ...
    """
    dtype = np.dtype(dtype)
    where = name
    if dtype.kind in _REAL_KINDS and dtype.names is None and dtype.subdtype is None:
        return
    kind = {"O": "Python objects such as None, not numeric",
            "c": "complex numbers", "U": "strings, not numeric", "S": "bytes, not numeric",
            "V": "records or raw bytes, not numeric", "M": "dates, not numeric",
            "m": "time deltas, not numeric"}.get(dtype.kind, "not numeric")
    raise ArrayFileError(f"{where}: dtype {dtype} ({kind}); real numbers (float or int) "
                         "are expected")


def _npy_header(fp, where: str) -> np.dtype:
    """Read the ``.npy`` header of ``fp`` and return the array's dtype."""
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        _shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    else:
        _shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    return dtype


def _read_npy_stream(opener, where: str) -> np.ndarray:
    """Check the dtype from the header first (nothing is unpickled), then read the array."""
    try:
        with opener() as fp:
            dtype = _npy_header(fp, where)
    except _READ_ERRORS as exc:
        raise ArrayFileError(f"{where} has a corrupt .npy header ({_one_line(exc)})") from None
    check_dtype(dtype, where)
    try:
        with opener() as fp:
            return np.lib.format.read_array(fp, allow_pickle=False)
    except _READ_ERRORS as exc:
        raise ArrayFileError(f"{where} is truncated or corrupt ({_one_line(exc)})") from None


def _read_npz(p: Path, what: str) -> dict[str, np.ndarray]:
    where = _where(what, p)
    try:
        with zipfile.ZipFile(p) as archive:
            infos = [i for i in archive.infolist() if not i.is_dir()]
            if not infos:
                raise ArrayFileError(f"{where} is an empty .npz archive: it contains no arrays")
            names = [i.filename for i in infos]
            for info in infos:
                try:
                    with archive.open(info) as fp:
                        head = fp.read(len(_NPY_MAGIC))
                except _READ_ERRORS as exc:
                    raise ArrayFileError(f"{_where(what, p, info.filename[:-4])} is truncated or "
                                         f"corrupt ({_one_line(exc)})") from None
                if not info.filename.endswith(".npy") or head != _NPY_MAGIC:
                    hint = " (a Keras .keras model?)" if "config.json" in names else ""
                    raise ArrayFileError(f"{where} is a zip archive but not a NumPy .npz file: "
                                         f"its member {info.filename!r} is not a .npy "
                                         f"array{hint}")
            arrays = {}
            for info in infos:
                name = info.filename[:-len(".npy")]
                arrays[name] = _read_npy_stream(lambda info=info: archive.open(info),
                                                _where(what, p, name))
            return arrays
    except ArrayFileError:
        raise
    except _READ_ERRORS as exc:
        raise ArrayFileError(f"{where} is a corrupt .npz archive ({_one_line(exc)})") from None


def _read(path, what: str) -> tuple[dict[str, np.ndarray], bool]:
    """The arrays of ``path`` and whether it is a ``.npz``."""
    p = _regular_file(path, what)
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise ArrayFileError(f"cannot read {what} {str(path)!r}: "
                             f"{exc.strerror or _one_line(exc)}") from None
    if head.startswith(_NPY_MAGIC):
        return {"array": _read_npy_stream(lambda: open(p, "rb"), _where(what, path))}, False
    if head.startswith(_ZIP_MAGICS):
        return _read_npz(p, what), True
    if not head:
        reason = "it is empty (0 bytes)"
    elif head == _HDF5_MAGIC:
        reason = "it is an HDF5 file (a Keras .h5 model?)"
    else:
        reason = "it starts with neither the .npy magic string nor a zip signature"
    raise ArrayFileError(f"cannot read {what} {str(path)!r}: not a NumPy .npy/.npz file "
                         f"({reason})")


def read_arrays(path: str | os.PathLike, what: str = "samples") -> dict[str, np.ndarray]:
    """All arrays of a ``.npz`` by name (``{"array": a}`` for a ``.npy``), dtypes checked.

    Args:
        path: a ``.npy`` or ``.npz`` file (the content decides, not the extension).
        what: what the file holds, for messages (``"samples"``, ``"labels"``, ...).

    Raises:
        ArrayFileError: no such file, a directory or special file, not a NumPy file, a corrupt
            or truncated file, an array whose dtype is not real numbers (object, complex,
            strings; nothing is ever unpickled), no arrays.

    Example:
        >>> import os, tempfile
        >>> import numpy as np
        >>> path = os.path.join(tempfile.mkdtemp(), "a.npz")
        >>> np.savez(path, a=np.zeros(2), b=np.ones((1, 3), "int8"))
        >>> {k: v.shape for k, v in read_arrays(path).items()}
        {'a': (2,), 'b': (1, 3)}
    """
    return _read(path, what)[0]


def check_samples(samples: np.ndarray, name: str = "samples") -> np.ndarray:
    """Check an array of samples ``(N, *input_shape)``: real dtype, ``N >= 1``, finite values.

    Args:
        samples: the array.
        name: how messages name it (e.g. ``"samples 'calib.npz', array 'x'"``).

    Returns:
        ``samples``, unchanged.

    Raises:
        ArrayFileError: another dtype, rank below 2, no samples, NaN or infinite values (the
            message counts them).

    Example:
        >>> import numpy as np
        >>> check_samples(np.array([[1.0, np.nan]]), "x")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        fixedq.io.arrays.ArrayFileError: x: 1 NaN and 0 infinite values (of 2); finite values ...
    """
    samples = np.asarray(samples)
    check_dtype(samples.dtype, name)
    if samples.ndim < 2 or samples.shape[0] == 0:
        raise ArrayFileError(f"{name}: shape {samples.shape}; expected (N, *input_shape) "
                             "with N >= 1")
    if samples.dtype.kind == "f":
        finite = np.isfinite(samples)
        if not finite.all():
            nan = int(np.count_nonzero(np.isnan(samples)))
            inf = samples.size - int(np.count_nonzero(finite)) - nan
            raise ArrayFileError(f"{name}: {nan} NaN and {inf} infinite values (of "
                                 f"{samples.size}); finite values are expected")
    return samples


def check_input_shape(samples: np.ndarray, input_shape, name: str = "samples") -> None:
    """Samples ``(N, ...)`` must match a model input shape ``(None, ...)`` (``None``: any).

    Example:
        >>> import numpy as np
        >>> check_input_shape(np.zeros((64, 28, 28)), (None, 28, 28, 1))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        fixedq.io.arrays.ArrayFileError: samples have shape (64, 28, 28); ... (N, 28, 28, 1)
    """
    expected = tuple(input_shape[1:])
    got = tuple(np.shape(samples)[1:])
    if len(got) != len(expected) or any(e is not None and e != g
                                        for e, g in zip(expected, got, strict=True)):
        want = ", ".join("?" if e is None else str(e) for e in expected)
        raise ArrayFileError(f"{name} have shape {tuple(np.shape(samples))}; the model "
                             f"expects (N, {want})")


def _split_npz(arrays: dict[str, np.ndarray]) -> tuple[list[str], str | None]:
    """Names of the sample arrays and of the labels (``x``/``y`` convention)."""
    if "x" in arrays:
        return ["x"], "y" if "y" in arrays else None
    if "y" in arrays:
        return [k for k in arrays if k != "y"], "y"
    return list(arrays), None


def read_labelled_samples(path: str | os.PathLike,
                          what: str = "samples") -> tuple[np.ndarray, np.ndarray | None]:
    """Samples and the labels stored with them, from a ``.npy`` or ``.npz`` file.

    A ``.npz`` gives its array ``x`` if present, else all its arrays except ``y`` concatenated
    (they must share the sample shape); ``y``, if present, holds the labels, returned as int64
    class ids (see :func:`class_ids`). A ``.npy`` holds samples only.

    Raises:
        ArrayFileError: see :func:`read_arrays`, :func:`check_samples` and :func:`class_ids`;
            also arrays of different sample shapes, or only labels.

    Example:
        >>> import os, tempfile
        >>> import numpy as np
        >>> path = os.path.join(tempfile.mkdtemp(), "parts.npz")
        >>> np.savez(path, a=np.zeros((2, 3)), b=np.ones((5, 3)))
        >>> x, y = read_labelled_samples(path)
        >>> x.shape, y
        ((7, 3), None)
    """
    x, labels, where = _samples_and_labels(path, what)
    return x, None if labels is None else class_ids(labels, len(x), where)


def _samples_and_labels(path, what: str) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Checked samples, the raw labels array (or ``None``) and how to name it."""
    arrays, is_npz = _read(path, what)
    if not is_npz:
        return check_samples(arrays["array"], _where(what, path)), None, ""
    names, label_name = _split_npz(arrays)
    if not names:
        raise ArrayFileError(f"{_where(what, path)} holds only labels 'y', no sample arrays "
                             "(store the samples as 'x')")
    first = names[0]
    for name in names:
        arr = check_samples(arrays[name], _where(what, path, name))
        if arr.shape[1:] != arrays[first].shape[1:]:
            raise ArrayFileError(f"{_where(what, path, name)} has shape {arr.shape} but "
                                 f"{first!r} has {arrays[first].shape}; all arrays must share "
                                 "the sample shape to be concatenated")
    x = arrays[first] if len(names) == 1 else np.concatenate(
        [arrays[n].astype(np.float32, copy=False) for n in names])
    if label_name is None:
        return x, None, ""
    return x, arrays[label_name], _where(what, path, label_name)


def read_samples(path: str | os.PathLike, what: str = "samples") -> np.ndarray:
    """Samples ``(N, *input_shape)`` from a ``.npy`` or ``.npz`` (labels ``y`` ignored).

    Raises:
        ArrayFileError: see :func:`read_labelled_samples`.

    Example:
        >>> import os, tempfile
        >>> import numpy as np
        >>> path = os.path.join(tempfile.mkdtemp(), "x.npy")
        >>> np.save(path, np.zeros((3, 4), "float32"))
        >>> read_samples(path).shape
        (3, 4)
    """
    return _samples_and_labels(path, what)[0]


def class_ids(labels: np.ndarray, num_samples: int | None = None,
              name: str = "labels") -> np.ndarray:
    """int64 class ids from integer ids ``(N,)``/``(N, 1)`` or one-hot rows ``(N, C)``.

    Float labels must hold whole numbers; one-hot (or score) rows give their argmax.

    Raises:
        ArrayFileError: another dtype or rank, zero columns, no labels, NaN, fractional or
            negative ids, or ``N != num_samples``.

    Example:
        >>> import numpy as np
        >>> class_ids(np.eye(3)[[2, 0]], 2).tolist()
        [2, 0]
    """
    labels = np.asarray(labels)
    check_dtype(labels.dtype, name)
    count = f"{num_samples} " if num_samples is not None else ""
    expect = (f"expected {count}integer class ids (N,) or {count}one-hot rows (N, C) with "
              "C >= 1" + (f" for the {num_samples} samples" if num_samples is not None else ""))
    if labels.ndim not in (1, 2) or labels.shape[0] == 0:
        raise ArrayFileError(f"{name} have shape {labels.shape}; {expect}")
    if labels.ndim == 2 and labels.shape[1] == 0:
        raise ArrayFileError(f"{name} have shape {labels.shape}: zero columns; {expect}")
    if num_samples is not None and labels.shape[0] != num_samples:
        raise ArrayFileError(f"{name} have {labels.shape[0]} rows for {num_samples} samples; "
                             f"{expect}")
    if labels.dtype.kind == "f" and not np.all(np.isfinite(labels)):
        raise ArrayFileError(f"{name} contain NaN or infinite values; {expect}")
    if labels.ndim == 2:
        labels = labels.argmax(axis=1) if labels.shape[1] > 1 else labels[:, 0]
    ids = labels.astype(np.int64)
    if labels.dtype.kind == "f" and not np.array_equal(ids, labels):
        raise ArrayFileError(f"{name} are not whole numbers; {expect}")
    if ids.min() < 0:
        raise ArrayFileError(f"{name} contain negative class ids ({int(ids.min())}); {expect}")
    return ids


def read_labels(path: str | os.PathLike, num_samples: int | None = None,
                what: str = "labels") -> np.ndarray:
    """int64 class ids from a ``.npy`` (or a ``.npz``: its array ``y``, or its only array).

    Raises:
        ArrayFileError: see :func:`read_arrays` and :func:`class_ids`.

    Example:
        >>> import os, tempfile
        >>> import numpy as np
        >>> path = os.path.join(tempfile.mkdtemp(), "y.npy")
        >>> np.save(path, np.array([[0, 1], [1, 0]], "float32"))
        >>> read_labels(path, 2).tolist()
        [1, 0]
    """
    arrays, is_npz = _read(path, what)
    if "y" in arrays:
        name = "y"
    elif len(arrays) == 1:
        name = next(iter(arrays))
    else:
        raise ArrayFileError(f"{_where(what, path)} holds arrays {sorted(arrays)}; store the "
                             "labels as 'y' or in a .npy file")
    where = _where(what, path, name if is_npz else None)
    return class_ids(arrays[name], num_samples, where)
