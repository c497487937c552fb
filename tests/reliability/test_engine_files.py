"""Hostile ``.fqe`` files: ``fixedq.engine.load`` returns a Model or raises ValueError naming the
file and the field, never anything else, and never allocates more than the file honestly needs.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import shutil
import struct
import tempfile
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fixedq
import fixedq.engine as fe
from fixedq.engine.ops import Op

L = keras.layers
X = np.random.default_rng(1).uniform(0, 1, size=(2, 6, 6, 1)).astype("float32")


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    """A tiny real program (conv + ReLU + max-pool + flatten + dense), saved."""
    x = keras.Input((6, 6, 1), name="img")
    y = L.Conv2D(4, 3, padding="same", name="conv1")(x)
    y = L.ReLU()(y)
    y = L.MaxPooling2D()(y)
    y = L.Flatten()(y)
    fmodel = keras.Model(x, L.Dense(3, name="fc")(y), name="tiny")
    data = np.random.default_rng(0).uniform(0, 1, size=(16, 6, 6, 1)).astype("float32")
    engine = fe.convert(fixedq.quantize(fmodel, samples=data, verbose=False))
    path = tmp_path_factory.mktemp("fqe") / "tiny.fqe"
    engine.save(path)
    return path, engine


def _parts(path) -> tuple[dict, dict[str, bytes]]:
    """The header (decoded) and the raw ``.npy`` bytes of every other entry."""
    with zipfile.ZipFile(path) as zf:
        raw = {i.filename: zf.read(i) for i in zf.infolist()}
    text = np.load(io.BytesIO(raw.pop("__header__.npy"))).tobytes()
    return json.loads(text), raw


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
    return buf.getvalue()


def _write(path, header, raw: dict[str, bytes]) -> None:
    """An archive like ``save`` writes (entries stored, not compressed: faster to build)."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in raw.items():
            zf.writestr(name, data)
        zf.writestr("__header__.npy", _npy(np.frombuffer(text, dtype=np.uint8)))


def _load_or_value_error(path):
    try:
        return fe.load(path)
    except ValueError as err:
        assert str(path) in str(err)
        return None


def _predict_or_value_error(model, event: bool) -> None:
    for mode in ("dense", "event") if event else ("dense",):
        try:
            model.predict(X, mode=mode)
        except ValueError:
            pass
    model.summary()


def _zip_regions(raw: bytes, path) -> np.ndarray:
    """Byte offsets of the zip headers (local, central directory, end record) and of the
    compressed header entry: where a flip reaches the parsers rather than array data."""
    spots = []
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        for info in infos:
            start = info.header_offset
            spots.extend(range(start, start + 30 + len(info.filename)))
            if info.filename == "__header__.npy":
                spots.extend(range(start + 30 + len(info.filename),
                                   start + 30 + len(info.filename) + info.compress_size))
    end = raw.rfind(b"PK\x05\x06")
    (central,) = struct.unpack("<L", raw[end + 16:end + 20])
    spots.extend(range(central, len(raw)))  # central directory and end record
    return np.array(sorted(set(spots)))


FLIPS, TRUNCATIONS, HEADER_EDITS = 3000, 200, 1500


def test_fuzz_flips_and_truncations(program, tmp_path):
    """Single-byte flips and truncations of a saved file, and byte edits of its JSON header
    (re-zipped with valid checksums, so that they reach the schema): load returns a Model or
    raises ValueError; a loaded model predicts or raises ValueError."""
    path, _ = program
    rng = np.random.default_rng(20240517)
    shm = Path("/dev/shm")  # a RAM disk where there is one: thousands of tiny files
    work = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() and os.access(shm, os.W_OK) \
        else tmp_path
    try:
        _fuzz(path, work / "fuzz.fqe", rng)
    finally:
        if work != tmp_path:
            shutil.rmtree(work, ignore_errors=True)


