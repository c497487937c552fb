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
from fixedq.engine.ops import KERNELS, Op
from fixedq.layers.transformers import Shiftmax
from fixedq.models.vit_adapt import build_vit

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


def _cnn() -> keras.Model:
    """Transposed conv (+ fused pool), BN (affine), ReLU6-like clip, zero padding, depthwise,
    add, multiply, concat,
    max-pool, permute, average pooling ('same'), upsampling, a strided slice, GAP, dropout
    (identity), dense."""
    x = keras.Input((6, 6, 2), name="img")
    a = L.ReLU(name="r1")(L.BatchNormalization(name="bn")(L.Conv2D(4, 3, padding="same",
                                                                   name="c1")(x)))
    b = L.MaxPooling2D(name="mp")(L.Conv2DTranspose(4, 3, strides=2, padding="same",
                                                    name="up")(a))
    c = L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(
        L.ZeroPadding2D(((2, 0), (0, 2)), name="pad")(x))  # not 'same': a pad op
    m = L.Multiply(name="mul")([L.Add(name="add")([b, c]), c])
    s = L.Concatenate(name="cat")([m, L.Conv2D(2, 1, name="c2")(x)])
    s = L.MaxPooling2D(name="mp2")(L.ReLU(name="r2")(L.BatchNormalization(name="bn2")(s)))
    p = L.ReLU(max_value=2.0, name="r3")(L.Permute((2, 1, 3), name="perm")(s))
    p = L.AveragePooling2D(2, 1, padding="same", name="avg")(p)
    p = L.UpSampling2D((1, 2), name="up2")(p)[:, 1:, ::2]  # an operator slice: 'slice'
    g = L.Dropout(0.1, name="drop")(L.Concatenate(name="cat2")([
        L.GlobalAveragePooling2D(name="gap")(p), L.GlobalMaxPooling2D(name="gmp")(p)]))
    return keras.Model(x, L.Dense(3, name="fc")(g), name="cnn")


def _vit() -> keras.Model:
    """Patch conv, reshape, class token, position embeddings, MAD norm, attention, residual
    adds, token extraction, a standalone shiftmax."""
    v = build_vit((8, 8, 1), patch=4, dim=8, heads=2, blocks=1, mlp_dim=8, num_classes=3,
                  rescale=None)
    return keras.Model(v.input, Shiftmax(name="probs")(v.output), name="vit")


def _seq() -> keras.Model:
    """Conv1D (a conv2d over a (1, steps) image), GlobalAveragePooling1D (gap over steps), an
    elementwise table (GELU), softmax, LayerNormalization over the channels (layernorm), Keras
    MultiHeadAttention (attention_softmax)."""
    x = keras.Input((12, 3), name="steps")
    y = L.ReLU(name="r")(L.Conv1D(4, 3, strides=2, padding="same", name="c1d")(x))
    y = L.LayerNormalization(name="ln")(L.Conv1D(4, 2, name="c1d2")(y))
    y = L.MultiHeadAttention(2, 2, name="mha")(y, y)
    y = L.GlobalAveragePooling1D(name="gap1d")(y)
    y = L.Activation("gelu", name="act")(L.Dense(5, name="fc0")(y))
    return keras.Model(x, L.Softmax(name="probs")(L.Dense(3, name="fc")(y)), name="seq")


def _stream() -> keras.Model:
    """A streaming program: buffer convs with integer FIFOs (buffer_conv, full and depthwise)
    and a recurrence with integer states (recurrent)."""
    from fixedq.layers.temporal import (
        BufferTempConv,
        DepthwiseBufferTempConv,
        StatefulRecurrent,
    )

    x = keras.Input((4, 4, 2), name="frame")
    y = L.ReLU(name="r")(BufferTempConv(3, 2, use_bias=True, name="tc")(x))
    y = DepthwiseBufferTempConv(2, name="dtc")(y)
    y = StatefulRecurrent(name="ssm")(y)
    return keras.Model(x, L.Dense(3, name="fc")(L.Flatten(name="f")(y)), name="stream")


