"""The engine file format (``.fqe``): one NumPy ``.npz`` archive, no pickle, no code.

Layout (format ``fixedq-engine``, version 1):

- ``__header__``: a ``uint8`` array holding UTF-8 JSON ``{"format": "fixedq-engine",
  "version": 1, "name", "input_shape", "input_dtype", "target", "meta", "outputs",
  "ops": [{"name", "kind", "inputs", "attrs", "arrays": {key: {"shape", "encoding",
  "entry"}}}]}``.
- one entry per integer array (``a<N>``), stored with the narrowest encoding:
  ``int4x2`` (values in [-8, 7], two per byte, low nibble first, two's complement),
  ``int8``, ``int16``, ``int32`` or ``int64``. Loaded arrays are ``int64``.

Files are written with ``allow_pickle=False`` and read without numpy's loader: :func:`load`
checks the header against :mod:`fixedq.engine.validate` and every entry's size before it
decompresses anything (limits :data:`MAX_HEADER_BYTES`, :data:`MAX_VALUES`); anything that is
not a valid archive of this format raises ``ValueError`` naming the file and the field.

Example:
    >>> import numpy as np
    >>> packed = pack_int4(np.array([-8, 7, 1]))
    >>> packed.dtype.name, unpack_int4(packed, 3).tolist()
    ('uint8', [-8, 7, 1])
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import tokenize
import zipfile
import zlib

import numpy as np

from fixedq.engine import validate
from fixedq.engine.model import Model
from fixedq.engine.ops import Op
from fixedq.io import atomic_open

FORMAT = "fixedq-engine"
VERSION = 1
_HEADER = "__header__"
_ENCODINGS = {"int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64}
#: Default limit on the total number of integer values in a file (2^28: 2 GiB as int64).
MAX_VALUES = 2**28
#: Default limit on the size of the JSON header in bytes.
MAX_HEADER_BYTES = 64 * 2**20
#: Most archive entries a file may have (checked in the end-of-central-directory record before
#: ``zipfile`` parses the central directory); a file written by :func:`save` has one per array.
MAX_ENTRIES = 100_000
#: Memory budget of a file's metadata (the parsed zip directory plus the parsed JSON header):
#: ``max(METADATA_FREE, METADATA_PER_BYTE * file size)`` bytes, estimated before either is
#: parsed, so that a crafted file cannot make them cost more than ~2x its size beyond a fixed
#: allowance (see docs/engine.md, "File format"). The allowance is what honest deep and narrow
#: programs need: a 403-op program of 4-channel 1x1 convs at 4 bits is a 464 KB file whose
#: 300 KB of header JSON is estimated at 5.3 MB to parse (plus 1.7 MB for its 2,400 entries),
#: so a 4 MiB allowance refused it; 64 MiB admits ~4,000 such ops.
METADATA_FREE = 64 * 2**20
METADATA_PER_BYTE = 1.5
#: Estimated cost of one central-directory entry once ``zipfile`` parsed it (its ``ZipInfo``,
#: list and dict slots: 532 bytes measured with tracemalloc), plus twice its record's length.
_ENTRY_COST = 600


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

    The file is written with :func:`fixedq.io.atomic_open`: a temporary file beside ``path``,
    renamed over it at the end (removed on any error, SIGTERM or SIGINT, so a failure never
    leaves a half-written file), with the permissions a plain ``open()`` would give.
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
    with atomic_open(path, "wb") as fh:  # removed on errors, SIGTERM and SIGINT
        np.savez_compressed(fh, allow_pickle=False, **entries)


def max_values() -> int:
    """Limit on the total number of integer values of a file's arrays (``MAX_VALUES``, or the
    ``FIXEDQ_ENGINE_MAX_VALUES`` environment variable)."""
    return _env_int("FIXEDQ_ENGINE_MAX_VALUES", MAX_VALUES)


def max_header_bytes() -> int:
    """Limit on the size of the JSON header (``MAX_HEADER_BYTES``, or the
    ``FIXEDQ_ENGINE_MAX_HEADER_BYTES`` environment variable)."""
    return _env_int("FIXEDQ_ENGINE_MAX_HEADER_BYTES", MAX_HEADER_BYTES)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"environment variable {name} must be a positive integer, "
                         f"got {text!r}") from None
    if value < 1:
        raise ValueError(f"environment variable {name} must be a positive integer, got {text!r}")
    return value


def _fail(path, why: str) -> ValueError:
    return ValueError(f"{path!s} is not a valid {FORMAT} file: {why}")


#: Errors a corrupt archive can raise from zipfile, zlib, the .npy header parser or json.
_CORRUPT = (zipfile.BadZipFile, zlib.error, struct.error, EOFError, OSError, NotImplementedError,
            RecursionError, MemoryError, OverflowError, tokenize.TokenError, SyntaxError,
            io.UnsupportedOperation)


def load(path: str | os.PathLike) -> Model:
    """Read an engine file written by :func:`save` / ``Model.save``.

    Everything is validated before it is allocated (see docs/engine.md, "File format"): the
    JSON header against the schema of :mod:`fixedq.engine.validate` (at most
    :func:`max_header_bytes` bytes), the shapes op by op from ``input_shape`` (each op's
    inputs fit it; no tensor or working buffer of a sample above :func:`max_values`), the
    archive's entry count (at most :data:`MAX_ENTRIES`), each array's declared shape and
    encoding against its stored ``.npy`` header and zip entry size, the total number of values
    against :func:`max_values`; entries are then decompressed with bounded reads.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an engine file (foreign/corrupt archive, wrong magic, unsupported
            version, a header field of the wrong type or range, inconsistent or oversized
            content); the message names the file and the field.

    Example:
        >>> model = load("model.fqe")   # doctest: +SKIP
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"engine file {path!r} does not exist")
    limits = (max_header_bytes(), max_values())
    with open(path, "rb") as fh:
        try:
            return _load(fh, limits)
        except ValueError as err:
            raise _fail(path, str(err)) from None
        except _CORRUPT as err:
            raise _fail(path, f"corrupt content ({type(err).__name__}: {err})") from None