def _fuzz(path, target, rng) -> None:
    raw = path.read_bytes()
    hot = _zip_regions(raw, path)
    loaded = 0
    for i in range(FLIPS):  # half of them on the zip headers and the header entry
        data = bytearray(raw)
        pos = int(hot[rng.integers(hot.size)]) if i % 2 else int(rng.integers(len(raw)))
        data[pos] ^= int(rng.integers(1, 256))
        target.write_bytes(bytes(data))
        model = _load_or_value_error(target)
        if model is not None:
            loaded += 1
            _predict_or_value_error(model, event=i % 8 == 0)
    for cut in rng.integers(0, len(raw), size=TRUNCATIONS):
        target.write_bytes(raw[:int(cut)])
        assert _load_or_value_error(target) is None
    header, entries = _parts(path)
    text = json.dumps(header, separators=(",", ":")).encode()
    chars = b'0123456789-[]{}",:ntfe.'
    for i in range(HEADER_EDITS):  # replace, delete or flip 1-2 bytes
        edit = bytearray(text)
        for _ in range(int(rng.integers(1, 3))):
            pos = int(rng.integers(len(edit)))
            r = rng.random()
            if r < 0.6:
                edit[pos] = chars[int(rng.integers(len(chars)))]
            elif r < 0.8:
                del edit[pos]
            else:
                edit[pos] ^= int(rng.integers(1, 256))
        _write(target, bytes(edit), entries)
        model = _load_or_value_error(target)
        if model is not None:
            loaded += 1
            _predict_or_value_error(model, event=i % 4 == 0)
    assert loaded > 100  # flips of array data and harmless edits still load


def _expect(path, field: str):
    return pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + re.escape(field))


def _patched(program, tmp_path, edit, name="patched.fqe"):
    header, entries = _parts(program[0])
    header = copy.deepcopy(header)
    edit(header, entries)
    path = tmp_path / name
    _write(path, header, entries)
    return path


def _set(*keys_value):
    *keys, value = keys_value

    def edit(header, _entries):
        obj = header
        for k in keys[:-1]:
            obj = obj[k]
        if value is _DELETE:
            del obj[keys[-1]]
        else:
            obj[keys[-1]] = value
    return edit


_DELETE = object()

# (edit, field the error must name); ops[1] is the conv (fused max-pool), ops[3] the dense op
WRONG_FIELDS = [
    (_set("name", 3), "name"),
    (_set("input_shape", "6x6"), "input_shape"),
    (_set("input_shape", [None, 6, 0, 1]), "input_shape[2]"),
    (_set("input_shape", [None, 6, True, 1]), "input_shape[2]"),
    (_set("input_dtype", "object"), "input_dtype"),
    (_set("target", ["akida"]), "target"),
    (_set("meta", []), "meta"),
    (_set("outputs", {}), "outputs"),
    (_set("outputs", []), "outputs"),
    (_set("outputs", 0, []), "outputs[0]"),
    (_set("outputs", 0, "tensor", "nowhere"), "outputs[0].tensor"),
    (_set("outputs", 0, "frac", "7"), "outputs[0].frac"),
    (_set("outputs", 0, "name", None), "outputs[0].name"),
    (_set("ops", {}), "ops"),
    (_set("ops", []), "ops"),
    (_set("ops", 1, []), "ops[1]"),
    (_set("ops", 1, "name", 7), "ops[1].name"),
    (_set("ops", 1, "kind", "conv9"), "ops[1].kind"),
    (_set("ops", 1, "kind", "input"), "ops[1].kind"),
    (_set("ops", 0, "kind", "clip"), "ops[0].kind"),
    (_set("ops", 1, "inputs", "img_quantizer"), "ops[1].inputs"),
    (_set("ops", 1, "inputs", []), "ops[1].inputs"),
    (_set("ops", 1, "inputs", ["nope"]), "ops[1].inputs[0]"),
    (_set("ops", 1, "attrs", []), "ops[1].attrs"),
    (_set("ops", 1, "attrs", "strides", [0, 1]), "ops[1].attrs.strides"),
    (_set("ops", 1, "attrs", "strides", [1]), "ops[1].attrs.strides"),
    (_set("ops", 1, "attrs", "strides", [1, 10**9]), "ops[1].attrs.strides[1]"),
    (_set("ops", 1, "attrs", "dilation_rate", [1, -1]), "ops[1].attrs.dilation_rate[1]"),
    (_set("ops", 1, "attrs", "padding", "SAME"), "ops[1].attrs.padding"),
    (_set("ops", 1, "attrs", "pool", "pool_size", [2, 0]), "ops[1].attrs.pool.pool_size[1]"),
    (_set("ops", 1, "attrs", "pool", [2, 2]), "ops[1].attrs.pool"),
    (_set("ops", 1, "attrs", "type", "conv3d"), "ops[1].attrs.type"),
    (_set("ops", 1, "attrs", "accum_dtype", "int8"), "ops[1].attrs.accum_dtype"),
    (_set("ops", 1, "attrs", "acc_hi", 1.5), "ops[1].attrs.acc_hi"),
    (_set("ops", 1, "attrs", "acc_lo", 2**70), "ops[1].attrs.acc_lo"),
    (_set("ops", 1, "attrs", "out_frac", []), "ops[1].attrs.out_frac"),
    (_set("ops", 1, "attrs", "layers", [1]), "ops[1].attrs.layers[0]"),
    (_set("ops", 1, "attrs", "in_shape", [6, 6]), "ops[1].attrs.in_shape"),
    (_set("ops", 2, "attrs", "target_shape", [-5]), "ops[2].attrs.target_shape[0]"),
    (_set("ops", 1, "arrays", []), "ops[1].arrays"),
    (_set("ops", 1, "arrays", "kernel", []), "ops[1].arrays.kernel"),
    (_set("ops", 1, "arrays", "kernel", _DELETE), "ops[1].arrays.kernel"),
    (_set("ops", 1, "arrays", "kernel", "shape", [3, 3, 4]), "ops[1].arrays.kernel.shape"),
    (_set("ops", 1, "arrays", "kernel", "shape", [3, 3, 1, 5]), "ops[1].arrays.kernel"),
    (_set("ops", 1, "arrays", "kernel", "shape", [3, -3, 1, 4]), "ops[1].arrays.kernel.shape"),
    (_set("ops", 1, "arrays", "kernel", "encoding", "int3"), "ops[1].arrays.kernel.encoding"),
    (_set("ops", 1, "arrays", "kernel", "encoding", "int16"), "ops[1].arrays.kernel"),
    (_set("ops", 1, "arrays", "kernel", "entry", "a999"), "ops[1].arrays.kernel.entry"),
    (_set("ops", 1, "arrays", "kernel", "entry", 3), "ops[1].arrays.kernel.entry"),
    (_set("ops", 3, "attrs", "type", "conv2d"), "ops[3].attrs.strides"),
    (_set("version", True), "version"),
    (_set("format", None), "format"),
]