@pytest.fixture(scope="module")
def programs(tmp_path_factory, program):
    """Every engine op kind the converter produces, over three saved programs."""
    out = {"tiny": (*program, X)}
    for name, build, shape in (("cnn", _cnn, (6, 6, 2)), ("vit", _vit, (8, 8, 1)),
                               ("seq", _seq, (12, 3))):
        data = np.random.default_rng(0).normal(size=(16, *shape)).astype("float32")
        engine = fe.convert(fixedq.quantize(build(), samples=data, verbose=False))
        path = tmp_path_factory.mktemp("fqe") / f"{name}.fqe"
        engine.save(path)
        out[name] = (path, engine, data[:2])
    clips = np.random.default_rng(0).normal(size=(16, 3, 4, 4, 2)).astype("float32")
    engine = fe.convert(fixedq.quantize(_stream(), samples=clips, verbose=False))
    path = tmp_path_factory.mktemp("fqe") / "stream.fqe"
    engine.save(path)
    out["stream"] = (path, engine, clips[:2])
    return out


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


def _predict_or_value_error(model, x, event: bool) -> None:
    for mode in ("dense", "event") if event else ("dense",):
        try:
            model.predict(x, mode=mode)
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


#: (byte flips, truncations, JSON header edits) per program
FUZZ = {"tiny": (2000, 150, 1000), "cnn": (600, 40, 400), "vit": (300, 30, 250),
        "seq": (300, 30, 250), "stream": (300, 30, 250)}
#: op kinds no program of the fuzz contains ('shift': an OutputQuantizer the converter only
#: writes when a concatenation re-grids an input; crafted by hand in the tests below)
NOT_FUZZED = {"shift"}


def test_fuzz_programs_cover_every_op_kind(programs):
    kinds = {op.kind for _, engine, _ in programs.values() for op in engine.ops}
    assert kinds == set(KERNELS) - NOT_FUZZED


@pytest.mark.parametrize("name", sorted(FUZZ))
def test_fuzz_flips_and_truncations(programs, tmp_path, name):
    """Single-byte flips and truncations of a saved file, and byte edits of its JSON header
    (re-zipped with valid checksums, so that they reach the schema): load returns a Model or
    raises ValueError; a loaded model predicts or raises ValueError."""
    path, _, x = programs[name]
    rng = np.random.default_rng(20240517)
    shm = Path("/dev/shm")  # a RAM disk where there is one: thousands of tiny files
    work = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() and os.access(shm, os.W_OK) \
        else tmp_path
    try:
        _fuzz(path, work / "fuzz.fqe", rng, x, FUZZ[name])
    finally:
        if work != tmp_path:
            shutil.rmtree(work, ignore_errors=True)


def _fuzz(path, target, rng, x, counts) -> None:
    flips, truncations, header_edits = counts
    raw = path.read_bytes()
    hot = _zip_regions(raw, path)
    loaded = 0
    for i in range(flips):  # half of them on the zip headers and the header entry
        data = bytearray(raw)
        pos = int(hot[rng.integers(hot.size)]) if i % 2 else int(rng.integers(len(raw)))
        data[pos] ^= int(rng.integers(1, 256))
        target.write_bytes(bytes(data))
        model = _load_or_value_error(target)
        if model is not None:
            loaded += 1
            _predict_or_value_error(model, x, event=i % 8 == 0)
    for cut in rng.integers(0, len(raw), size=truncations):
        target.write_bytes(raw[:int(cut)])
        assert _load_or_value_error(target) is None
    header, entries = _parts(path)
    text = json.dumps(header, separators=(",", ":")).encode()
    chars = b'0123456789-[]{}",:ntfe.'
    for i in range(header_edits):  # replace, delete or flip 1-2 bytes
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
            _predict_or_value_error(model, x, event=i % 4 == 0)
    assert loaded > flips // 30  # flips of array data and harmless edits still load


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


def test_op_input_rank_checked_at_load(program, tmp_path):
    def edit(header, _entries):
        header["input_shape"] = [None, 36]
        del header["ops"][1]["attrs"]["in_shape"]
    path = _patched(program, tmp_path, edit)
    with _expect(path, "neural): expects a rank-4 (N, H, W, C) input, got (N, 36)"):
        fe.load(path)


def _op_index(header, kind: str) -> int:
    return next(i for i, op in enumerate(header["ops"]) if op["kind"] == kind)


def test_intermediate_shapes_checked_at_load(program, tmp_path):
    """Schema-valid but inconsistent: flatten to 4 channels before a dense op of 36 inputs."""
    path = _patched(program, tmp_path, _set("ops", 2, "attrs", "target_shape", [9, 4]))
    with _expect(path, "ops[3] ('fc', neural): a dense kernel [36, 3] needs inputs (N, ..., "
                       "36), got (N, 9, 4)"):
        fe.load(path)