def _check_directory(fh) -> int:
    """Count the central directory's records (located by the end-of-central-directory record,
    or its zip64 twin, as ``zipfile`` locates them) before ``zipfile`` parses them into one
    ``ZipInfo`` each (~500 bytes): more than :data:`MAX_ENTRIES` is refused."""
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    tail_start = max(0, size - (22 + 0xFFFF))  # the record, then a comment of up to 64 KiB
    fh.seek(tail_start)
    tail = fh.read()
    end = tail.rfind(b"PK\x05\x06")
    if end < 0 or len(tail) - end < 22:
        return 0  # not a zip archive: zipfile says so
    where = tail_start + end
    (directory,) = struct.unpack("<L", tail[end + 12:end + 16])
    if where >= 76:
        fh.seek(where - 76)
        record = fh.read(76)
        if record[:4] == b"PK\x06\x06" and record[56:60] == b"PK\x06\x07":  # zip64
            (directory,) = struct.unpack("<Q", record[40:48])
            where -= 76
    start = where - directory
    if directory > size or start < 0:
        return 0  # zipfile reports the bad directory
    fh.seek(start)
    data = fh.read(directory)
    count = pos = 0
    while pos + 46 <= len(data) and data[pos:pos + 4] == b"PK\x01\x02":
        count += 1
        if count > MAX_ENTRIES:
            raise ValueError(f"the archive has more than {MAX_ENTRIES} entries (an engine "
                             "file has one per array)")
        n, m, k = struct.unpack_from("<3H", data, pos + 28)
        pos += 46 + n + m + k
    cost = count * _ENTRY_COST + 2 * pos
    budget = _budget(size)
    if cost > budget:
        raise ValueError(f"the archive has {count} entries in a {size}-byte file: parsing its "
                         f"directory would take ~{cost} bytes, more than the {budget} allowed "
                         f"for a file of this size (an engine file has one entry per array, "
                         f"each of >= 180 bytes)")
    fh.seek(0)
    return cost


