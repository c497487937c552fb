"""Engine API: no-TF import, file format, bad input, targets, events, summary, kernels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

import fixedq
import fixedq.engine as fe
from fixedq.engine import events, fileformat, kernels
from fixedq.layers.params import QuantizationParams

L = keras.layers
Q4T = QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4,
                         per_tensor_activations=True)


def _float_model():
    x = keras.Input((10, 10, 1), name="img")
    y = L.Conv2D(8, 3, padding="same", name="conv1")(x)
    y = L.ReLU()(y)
    y = L.MaxPooling2D()(y)
    y = L.Conv2D(16, 3, padding="same", name="conv2")(y)
    y = L.ReLU()(y)
    y = L.Flatten()(y)
    return keras.Model(x, L.Dense(4, name="fc")(y), name="small")


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(0).uniform(0, 1, size=(40, 10, 10, 1)).astype("float32")


@pytest.fixture(scope="module")
def models(data):
    fmodel = _float_model()
    q4 = fixedq.quantize(fmodel, Q4T, samples=data, verbose=False)
    q8 = fixedq.quantize(fmodel, samples=data, verbose=False)
    return fmodel, q4, q8


def test_import_without_tensorflow(models, data, tmp_path):
    _, q4, _ = models
    engine = fe.convert(q4)
    path = tmp_path / "m.fqe"
    engine.save(path)
    np.save(tmp_path / "x.npy", data)
    np.save(tmp_path / "want.npy", q4.predict(data, verbose=0))
    code = (
        "import sys, numpy as np, fixedq.engine as fe\n"
        f"m = fe.load({str(path)!r})\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        f"want = np.load({str(tmp_path / 'want.npy')!r})\n"
        "assert np.array_equal(m.predict(x), want)\n"
        "assert np.array_equal(m.predict(x, mode='event'), want)\n"
        "m.summary(); m.event_stats(x)\n"
        "bad = [k for k in sys.modules if k.split('.')[0] in ('tensorflow', 'keras', 'tf_keras')]\n"
        "assert not bad, bad[:5]\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


def test_save_load_roundtrip_and_4bit_packing(models, data, tmp_path):
    fmodel, q4, q8 = models
    e4, e8 = fe.convert(q4), fe.convert(q8)
    p4, p8 = tmp_path / "q4.fqe", tmp_path / "q8.fqe"
    e4.save(p4)
    e8.save(p8)
    loaded = fe.load(p4)
    assert np.array_equal(loaded.predict(data), e4.predict(data))
    assert loaded.summary() == e4.summary()
    with zipfile.ZipFile(p4) as zf:
        header = json.loads(np.load(zf.open("__header__.npy")).tobytes())
    assert header["format"] == fe.FORMAT and header["version"] == fe.VERSION
    encodings = {op["attrs"].get("layers", [op["name"]])[0]: op["arrays"]["kernel"]["encoding"]
                 for op in header["ops"] if "kernel" in op["arrays"]}
    assert encodings["conv1"] == "int8"  # first layer: 8-bit weights
    assert encodings["conv2"] == "int4x2" and encodings["fc"] == "int4x2"
    fpath = tmp_path / "float.keras"
    fmodel.save(fpath)
    assert os.path.getsize(p4) < os.path.getsize(fpath)


def test_int4_pack_exhaustive():
    v = np.arange(-8, 8).repeat(3)
    assert np.array_equal(fileformat.unpack_int4(fileformat.pack_int4(v), v.size), v)
    odd = np.array([3, -1, -8])
    assert np.array_equal(fileformat.unpack_int4(fileformat.pack_int4(odd), 3), odd)


def test_load_rejects_foreign_and_corrupt_files(models, tmp_path):
    engine = fe.convert(models[1])
    good = tmp_path / "good.fqe"
    engine.save(good)
    cases = {}
    cases["random.fqe"] = os.urandom(300)
    raw = good.read_bytes()
    cases["truncated.fqe"] = raw[: len(raw) // 2]
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.arange(3))
    cases["foreign.npz"] = foreign.read_bytes()
    single = tmp_path / "single.npy"
    np.save(single, np.arange(3))
    cases["single.npy"] = single.read_bytes()
    for name, payload in cases.items():
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(ValueError, match="not a valid fixedq-engine file"):
            fe.load(path)
    for header_patch, msg in (({"format": "other"}, "format is 'other'"),
                              ({"version": 99}, "version 99 is not supported")):
        with np.load(good) as z:
            entries = {k: z[k] for k in z.files}
        header = json.loads(entries["__header__"].tobytes())
        header.update(header_patch)
        entries["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        bad = tmp_path / "patched.npz"
        np.savez(bad, **entries)
        with pytest.raises(ValueError, match=msg):
            fe.load(bad)
    with pytest.raises(FileNotFoundError):
        fe.load(tmp_path / "missing.fqe")


def test_convert_rejects_float_and_partly_quantized(models, data):
    fmodel, _, _ = models
    with pytest.raises(ValueError, match="not quantized"):
        fe.convert(fmodel)
    with pytest.raises(TypeError, match="keras.Model"):
        fe.convert("model.keras")
    x = keras.Input((6,))
    y = L.Dense(4)(x)
    y = L.Activation("log_softmax")(y)  # no integer path
    partly = fixedq.quantize(keras.Model(x, L.Dense(2)(y)),
                             samples=np.random.default_rng(1).normal(size=(16, 6)),
                             verbose=False)
    with pytest.raises(ValueError, match="partly quantized") as err:
        fe.convert(partly)
    assert "Activation" in str(err.value)


def test_predict_rejects_bad_inputs(models, data):
    engine = fe.convert(models[1])
    with pytest.raises(ValueError, match=r"expects inputs of shape \(N, 10, 10, 1\)"):
        engine.predict(data[:, :8])
    with pytest.raises(ValueError, match="shape"):
        engine.predict(data[0])
    with pytest.raises(TypeError, match="numeric"):
        engine.predict(np.array([["a"]]))
    with pytest.raises(TypeError, match="numeric"):
        engine.predict(data > 0.5)
    with pytest.raises(ValueError, match="finite"):
        engine.predict(np.full((1, 10, 10, 1), np.nan, "float32"))
    with pytest.raises(ValueError, match="batch_size"):
        engine.predict(data, batch_size=0)
    with pytest.raises(ValueError, match="mode"):
        engine.predict(data, mode="spiky")
    with pytest.raises(ValueError, match="empty"):
        engine.predict(data[:0])


def test_integer_outputs_and_batching(models, data):
    q8 = models[2]
    engine = fe.convert(q8)
    ints = engine.predict(data, output="int", batch_size=7)
    assert ints.dtype == np.int64
    assert np.array_equal(fe.dequantize(ints, engine.outputs[0]["frac"]),
                          q8.predict(data, verbose=0))
    assert np.array_equal(engine.predict(data, batch_size=1), engine.predict(data,
                                                                             batch_size=40))


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.int32, np.int64])
def test_dequantize_into_float32_equals_the_int64_route(dtype):
    # predict(output="float") dequantizes each batch from its own integer dtype into the
    # float32 result; the values must be those of int64 -> float32 -> times 2^-f, bit for bit
    rng = np.random.default_rng(int(np.dtype(dtype).itemsize))
    info = np.iinfo(dtype)
    v = rng.integers(info.min, info.max, (500, 9), dtype=dtype, endpoint=True)
    v[0] = info.min
    v[1] = info.max
    frac = np.array([-30, -1, 0, 1, 7, 16, 24, 40, 62])
    want = v.astype(np.int64).astype(np.float32) * np.ldexp(1.0, -frac).astype(np.float32)
    out = np.full(v.shape, np.nan, np.float32)
    got = fe.dequantize(v, frac, out=out)
    assert got is out and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_targets(models):
    _, q4, q8 = models
    fe.convert(q4, target="akida-1.0")
    fe.convert(q8, target="akida-2.0")
    with pytest.raises(ValueError) as err:
        fe.convert(q8, target="akida-1.0")
    msg = str(err.value)
    # every offending op is listed in one error: 8-bit weights of conv2/fc, 8-bit activations
    # and per-axis activations of conv1/conv2
    for expected in ("'conv2'", "'fc'", "8-bit weights", "8-bit activations", "per-axis"):
        assert expected in msg, msg
    assert msg.count("\n  - ") >= 4
    with pytest.raises(ValueError, match="unknown target"):
        fe.convert(q4, target="loihi")


def test_target_rejects_unsupported_kinds():
    x = keras.Input((6, 6, 2))
    a = L.Conv2D(4, 3, padding="same")(x)
    y = L.Add()([a, L.Conv2D(4, 1)(x)])
    y = L.Conv2DTranspose(2, 2, strides=2)(y)
    q = fixedq.quantize(keras.Model(x, y), Q4T,
                        samples=np.random.default_rng(0).normal(size=(16, 6, 6, 2)),
                        verbose=False)
    with pytest.raises(ValueError) as err:
        fe.convert(q, target="akida-1.0")
    assert "'add'" in str(err.value) and "transpose layers are not supported" in str(err.value)


def test_event_path_equals_dense_and_counts(models):
    engine = fe.convert(models[2])
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, size=(20, 10, 10, 1)).astype("float32")
    x[rng.random(x.shape) < 0.9] = 0.0
    assert np.array_equal(engine.predict(x, mode="event"), engine.predict(x))
    rows = engine.event_stats(x)
    dense_rows = engine.event_stats(x, mode="dense")
    first = rows[0]
    assert first["kind"] == "neural" and first["sparsity"] > 0.85
    assert first["synops"] < 0.2 * first["dense_macs"]
    # the exact synop count of the event path equals the static count of the dense path
    assert [r["synops"] for r in rows] == [r["synops"] for r in dense_rows]
    table = events.format_stats(rows).splitlines()
    assert "sparsity" in table[0] and table[0].endswith("kernel")
    assert table[1].split()[-1] == rows[0]["event_kernel"]  # which kernel ran, per op


def test_event_conv_strided_dilated_matches_dense():
    from fixedq.engine.ops import Op

    rng = np.random.default_rng(0)
    x = rng.integers(-3, 4, size=(2, 9, 8, 3)) * (rng.random((2, 9, 8, 3)) < 0.3)
    for strides, padding, dil in (((2, 2), "same", (1, 1)), ((1, 1), "same", (2, 2)),
                                  ((3, 2), "valid", (1, 1))):
        k = rng.integers(-7, 8, size=(3, 2, 3, 5))
        op = Op("c", "neural", ["x"], {"type": "conv2d", "accum_dtype": "float32",
                                       "strides": list(strides), "padding": padding,
                                       "dilation_rate": list(dil)}, {"kernel": k})
        acc, _ = events.event_linear(op, x)
        assert np.array_equal(acc, kernels.conv2d(x, k, strides, padding, dil, "int64"))


def test_kernels_float_and_int64_paths_agree():
    rng = np.random.default_rng(0)
    x = rng.integers(-200, 200, size=(2, 7, 6, 4))
    k = rng.integers(-100, 100, size=(3, 3, 4, 3))
    ref = kernels.conv2d(x, k, (2, 1), "same", (1, 1), "int64")
    assert np.array_equal(ref, kernels.conv2d(x, k, (2, 1), "same", (1, 1), "float64"))
    dk = rng.integers(-100, 100, size=(3, 3, 4, 2))
    assert np.array_equal(kernels.depthwise_conv2d(x, dk, (1, 1), "valid", (1, 1), "int64"),
                          kernels.depthwise_conv2d(x, dk, (1, 1), "valid", (1, 1), "float32"))
    tk = rng.integers(-100, 100, size=(3, 3, 5, 4))
    assert np.array_equal(kernels.conv2d_transpose(x, tk, (2, 2), "same", (1, 1), "int64"),
                          kernels.conv2d_transpose(x, tk, (2, 2), "same", (1, 1), "float64"))
    big = np.full((1, 3), 2**40)
    assert kernels.dense(big, np.full((3, 1), 2**12), "int64")[0, 0] == 3 * 2**52
    assert kernels.exact_dtype(2**53) == "int64"


def test_summary_lists_fused_ops(models):
    text = fe.convert(models[1]).summary()
    assert "conv1,max_pooling2d" in text and "4b" in text and "integer parameters" in text