@pytest.mark.parametrize("edit,field", WRONG_FIELDS, ids=[f for _, f in WRONG_FIELDS])
def test_wrong_header_field(program, tmp_path, edit, field):
    path = _patched(program, tmp_path, edit)
    with _expect(path, field):
        fe.load(path)


def test_header_not_an_object_or_not_json(program, tmp_path):
    _, entries = _parts(program[0])
    for i, text in enumerate((b"[1, 2]", b"{\"format\": ", b"\xff\xfe", b"[" * 100000)):
        path = tmp_path / f"h{i}.fqe"
        _write(path, text, entries)
        with _expect(path, "header" if i == 0 else "__header__"):
            fe.load(path)


def test_inputs_must_name_earlier_ops_no_cycles(program, tmp_path):
    header, _ = _parts(program[0])
    names = [op["name"] for op in header["ops"]]
    for i, inputs in enumerate(([names[2]], [names[1]], ["ghost"])):  # forward, self, unknown
        path = _patched(program, tmp_path, _set("ops", 1, "inputs", inputs), f"c{i}.fqe")
        with _expect(path, "ops[1].inputs[0]"):
            fe.load(path)
    path = _patched(program, tmp_path, _set("ops", 2, "name", names[1]), "dup.fqe")
    with _expect(path, "ops[2].name"):
        fe.load(path)


def test_shift_arrays_in_range(program, tmp_path):
    def edit(header, entries):
        entry = header["ops"][1]["arrays"]["shift"]
        entries[entry["entry"] + ".npy"] = _npy(np.full(entry["shape"], 100, np.int16) * 99)
        entry["encoding"] = "int16"
    path = _patched(program, tmp_path, edit)
    with _expect(path, "ops[1].arrays.shift"):
        fe.load(path)


# ------------------------------------------------------------------ oversized entries
def _raw_zip(path, members) -> None:
    """A zip written by hand: ``members`` are ``(name, deflate_stream, crc, file_size)``, so an
    entry can claim any size and inflate to anything."""
    with open(path, "wb") as f:
        central = []
        for name, data, crc, size in members:
            offset, n = f.tell(), name.encode()
            f.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0x21, crc, len(data),
                                size, len(n), 0) + n + data)
            central.append(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0x21,
                                       crc, len(data), size, len(n), 0, 0, 0, 0, 0, offset) + n)
        start, blob = f.tell(), b"".join(central)
        f.write(blob + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(central), len(central),
                                   len(blob), start, 0))


