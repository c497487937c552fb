"""The engine file format (``.fqe``): one NumPy ``.npz`` archive, no pickle, no code.

Layout (format ``fixedq-engine``, version 1):

- ``__header__``: a ``uint8`` array holding UTF-8 JSON ``{"format": "fixedq-engine",
  "version": 1, "name", "input_shape", "input_dtype", "target", "meta", "outputs",
  "ops": [{"name", "kind", "inputs", "attrs", "arrays": {key: {"shape", "encoding",
  "entry"}}}]}``.
- one entry per integer array (``a<N>``), stored with the narrowest encoding:
  ``int4x2`` (values in [-8, 7], two per byte, low nibble first, two's complement),
  ``int8``, ``int16``, ``int32`` or ``int64``. Loaded arrays are ``int64``.

Files are written with ``allow_pickle=False`` and read with ``allow_pickle=False``; anything
that is not a valid archive of this format raises ``ValueError``.

Example:
    >>> import numpy as np
    >>> packed = pack_int4(np.array([-8, 7, 1]))
    >>> packed.dtype.name, unpack_int4(packed, 3).tolist()
    ('uint8', [-8, 7, 1])
"""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np

from fixedq.engine.model import Model
from fixedq.engine.ops import KINDS, Op

FORMAT = "fixedq-engine"
VERSION = 1
_HEADER = "__header__"
_ENCODINGS = {"int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64}


def pack_int4(values: np.ndarray) -> np.ndarray:
    """Pack integers in [-8, 7] two per byte (low nibble = even index)."""
    v = (np.asarray(values, dtype=np.int64).ravel() & 0xF).astype(np.uint8)
    if v.size % 2:
        v = np.append(v, np.uint8(0))
    return (v[0::2] | (v[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray, size: int) -> np.ndarray:
    """Inverse of :func:`pack_int4` (``size`` values, int64)."""
    p = np.asarray(packed, dtype=np.uint8)
    v = np.empty(p.size * 2, dtype=np.int64)
    v[0::2] = p & 0xF
    v[1::2] = p >> 4
    v = v[:size]
    return np.where(v >= 8, v - 16, v)


def _encode(arr: np.ndarray) -> tuple[str, np.ndarray]:
    a = np.asarray(arr, dtype=np.int64)
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    if -8 <= lo and hi <= 7 and a.size >= 2:
        return "int4x2", pack_int4(a)
    for name, dt in _ENCODINGS.items():
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return name, a.astype(dt)
    raise ValueError("integer array out of int64 range")  # unreachable for int64 input


def save(model: Model, path: str | os.PathLike) -> None:
    """Write ``model`` to ``path`` (a single ``.npz``-format file; any extension).

    The file is written to a temporary name first and renamed, so a failure never leaves a
    half-written file.
    """
    entries: dict[str, np.ndarray] = {}
    ops = []
    for op in model.ops:
        arrays = {}
        for key, arr in op.arrays.items():
            entry = f"a{len(entries)}"
            encoding, data = _encode(arr)
            entries[entry] = data
            arrays[key] = {"shape": list(np.shape(arr)), "encoding": encoding, "entry": entry}
        ops.append({"name": op.name, "kind": op.kind, "inputs": list(op.inputs),
                    "attrs": op.attrs, "arrays": arrays})
    header = {"format": FORMAT, "version": VERSION, "name": model.name,
              "input_shape": list(model.input_shape), "input_dtype": model.input_dtype,
              "target": model.target, "meta": model.meta, "outputs": model.outputs, "ops": ops}
    text = json.dumps(header, separators=(",", ":"))
    entries[_HEADER] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, allow_pickle=False, **entries)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fail(path, why: str) -> ValueError:
    return ValueError(f"{path!s} is not a valid {FORMAT} file: {why}")


def load(path: str | os.PathLike) -> Model:
    """Read an engine file written by :func:`save` / ``Model.save``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an engine file (foreign/corrupt archive, wrong magic, unsupported
            version, inconsistent content).

    Example:
        >>> model = load("model.fqe")   # doctest: +SKIP
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"engine file {path!r} does not exist")
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        archive = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise _fail(path, f"cannot read it as an npz archive ({err})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise _fail(path, "it holds a single array, not an archive")
    with archive:
        try:
            if _HEADER not in archive.files:
                raise _fail(path, f"no {_HEADER!r} entry (foreign .npz)")
            header = json.loads(archive[_HEADER].tobytes().decode("utf-8"))
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise _fail(path, f"format is {header.get('format')!r}, expected {FORMAT!r}")
            version = header.get("version")
            if version != VERSION:
                raise _fail(path, f"version {version!r} is not supported (this fixedq reads "
                                  f"version {VERSION})")
            ops = [_read_op(archive, rec, path) for rec in header["ops"]]
            return Model(ops, header["outputs"], header["input_shape"], header["input_dtype"],
                         header["name"], header.get("target"), header.get("meta"))
        except ValueError as err:
            if str(err).startswith(f"{path!s} is not a valid"):
                raise
            raise _fail(path, str(err)) from None
        except (KeyError, TypeError, UnicodeDecodeError, zipfile.BadZipFile, OSError,
                EOFError) as err:
            raise _fail(path, f"corrupt content ({type(err).__name__}: {err})") from None


def _read_op(archive, rec: dict, path) -> Op:
    if rec["kind"] not in KINDS:
        raise _fail(path, f"unknown op kind {rec['kind']!r}")
    arrays = {}
    for key, meta in rec["arrays"].items():
        data = archive[meta["entry"]]
        shape = tuple(int(d) for d in meta["shape"])
        size = int(np.prod(shape)) if shape else 1
        if meta["encoding"] == "int4x2":
            values = unpack_int4(data, size)
        elif meta["encoding"] in _ENCODINGS:
            values = np.asarray(data).astype(np.int64)
        else:
            raise _fail(path, f"unknown array encoding {meta['encoding']!r}")
        if values.size != size:
            raise _fail(path, f"array {key!r} of op {rec['name']!r} has {values.size} values, "
                              f"expected {size}")
        arrays[key] = values.reshape(shape)
    return Op(rec["name"], rec["kind"], list(rec["inputs"]), dict(rec["attrs"]), arrays)