def _budget(size: int) -> int:
    """Bytes the parsed directory and header of a ``size``-byte file may take."""
    return max(METADATA_FREE, int(METADATA_PER_BYTE * size))


def _json_cost(raw: bytes) -> int:
    """An upper bound of the memory ``json.loads`` of ``raw`` (plus its decoded text) takes,
    from counts of its structural bytes (counted inside strings too: an overestimate): per
    byte 4 (the bytes, the text and string values; 10 if it is not ASCII: the text may take 4
    bytes per character), per ``{`` 232 (a dict of up to 5 keys and its slot), per ``[`` 64,
    per ``:`` 40 (dict growth), per ``"`` 30 (a string object), per ``,`` 32 (a list slot with
    over-allocation, or a float or big int). Measured (tracemalloc, per byte of JSON, the
    estimate over the measured peak in brackets): ``[{},{},...]`` 26x (3.5), ``[{"a":0},...]``
    26x (1.9), ``[[],[],...]`` 24x (1.5), ``["ab",...]`` 14x (1.6), ``[1.5,...]`` 10x (1.2),
    ``[0,0,...]`` 6x (3.3), an honest header 7x (2.4)."""
    per_byte = 4 if raw.isascii() else 10
    return (per_byte * len(raw) + 232 * raw.count(b"{") + 64 * raw.count(b"[")
            + 40 * raw.count(b":") + 30 * raw.count(b'"') + 32 * raw.count(b","))


def _load(fh, limits: tuple[int, int]) -> Model:
    max_header, max_total = limits
    fh.seek(0, os.SEEK_END)
    budget = _budget(fh.tell())
    budget -= _check_directory(fh)
    try:
        zf = zipfile.ZipFile(fh)
    except zipfile.BadZipFile as err:
        raise ValueError(f"cannot read it as an npz archive ({err})") from None
    with zf:
        members = {info.filename: info for info in zf.infolist()}
        if f"{_HEADER}.npy" not in members:
            if members and all(not n.endswith(".npy") for n in members):
                raise ValueError("it is a zip archive, not an npz archive")
            raise ValueError(f"no {_HEADER!r} entry (foreign .npz)")
        info = members[f"{_HEADER}.npy"]
        if 4 * info.file_size > budget:  # before it is decompressed
            raise ValueError(f"{_HEADER}: {info.file_size} bytes of JSON (deflated to "
                             f"{info.compress_size}) in a file of this size is more than the "
                             f"{budget // 4} its memory budget allows")
        raw = _read_entry(zf, info, _HEADER, np.dtype(np.uint8), None, max_header).tobytes()
        cost = _json_cost(raw)
        if cost > budget:
            raise ValueError(f"{_HEADER}: parsing its {len(raw)} bytes of JSON would take "
                             f"~{cost} bytes, more than the {budget} allowed for a file of "
                             "this size")
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise ValueError(f"{_HEADER}: not UTF-8 JSON ({err})") from None
        refs = validate.check_header(header, FORMAT, VERSION)
        total = sum(r.size for r in refs)
        if total > max_total:
            big = max(refs, key=lambda r: r.size)
            raise ValueError(f"{big.field}.shape: the arrays hold {total} values in all (this "
                             f"one {list(big.shape)}), more than the limit of {max_total} (set "
                             "FIXEDQ_ENGINE_MAX_VALUES to raise it)")
        arrays = []
        for ref in refs:
            info = members.get(f"{ref.entry}.npy", members.get(ref.entry))
            if info is None:
                raise ValueError(f"{ref.field}.entry: no archive entry {ref.entry!r}")
            arrays.append(_read_array(zf, info, ref))
    validate.check_shapes(header, max_total)  # the arrays agree with their entries: now fit
    values = iter(arrays)
    ops = []
    for rec in header["ops"]:
        arrs = {key: next(values) for key in rec["arrays"]}
        ops.append(Op(rec["name"], rec["kind"], list(rec["inputs"]), dict(rec["attrs"]), arrs))
    from fixedq.engine.streaming import as_streaming  # stateful ops: a StreamingModel

    return as_streaming(Model(ops, header["outputs"], header["input_shape"],
                              header["input_dtype"], header["name"], header.get("target"),
                              header.get("meta")))