def test_extract_token_past_the_tokens(programs, tmp_path):
    path, engine, x = programs["vit"]
    header, _ = _parts(path)
    i = _op_index(header, "extract_token")
    bad = _patched(programs["vit"][:2], tmp_path, _set("ops", i, "attrs", "token", 5))
    with _expect(bad, f"ops[{i}] ('cls_out', extract_token): token 5 is past the 5 tokens"):
        fe.load(bad)
    # built in memory (no load-time check): predict still raises a ValueError naming the op
    ops = [Op(o.name, o.kind, o.inputs, dict(o.attrs), o.arrays) for o in engine.ops]
    ops[i].attrs["token"] = 7
    model = fe.Model(ops, engine.outputs, engine.input_shape, engine.input_dtype)
    with pytest.raises(ValueError, match=re.escape("op 'cls_out' (extract_token): token 7")):
        model.predict(x)


def test_any_op_error_is_a_value_error_naming_the_op(programs):
    _, engine, x = programs["vit"]
    ops = [Op(o.name, o.kind, o.inputs, dict(o.attrs), dict(o.arrays)) for o in engine.ops]
    i = next(i for i, o in enumerate(ops) if o.kind == "madnorm")
    del ops[i].arrays["multiplier"]  # a KeyError inside the op
    model = fe.Model(ops, engine.outputs, engine.input_shape, engine.input_dtype)
    with pytest.raises(ValueError, match=re.escape(f"op {ops[i].name!r} (madnorm): ")):
        model.predict(x)


def _transpose_file(programs, tmp_path, name, strides, input_shape=None):
    header, _ = _parts(programs["cnn"][0])
    i = next(i for i, op in enumerate(header["ops"]) if op["attrs"].get("type") == "transpose")

    def edit(h, _entries):
        h["ops"][i]["attrs"]["strides"] = strides
        if input_shape is not None:  # fully convolutional: no recorded sizes
            h["input_shape"] = input_shape
            for op in h["ops"]:
                op["attrs"].pop("in_shape", None)
                op["attrs"].pop("linear_shape", None)
    return _patched(programs["cnn"][:2], tmp_path, edit, name), i


def test_transposed_conv_large_stride_bounded(programs, tmp_path, monkeypatch):
    """A transposed conv with stride 1024: rejected at load when the sizes are known (its
    output no longer fits the add; its buffer is over the value limit), at predict before
    anything is allocated when they are dynamic (peak memory < 10 MB)."""
    path, i = _transpose_file(programs, tmp_path, "big.fqe", [1024, 1024])
    with _expect(path, "('add', add): inputs ['(N, 3072, 3072, 4)', '(N, 6, 6, 4)']"):
        fe.load(path)
    monkeypatch.setenv("FIXEDQ_ENGINE_MAX_VALUES", str(10**6))
    with _expect(path, f"ops[{i}] ('mp', neural): its output (N, 3072, 3072, 4) holds "):
        fe.load(path)
    monkeypatch.delenv("FIXEDQ_ENGINE_MAX_VALUES")
    path, i = _transpose_file(programs, tmp_path, "dyn.fqe", [1024, 1024], [None, None, None, 2])
    model = fe.load(path)
    x = np.zeros((32, 6, 6, 2), np.float32)
    # the compiled path may run micro-batches of one sample: make one sample's buffer (about
    # 1.5e8 values) exceed the limit, so the check must fire before anything is allocated
    monkeypatch.setenv("FIXEDQ_ENGINE_MAX_VALUES", str(10**6))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=re.escape("op 'mp' (neural): a transposed conv")):
            model.predict(x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20, peak


# ------------------------------------------------------------------ many entries
def _many_entries_zip(path, n: int) -> None:
    """``n`` one-byte stored entries, written by hand (fast)."""
    local, central, offset = [], [], 0
    crc = zlib.crc32(b"x")
    for k in range(n):
        name = f"e{k}".encode()
        head = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0x21, crc, 1, 1,
                           len(name), 0) + name + b"x"
        central.append(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0x21, crc,
                                   1, 1, len(name), 0, 0, 0, 0, 0, offset) + name)
        local.append(head)
        offset += len(head)
    blob = b"".join(central)
    count = min(n, 0xFFFF)
    Path(path).write_bytes(b"".join(local) + blob + struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(blob), offset, 0))