def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


BLOCK = 1 << 24


def _zero_bomb(npy_header: bytes, blocks: int) -> bytes:
    """A raw deflate stream of ``npy_header`` then ``blocks * 16 MiB`` zeros: one full-flushed
    block of zeros repeated (~16 kB each), so 1.5e9 values cost ~1.5 MB."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(npy_header) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(BLOCK)) + c.flush(zlib.Z_FULL_FLUSH)
    return head + block * blocks + c.flush()


def _npy_header(shape, descr="|i1") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue()


def _bomb_file(program, tmp_path, name, declared_shape, npy_shape, claimed_size, blocks):
    """The program with its conv kernel entry replaced by a stream inflating to
    ``blocks * 16 MiB`` bytes (``claimed_size``: the zip entry's declared size)."""
    header, entries = _parts(program[0])
    kernel = header["ops"][1]["arrays"]["kernel"]
    kernel["shape"], kernel["encoding"] = declared_shape, "int8"
    members = []
    for member, data in entries.items():
        if member == kernel["entry"] + ".npy":
            hdr = _npy_header(tuple(npy_shape))
            stream = _zero_bomb(hdr, blocks)
            members.append((member, stream, 0, claimed_size(len(hdr))))
        else:
            members.append((member, _deflate(data), zlib.crc32(data), len(data)))
    head = _npy(np.frombuffer(json.dumps(header).encode(), dtype=np.uint8))
    members.append(("__header__.npy", _deflate(head), zlib.crc32(head), len(head)))
    path = tmp_path / name
    _raw_zip(path, members)
    return path


def _peak_of_failed_load(path, field: str) -> int:
    tracemalloc.start()
    try:
        with _expect(path, field):
            fe.load(path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


BOMB_VALUES = 90 * BLOCK  # 1.5e9 int8 values (12 GB as int64)


@pytest.mark.parametrize("case", ["declared", "npy_header_lies", "zip_size_lies",
                                  "stream_lies"])
def test_inflating_entry_rejected_with_bounded_memory(program, tmp_path, case):
    """An entry inflating to 1.5e9 values from a ~1.5 MB file: rejected before it is
    decompressed, peak memory of load (tracemalloc) below 2x the file size."""
    honest = [3, 3, 1, 4]
    size_of = {"declared": lambda h: h + BOMB_VALUES, "npy_header_lies": lambda h: h + 36,
               "zip_size_lies": lambda h: h + BOMB_VALUES, "stream_lies": lambda h: h + 36}
    declared = [BOMB_VALUES, 1, 1, 1] if case == "declared" else honest
    npy_shape = [36] if case in ("zip_size_lies", "stream_lies") else [BOMB_VALUES]
    path = _bomb_file(program, tmp_path, f"{case}.fqe", declared, npy_shape, size_of[case], 90)
    size = path.stat().st_size
    assert 1_000_000 < size < 2_000_000
    if case == "stream_lies":  # only 36 values are ever inflated: a bad checksum
        tracemalloc.start()
        try:
            with pytest.raises(ValueError, match=re.escape(str(path)) + ".*(CRC|kernel)"):
                fe.load(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    else:
        field = "ops[1].arrays.kernel.shape" if case == "declared" else "ops[1].arrays.kernel"
        peak = _peak_of_failed_load(path, field)
    assert peak < 2 * size, (peak, size)


@pytest.mark.parametrize("where", ["npy_header", "json"])
def test_entry_declaring_1e12_values(program, tmp_path, where):
    if where == "json":
        path = _patched(program, tmp_path, _set("ops", 1, "arrays", "kernel", "shape",
                                                [10**6, 10**6, 1, 1]))
    else:
        def edit(header, entries):
            entry = header["ops"][1]["arrays"]["kernel"]["entry"] + ".npy"
            entries[entry] = _npy_header((10**12,)) + bytes(64)
        path = _patched(program, tmp_path, edit)
    peak = _peak_of_failed_load(path, "ops[1].arrays.kernel")
    assert peak < 2 * max(path.stat().st_size, 1 << 16)


def test_value_limit_env_var(program, tmp_path, monkeypatch):
    path = program[0]
    monkeypatch.setenv("FIXEDQ_ENGINE_MAX_VALUES", "50")
    with _expect(path, "ops[3].arrays.kernel.shape"):  # the largest array: 36x3
        fe.load(path)
    monkeypatch.setenv("FIXEDQ_ENGINE_MAX_VALUES", "100000")
    assert isinstance(fe.load(path), fe.Model)


# ------------------------------------------------------------------ predict shapes
def test_predict_wrong_rank_names_shapes(program):
    _, engine = program
    with pytest.raises(ValueError, match=re.escape("expects inputs of shape (N, 6, 6, 1), "
                                                   "got (6, 6, 1)")):
        engine.predict(X[0])
    with pytest.raises(ValueError, match=re.escape("got (2, 36)")):
        engine.predict(X.reshape(2, 36))


def test_input_shape_must_match_first_op(program, tmp_path):
    path = _patched(program, tmp_path, _set("input_shape", [None, 36]))
    with _expect(path, "input_shape"):
        fe.load(path)


def test_op_input_rank_checked_at_predict(program, tmp_path):
    def edit(header, _entries):
        header["input_shape"] = [None, 36]
        del header["ops"][1]["attrs"]["in_shape"]
    model = fe.load(_patched(program, tmp_path, edit))
    with pytest.raises(ValueError, match=re.escape("expects inputs of shape (N, H, W, C), "
                                                   "got (2, 36)")):
        model.predict(X.reshape(2, 36))


# ------------------------------------------------------------------ round trip
_BITS = st.sampled_from([4, 8, 16, 32, 64])


def _ints(rng, bits: int, shape) -> np.ndarray:
    hi = (1 << (bits - 1)) - 1
    return rng.integers(-hi - 1, hi, size=shape, endpoint=True, dtype=np.int64)


def _program(rng, bits: list[int], n_in: int, n_out: int) -> fe.Model:
    shifts = rng.integers(-20, 40, size=n_out)
    ops = [
        Op("x", "input", [], {"value_bits": 8, "signed": True, "out_frac": [4]},
           {"frac": np.array([4]), "lo": np.array([-128]), "hi": np.array([127])}),
        Op("fc", "neural", ["x"],
           {"type": "dense", "weight_bits": 8, "buffer_bits": 32, "acc_lo": -(2**31),
            "acc_hi": 2**31 - 1, "accum_bound": 2**40, "accum_dtype": "int64", "in_frac": 4,
            "value_bits": 7, "signed": True, "out_frac": [3] * n_out, "linear_shape": [n_out],
            "in_shape": [n_in]},
           {"kernel": _ints(rng, bits[0], (n_in, n_out)), "bias": _ints(rng, bits[1], (n_out,)),
            "multiplier": _ints(rng, bits[2], (n_out,)), "shift": shifts,
            "out_lo": _ints(rng, bits[3], ()), "out_hi": np.array([], np.int64)}),
        Op("relu", "clip", ["fc"], {"layers": ["relu"]},
           {"lo": np.zeros(n_out, np.int64), "hi": _ints(rng, bits[4], (1, n_out))}),
        Op("flat", "reshape", ["relu"], {"target_shape": [n_out]}),
    ]
    return fe.Model(ops, [{"tensor": "flat", "frac": [3] * n_out, "name": "out"}],
                    (None, n_in), "float32", "prop", "akida-2.0", {"k": [1, "two"]})


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bits=st.lists(_BITS, min_size=5, max_size=5), n_in=st.integers(1, 9),
       n_out=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_save_load_roundtrip_property(tmp_path, bits, n_in, n_out, seed):
    model = _program(np.random.default_rng(seed), bits, n_in, n_out)
    path = tmp_path / "prop.fqe"
    model.save(path)
    back = fe.load(path)
    assert (back.name, back.target, back.meta) == (model.name, model.target, model.meta)
    assert back.input_shape == model.input_shape and back.input_dtype == model.input_dtype
    assert back.outputs == model.outputs
    assert [(o.name, o.kind, o.inputs, o.attrs) for o in back.ops] == \
        [(o.name, o.kind, o.inputs, o.attrs) for o in model.ops]
    for a, b in zip(model.ops, back.ops, strict=True):
        assert a.arrays.keys() == b.arrays.keys()
        for key, arr in a.arrays.items():
            assert b.arrays[key].dtype == np.int64 and b.arrays[key].shape == arr.shape
            assert np.array_equal(b.arrays[key], arr), (a.name, key)