def _read_array(zf: zipfile.ZipFile, info: zipfile.ZipInfo, ref) -> np.ndarray:
    try:
        return _decode_array(zf, info, ref)
    except _CORRUPT as err:
        raise ValueError(f"{ref.field}: corrupt entry {info.filename!r} "
                         f"({type(err).__name__}: {err})") from None


def _decode_array(zf: zipfile.ZipFile, info: zipfile.ZipInfo, ref) -> np.ndarray:
    size = ref.size
    if ref.encoding == "int4x2":
        data = _read_entry(zf, info, ref.field, validate.ENCODINGS["int4x2"], (size + 1) // 2)
        values = unpack_int4(data, size)
    else:
        data = _read_entry(zf, info, ref.field, validate.ENCODINGS[ref.encoding], size)
        values = data.astype(np.int64)
    values = values.reshape(ref.shape)
    validate.check_values(ref, values)
    return values


#: Largest .npy header of an entry (numpy's own limit for untrusted files).
_NPY_HEADER_MAX = 10000
_NPY_PREFIX_MAX = 6 + 2 + 4 + _NPY_HEADER_MAX


def _read_entry(zf, info, field: str, dtype: np.dtype, count: int | None,
                max_count: int | None = None) -> np.ndarray:
    """The 1-D array of one ``.npy`` zip entry, read with bounded memory.

    ``count`` is the number of values the header declares (``None``: any up to ``max_count``).
    The zip entry's declared size and its ``.npy`` header are checked against it before any
    data is decompressed, and at most that many bytes are ever decompressed.
    """
    limit = (count if count is not None else max_count) * dtype.itemsize + _NPY_PREFIX_MAX
    if info.file_size > limit:
        raise ValueError(f"{field}: archive entry {info.filename!r} inflates to "
                         f"{info.file_size} bytes, more than the {limit} its declared "
                         "shape allows")
    if info.flag_bits & 0x1:
        raise ValueError(f"{field}: archive entry {info.filename!r} is encrypted")
    with zf.open(info) as fp:
        fmt = np.lib.format
        version = fmt.read_magic(fp)
        if version == (1, 0):
            shape, fortran, stored = fmt.read_array_header_1_0(fp, _NPY_HEADER_MAX)
        elif version == (2, 0):
            shape, fortran, stored = fmt.read_array_header_2_0(fp, _NPY_HEADER_MAX)
        else:
            raise ValueError(f"{field}: .npy format version {version} of entry "
                             f"{info.filename!r} is not supported")
        if stored.kind != dtype.kind or stored.itemsize != dtype.itemsize \
                or stored.hasobject or stored.fields is not None or stored.subdtype:
            raise ValueError(f"{field}: entry {info.filename!r} stores {stored}, "
                             f"expected {dtype}")
        n = math.prod(shape)
        if any(d < 0 for d in shape) or (count is not None and n != count) \
                or (count is None and (len(shape) != 1 or n > max_count)):
            want = f"{count} values" if count is not None else f"at most {max_count} bytes"
            raise ValueError(f"{field}: entry {info.filename!r} stores shape {shape}, "
                             f"expected {want}")
        nbytes = n * dtype.itemsize
        if info.file_size != fp.tell() + nbytes:
            raise ValueError(f"{field}: entry {info.filename!r} has {info.file_size} bytes, "
                             f"expected {fp.tell() + nbytes} for shape {shape}")
        buf = fp.read(nbytes)
        if len(buf) != nbytes or fp.read(1):  # reading to the end also checks the CRC
            raise ValueError(f"{field}: entry {info.filename!r} is truncated")
    data = np.frombuffer(buf, dtype=stored)
    if fortran and len(shape) > 1:
        data = data.reshape(shape, order="F").ravel()
    return data