def test_many_tiny_entries_rejected_before_parsing(tmp_path):
    from fixedq.engine.fileformat import MAX_ENTRIES

    path = tmp_path / "many.fqe"
    _many_entries_zip(path, MAX_ENTRIES + 1)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        with _expect(path, f"more than {MAX_ENTRIES} entries"):
            fe.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * size, (peak, size)


def test_entries_beyond_the_file_size_budget_rejected(tmp_path, monkeypatch):
    """(a) 20,000 one-byte entries (a 1.6 MB file; zipfile would take ~11 MB to parse them):
    refused from the record count at a peak below 2x the file size (with a 4 MiB allowance
    instead of the default 64 MiB, which honest deep programs need)."""
    from fixedq.engine import fileformat as ff

    monkeypatch.setattr(ff, "METADATA_FREE", 4 * 2**20)
    path = tmp_path / "dense.fqe"
    _many_entries_zip(path, 20_000)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        with _expect(path, "parsing its directory would take"):
            fe.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * size, (peak, size)


def _header_bomb(program, tmp_path, name, text: bytes, pad: int):
    """``program`` with its header replaced by ``text`` (deflated), plus a ``pad``-byte stored
    entry that makes the file bigger."""
    _, raw = _parts(program[0])
    raw["__header__.npy"] = _npy(np.frombuffer(text, dtype=np.uint8))
    raw["pad.npy"] = _npy(np.random.default_rng(0).integers(0, 255, pad, dtype=np.uint8))
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, data in raw.items():
            zf.writestr(key, data)
    return path


@pytest.mark.parametrize("case", ["inflating", "containers"])
def test_header_beyond_the_file_size_budget_rejected(program, tmp_path, case, monkeypatch):
    """(b) a header of 48 MB of JSON deflated to ~50 KB (json.loads would take ~250 MB), or of
    1 MB of ``{}`` (~26 MB): refused before json.loads at a peak below 2x the file size (4 MiB
    allowance, as above)."""
    from fixedq.engine import fileformat as ff

    monkeypatch.setattr(ff, "METADATA_FREE", 4 * 2**20)
    if case == "inflating":
        text, want = b"[" + b"0," * (24 * 2**20) + b"0]", "memory budget allows"
    else:
        text, want = b"[" + b"{}," * (2**20 // 3) + b"{}]", "parsing its"
    path = _header_bomb(program, tmp_path, f"{case}.fqe", text, 3 * 2**20)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        with _expect(path, "__header__: "):
            fe.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * size, (peak, size)
    with _expect(path, want):
        fe.load(path)


def test_honest_files_fit_the_metadata_budget(programs):
    """Every saved program loads, its metadata well inside the budget."""
    from fixedq.engine import fileformat as ff

    for name, (path, engine, x) in programs.items():
        with zipfile.ZipFile(path) as zf:
            raw = zf.read("__header__.npy")
        assert ff._json_cost(raw) < ff.METADATA_FREE / 4, name
        np.testing.assert_array_equal(fe.load(path).predict(x), engine.predict(x))
    # a deep, narrow honest program: 4,000 ops of this header's kind stay inside the allowance
    path, _, _ = next(iter(programs.values()))
    with zipfile.ZipFile(path) as zf:
        header = json.loads(np.load(io.BytesIO(zf.read("__header__.npy"))).tobytes())
    ops = header["ops"][1:]
    header["ops"] = header["ops"][:1] + [dict(op, name=f"{op['name']}_{i}")
                                         for i in range(4000 // len(ops) + 1) for op in ops]
    deep = json.dumps(header, separators=(",", ":")).encode()
    assert ff._json_cost(deep) + 6 * len(header["ops"]) * ff._ENTRY_COST < ff.METADATA_FREE


# ------------------------------------------------------------------ atomic save
def test_save_is_atomic_with_umask_permissions(program, tmp_path, monkeypatch):
    _, engine = program
    old = os.umask(0o022)
    try:
        engine.save(tmp_path / "m.fqe")
    finally:
        os.umask(old)
    assert (tmp_path / "m.fqe").stat().st_mode & 0o777 == 0o644

    def boom(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez_compressed", boom)
    with pytest.raises(OSError, match="disk full"):
        engine.save(tmp_path / "m.fqe")
    with pytest.raises(OSError, match="disk full"):
        engine.save(tmp_path / "new.fqe")
    assert sorted(os.listdir(tmp_path)) == ["m.fqe"]
    assert isinstance(fe.load(tmp_path / "m.fqe"), fe.Model)


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
