"""ONNX export of engine programs: onnxruntime == engine on every element (issue 16.1).

Real quantized Keras models (8 and 4 bits, per-axis and per-tensor, asymmetric) are converted,
exported and run with onnxruntime; float32 and int64 outputs are compared with
``engine.predict`` element by element on inputs that include the range edges, rounding ties and
saturating values. Hand-made programs cover the int64 requantization path, exact ties of the
input quantizer, unsupported kinds and bounds past 2^53; the CLI is run as a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
keras = pytest.importorskip("keras")

import fixedq  # noqa: E402
import fixedq.engine as fe  # noqa: E402
from fixedq.engine.model import Model  # noqa: E402
from fixedq.engine.ops import Op  # noqa: E402
from fixedq.interop import EXPORTABLE_KINDS, export_onnx, to_onnx  # noqa: E402
from fixedq.layers.params import QuantizationParams  # noqa: E402

L = keras.layers
Q8 = QuantizationParams()
Q4 = QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4)
Q4T = QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4,
                         per_tensor_activations=True)
Q8A = QuantizationParams(asymmetric_activations=True)


def _session(proto):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def assert_exact(engine: Model, x: np.ndarray) -> None:
    """Export (float and int outputs), run onnxruntime, compare every element."""
    for output in ("float", "int"):
        got = _session(to_onnx(engine, output)).run(None, {"input": x})
        want = engine.predict(x, output=output, batch_size=64)
        want = want if isinstance(want, list) else [want]
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype and g.shape == w.shape, (output, g.dtype, w.dtype)
            bad = int(np.count_nonzero(g != w))
            assert bad == 0, f"{output}: {bad} of {w.size} elements differ"


def edge_inputs(engine: Model, x: np.ndarray, rng) -> np.ndarray:
    """``x`` plus samples at the input quantizer's range edges, beyond them, and on exact
    rounding ties (``(k + 1/2)·2^-f``)."""
    inp = engine.ops[0].arrays
    f = np.asarray(inp["frac"], np.float64)
    lo, hi = np.asarray(inp["lo"], np.float64), np.asarray(inp["hi"], np.float64)
    shape = x.shape[1:]
    lo_x, hi_x = np.broadcast_to(lo * 2.0**-f, shape), np.broadcast_to(hi * 2.0**-f, shape)
    ties = (rng.integers(lo.min(), hi.max(), size=(4, *shape)) + 0.5) * np.broadcast_to(
        2.0**-f, shape)
    pick = rng.random((4, *shape)) < 0.5
    extra = [np.broadcast_to(lo_x, shape)[None], np.broadcast_to(hi_x, shape)[None],
             np.where(pick, lo_x, hi_x), ties, 1e6 * np.sign(rng.normal(size=(2, *shape)))]
    return np.concatenate([x, *[e.astype(np.float32) for e in extra]]).astype(np.float32)


def _quantized(model, qp, x):
    return fe.convert(fixedq.quantize(model, qp, samples=x, verbose=False))


def _cnn():
    """conv/BN/ReLU/max-pool, depthwise, separable, add, concat, transposed conv, GAP, dense."""
    x = keras.Input((12, 12, 3))
    y = L.Conv2D(8, 3, padding="same")(x)
    y = L.BatchNormalization()(y)
    y = L.ReLU()(y)
    y = L.MaxPooling2D()(y)
    a = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(y)
    a = L.ReLU()(a)
    b = L.SeparableConv2D(16, 3, padding="same")(y)
    b = L.ReLU()(b)
    y = L.Add()([a, b])
    c = L.Conv2D(4, 1, strides=2)(y)
    y = L.Conv2D(8, 3, strides=2, padding="same", dilation_rate=1)(y)
    y = L.Concatenate()([y, c])
    y = L.Conv2DTranspose(6, 3, strides=2, padding="same")(y)
    y = L.ReLU()(y)
    y = L.MaxPooling2D(3, strides=2, padding="same")(y)
    y = L.GlobalAveragePooling2D()(y)
    return keras.Model(x, L.Dense(5)(y), name="cnn")


@pytest.mark.parametrize("qp", [Q8, Q4, Q4T], ids=["q8-per-axis", "q4-per-axis", "q4-per-tensor"])
def test_cnn_exact(qp):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 12, 12, 3)).astype("float32")
    engine = _quantized(_cnn(), qp, x)
    kinds = {(op.kind, op.attrs.get("type")) for op in engine.ops}
    assert {("neural", "conv2d"), ("neural", "depthwise"), ("neural", "transpose"),
            ("neural", "dense"), ("add", None), ("concat", None), ("gap", None)} <= kinds
    assert any(op.attrs.get("pool") for op in engine.ops)
    assert_exact(engine, edge_inputs(engine, x, rng))


def test_unfused_ops_affine_clip_pool_reshape_permute_multi_output(affine_skip):
    x_in = keras.Input((8, 8, 3))
    y = L.MaxPooling2D()(affine_skip.block(x_in))
    z = L.Concatenate(axis=1)([y, y])
    z = L.ReLU(max_value=1.0)(z)
    z = L.Conv2DTranspose(3, 2, strides=3, padding="valid")(z)
    z = L.Flatten()(z)
    z = L.Dropout(0.2)(z)
    z = L.Reshape((6, -1))(z)
    z = L.Dense(4)(z)
    z = L.Permute((2, 1))(z)
    head_a = L.Dense(3, name="head_a")(L.Flatten()(z))
    head_b = L.GlobalAveragePooling2D(name="head_b")(y)
    model = keras.Model(x_in, [head_a, head_b])
    rng = np.random.default_rng(1)
    affine_skip.randomize_batchnorms(model, rng)
    head = model.get_layer("head_a")  # a dead and a near-dead channel (M = 0, S = 62)
    w, bias = head.get_weights()
    w[:, 0] = 0.0
    w[:, 1] = 1e-20
    head.set_weights([w, bias])
    xs = rng.integers(0, 256, size=(40, 8, 8, 3)).astype("float32")
    engine = _quantized(model, QuantizationParams(per_tensor_activations=True), xs)
    kinds = {op.kind for op in engine.ops}
    assert {"affine", "clip", "maxpool", "reshape", "permute", "add", "concat"} <= kinds
    assert_exact(engine, edge_inputs(engine, xs, rng))


def _pool_mul_pad_upsample_cnn():
    """avgpool ('valid' and 'same': per-position divisors), mul (same shape and the SE
    broadcast), pad (asymmetric, not foldable), upsample, gmp."""
    x = keras.Input((12, 12, 3))
    y = L.ReLU()(L.Conv2D(6, 3, padding="same")(x))
    a = L.AveragePooling2D(2)(y)
    b = L.AveragePooling2D(3, strides=2, padding="same")(y)
    m = L.Multiply()([a, b])
    gate = L.Conv2D(6, 1, activation="sigmoid")(L.GlobalAveragePooling2D(keepdims=True)(m))
    se = L.Multiply()([m, gate])
    p = L.ZeroPadding2D(((1, 0), (2, 1)))(se)
    u = L.UpSampling2D((2, 3))(p)
    c = L.Conv2D(4, 3, strides=2)(u)
    y = L.Concatenate()([L.GlobalMaxPooling2D()(c), L.GlobalMaxPooling2D()(p)])
    return keras.Model(x, L.Dense(5)(y), name="pool_mul_pad_upsample")


@pytest.mark.parametrize("qp", [Q8, Q4, Q4T, Q8A],
                         ids=["q8-per-axis", "q4-per-axis", "q4-per-tensor", "asymmetric"])
def test_avgpool_mul_pad_upsample_gmp_exact(qp):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(48, 12, 12, 3)).astype("float32")
    engine = _quantized(_pool_mul_pad_upsample_cnn(), qp, x)
    kinds = [op.kind for op in engine.ops]
    for kind in ("avgpool", "mul", "pad", "upsample", "gmp"):
        assert kind in kinds, (kind, kinds)
    assert kinds.count("avgpool") == 2 and kinds.count("mul") == 2
    assert_exact(engine, edge_inputs(engine, x, rng))


def test_pad_and_gmp_over_steps_exact():
    x_in = keras.Input((10, 3))
    y = L.ZeroPadding1D((2, 1))(L.Dense(4)(x_in))
    model = keras.Model(x_in, L.Dense(2)(L.GlobalMaxPooling1D()(y)))
    rng = np.random.default_rng(8)
    x = rng.normal(size=(32, 10, 3)).astype("float32")
    engine = _quantized(model, Q8, x)
    assert {"pad", "gmp"} <= {op.kind for op in engine.ops}
    assert_exact(engine, edge_inputs(engine, x, rng))


@pytest.mark.parametrize("qp", [Q8, Q4T, Q8A], ids=["q8-per-axis", "q4-per-tensor",
                                                "asymmetric"])
def test_conv1d_exact(qp):
    """Conv1D ops (a conv2d over a (1, steps) image in the engine): strided 'same', dilated
    'valid', then GAP over steps and Dense."""
    x_in = keras.Input((16, 3))
    y = L.ReLU()(L.Conv1D(6, 3, strides=2, padding="same")(x_in))
    y = L.Conv1D(4, 3, dilation_rate=2)(y)
    model = keras.Model(x_in, L.Dense(3)(L.GlobalAveragePooling1D()(y)))
    rng = np.random.default_rng(9)
    x = rng.normal(size=(40, 16, 3)).astype("float32")
    engine = _quantized(model, qp, x)
    assert sum(bool(op.attrs.get("conv1d")) for op in engine.ops) == 2
    assert_exact(engine, edge_inputs(engine, x, rng))


def test_mul_products_past_2_53_refused():
    """A hand-made mul whose inputs' product can pass 2^53 is refused naming the op."""
    wide = Op("in", "input", [], {"dtype": "float32"}, {
        "frac": np.array([0]), "lo": np.array([-(2**30)]), "hi": np.array([2**30])})
    mul = Op("m", "mul", ["in", "in"], {}, {"shift": np.array([0]),
                                           "out_lo": np.array([-(2**62)]),
                                           "out_hi": np.array([2**62])})
    with pytest.raises(ValueError, match=r"op 'm' \(mul\).*2\^53"):
        to_onnx(_program([wide, mul]))


@pytest.mark.parametrize("qp", [Q8A], ids=["asymmetric"])
def test_asymmetric_offsets(qp):
    x_in = keras.Input((10, 10, 2))
    y = L.Conv2D(6, 3, padding="same")(x_in)
    a = L.Conv2D(6, 3, padding="valid")(y)
    y = L.Concatenate()([a, L.Conv2D(2, 3, padding="valid")(y)])
    y = L.Conv2D(4, 3, padding="same")(y)
    y = L.Flatten()(y)
    model = keras.Model(x_in, L.Dense(3)(y))
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 10, 10, 2)).astype("float32")
    engine = _quantized(model, qp, x)
    assert any("out_offset" in op.arrays for op in engine.ops)
    assert_exact(engine, edge_inputs(engine, x, rng))


def test_worst_case_3x3x512_float64_path_and_saturating_buffer():
    """+-max weights and saturating inputs: bound past 2^24 (double GEMM) and the 32-bit
    accumulator clip reached; 16-bit activations and weights."""
    x_in = keras.Input((5, 5, 512))
    conv = L.Conv2D(4, 3, padding="same")
    y = L.Dense(2)(L.Flatten()(conv(x_in)))
    model = keras.Model(x_in, y)
    k = np.ones((3, 3, 512, 4), dtype="float32")
    k[..., 1] = -1.0
    k[..., 2] = np.where(np.random.default_rng(0).random((3, 3, 512)) < 0.5, -1.0, 1.0)
    conv.set_weights([k, np.array([0.0, 0.0, 3.0, -3.0], "float32")])
    rng = np.random.default_rng(3)
    calib = rng.normal(size=(16, 5, 5, 512)).astype("float32")
    x = np.concatenate([np.full((2, 5, 5, 512), 50.0, "float32"),
                        np.full((2, 5, 5, 512), -50.0, "float32"), calib[:4] * 30.0])
    q16 = QuantizationParams(input_weight_bits=16, weight_bits=16, activation_bits=16,
                             input_bits=16, output_bits=16)
    # 8 bits: bound ~2^25, two float32 Convs on x = x_hi·2^s + x_lo; 16 bits: ~2^41, no
    # float32 split exists: im2col slices + double MatMul, accumulator clip at 2^31
    for qp, path in ((Q8, "Conv"), (q16, "Concat")):
        engine = fe.convert(fixedq.quantize(model, qp, samples=calib, verbose=False))
        op = next(o for o in engine.ops if o.attrs.get("type") == "conv2d")
        assert op.attrs["accum_bound"] >= 2**24
        assert path in {n.op_type for n in to_onnx(engine).graph.node}
        assert_exact(engine, x)


@pytest.mark.parametrize("qp", [Q8, QuantizationParams(weight_bits=4, activation_bits=4,
                                                       asymmetric_activations=True), Q4T],
                         ids=["q8", "a4-asymmetric", "q4-per-tensor"])
def test_vit_exact(qp):
    """ClassToken, AddPositionEmbs, LayerMadNormalization, Attention (integer shiftmax),
    residual Adds, ExtractToken: the int64 transformer graph == engine."""
    from fixedq.models.vit_adapt import build_vit

    model = build_vit((8, 8, 3), patch=4, dim=8, heads=4, blocks=1, mlp_dim=8, num_classes=3,
                      rescale=None)
    rng = np.random.default_rng(7)
    for layer in model.layers:
        if type(layer).__name__ in ("ClassToken", "AddPositionEmbs"):
            layer.set_weights([rng.normal(size=w.shape) * 0.5 for w in layer.weights])
        if type(layer).__name__ == "LayerMadNormalization":
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(-1.5, 1.5, c), rng.normal(size=c) * 0.3])
    x = rng.normal(size=(32, 8, 8, 3)).astype("float32")
    engine = _quantized(model, qp, x)
    assert {"attention", "madnorm", "class_token", "add_pos", "extract_token"} <= {
        op.kind for op in engine.ops}
    assert_exact(engine, edge_inputs(engine, x, rng))


@pytest.mark.parametrize("qp", [Q8, Q4], ids=["8bit", "4bit"])
def test_plain_keras_vit_exact(qp):
    """Keras LayerNormalization (layernorm, eq. 47: comparisons, Newton steps, floor division)
    and MultiHeadAttention (attention_softmax, eq. 30b): onnxruntime == engine, including
    constant rows (variance 0) and saturating inputs."""
    import keras

    L = keras.layers
    x_in = keras.Input((6, 8))
    h = L.LayerNormalization(epsilon=1e-6)(L.Dense(8)(x_in))
    h = L.Add()([h, L.MultiHeadAttention(2, 4)(h, h)])
    h = L.LayerNormalization(epsilon=1e-3, center=False)(h)
    model = keras.Model(x_in, L.Dense(3)(L.GlobalAveragePooling1D()(h)))
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(32, 6, 8)) * rng.choice([0.01, 1.0, 30.0], (32, 6, 1))).astype(
        "float32")
    engine = _quantized(model, qp, x)
    assert {"layernorm", "attention_softmax"} <= {op.kind for op in engine.ops}
    probe = np.concatenate([edge_inputs(engine, x, rng), np.full((2, 6, 8), 3.0, "float32")])
    assert_exact(engine, probe)


def test_standalone_shiftmax():
    from fixedq.layers.transformers import Shiftmax

    x_in = keras.Input((6, 10))
    y = L.Dense(4)(Shiftmax()(L.Dense(10)(x_in)))
    rng = np.random.default_rng(8)
    xs = (rng.normal(size=(50, 6, 10)) * 3).astype("float32")
    engine = _quantized(keras.Model(x_in, y), Q8, xs)
    assert "shiftmax" in {op.kind for op in engine.ops}
    assert_exact(engine, edge_inputs(engine, xs, rng))


# ------------------------------------------------------------------ hand-made programs


def _program(ops, input_shape=(None, 4), input_dtype="float32", frac=(0,)):
    return Model(ops, [{"tensor": ops[-1].name, "frac": list(frac), "name": "out"}],
                 input_shape, input_dtype=input_dtype, name="hand")


def _input(lo=-(2**15), hi=2**15 - 1, frac=0):
    return Op("in", "input", [], {}, {"frac": np.array([frac]), "lo": np.array([lo]),
                                      "hi": np.array([hi])})


def test_int64_requant_path_and_input_ties():
    """Multipliers and offsets too wide for double (int64 path of eq. 5), negative and zero
    multipliers, left shifts, shift 62; float64 inputs on exact ties and at
    0.49999999999999994 (where floor(x + 1/2) is wrong)."""
    aff = Op("aff", "affine", ["in"], {}, {
        "multiplier": np.array([2**23 + 1, -3, 0, -(2**20 + 7), 5]),
        "shift": np.array([40, 2, 62, 20, -3]),
        "offset": np.array([2**55 + 3, -5, 7, -(2**45), 1]),
        "out_lo": np.full(5, -(2**40)), "out_hi": np.full(5, 2**40 - 1)})
    sh = Op("sh", "shift", ["aff"], {}, {"shift": np.array([9, 0, -2, 1, 62]),
                                          "out_lo": np.full(5, -(2**31)),
                                          "out_hi": np.full(5, 2**31 - 1)})
    engine = _program([_input(), aff, sh], input_shape=(None, 5), input_dtype="float64")
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.integers(-(2**15), 2**15, size=(200, 5)) + 0.5,
                        rng.normal(size=(200, 5)) * 2.0**14,
                        np.full((1, 5), 0.49999999999999994), np.full((1, 5), -0.5),
                        np.full((1, 5), 2.0**52 + 1), np.full((1, 5), -np.inf),
                        np.full((1, 5), np.inf)])
    proto = to_onnx(engine, "int")
    assert "Mod" in {n.op_type for n in proto.graph.node}  # the int64 path is exercised
    assert_exact(engine, x)


def test_unsupported_kind_names_the_op(tmp_path):
    tok = Op("tok", "future_kind", ["in"], {}, {})
    engine = Model([_input(), tok], [{"tensor": "tok", "frac": [0], "name": "out"}],
                   (None, 3, 4), name="hand")
    path = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match=r"op 'tok' of kind 'future_kind' cannot be "
                                         r"exported"):
        export_onnx(engine, path)
    assert not path.exists() and not os.listdir(tmp_path)


def _wide_dense_program():
    """A hand-made dense op whose accumulator bound (2^57) passes 2^53."""
    dense = Op("fc", "neural", ["in"], {
        "type": "dense", "accum_dtype": "int64", "acc_lo": -(2**62), "acc_hi": 2**62,
        "accum_bound": 2**58}, {
        "kernel": np.full((4, 2), 2**40), "bias": np.zeros(2, np.int64),
        "multiplier": np.array([1, 1]), "shift": np.array([40, 40]),
        "out_lo": np.array([-128, -128]), "out_hi": np.array([127, 127])})
    return _program([_input(), dense])


def test_bound_past_2_53_refused_and_old_file_kept(tmp_path):
    engine = _wide_dense_program()
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    with pytest.raises(ValueError, match=r"op 'fc' \(neural\).*2\^53"):
        export_onnx(engine, path)
    assert path.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["m.onnx"]


def test_every_engine_kind_exports_or_fails_naming_the_op():
    """Kinds outside EXPORTABLE_KINDS (kinds added to the engine later) are refused with a
    ValueError naming the op and its kind, before anything is built or written."""
    from fixedq.engine import ops

    assert set(EXPORTABLE_KINDS) <= set(ops.KERNELS)
    for kind in sorted(set(ops.KERNELS) - set(EXPORTABLE_KINDS)):
        op = Op(f"my_{kind}", kind, ["in"], {}, {})
        engine = Model([_input(), op], [{"tensor": op.name, "frac": [0], "name": "out"}],
                       (None, 4), name="hand")
        with pytest.raises(ValueError, match=rf"op 'my_{kind}' of kind '{kind}'"):
            to_onnx(engine)


def test_identity_and_export_file(tmp_path):
    ident = Op("id", "identity", ["in"], {}, {})
    clip = Op("relu", "clip", ["id"], {}, {"lo": np.array([0]), "hi": np.array([100])})
    engine = _program([_input(), ident, clip])
    path = tmp_path / "m.onnx"
    export_onnx(engine, path)
    x = np.random.default_rng(5).normal(size=(30, 4)).astype("float32") * 300
    got = _session(__import__("onnx").load(str(path))).run(None, {"input": x})[0]
    assert np.array_equal(got, engine.predict(x))


# ------------------------------------------------------------------ command line


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fixedq_cli.main", *map(str, args)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_cli_export_saved_fqe(tmp_path):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(32, 12, 12, 3)).astype("float32")
    engine = _quantized(_cnn(), Q4T, x)
    fqe = tmp_path / "cnn.fqe"
    engine.save(fqe)
    code = ("import sys, fixedq.engine as fe\n"
            "from fixedq.interop import export_onnx\n"
            f"export_onnx(fe.load({str(fqe)!r}), {str(tmp_path / 'api.onnx')!r})\n"
            "bad = [k for k in sys.modules if k.split('.')[0] in ('tensorflow', 'keras')]\n"
            "assert not bad, bad[:5]\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    os.remove(tmp_path / "api.onnx")
    proc = _cli("export", "-m", fqe)
    assert proc.returncode == 0, proc.stderr
    assert "saved ONNX model to" in proc.stdout
    onnx_path = tmp_path / "cnn.onnx"
    got = _session(__import__("onnx").load(str(onnx_path))).run(None, {"input": x})[0]
    assert np.array_equal(got, fe.load(fqe).predict(x))
    proc = _cli("export", "-m", fqe, "-o", tmp_path / "ints.onnx", "--int")
    assert proc.returncode == 0, proc.stderr
    got = _session(__import__("onnx").load(str(tmp_path / "ints.onnx"))).run(
        None, {"input": x})[0]
    assert np.array_equal(got, engine.predict(x, output="int"))
    # bad input: one line, exit 2, nothing written
    bad = tmp_path / "wide.fqe"
    _wide_dense_program().save(bad)
    before = sorted(os.listdir(tmp_path))
    for args, msg in (((bad,), "op 'fc' (neural) cannot be exported exactly"),
                      ((tmp_path / "missing.fqe",), "does not exist"),
                      ((fqe, "-o", tmp_path / "x.txt"), "must end with"),
                      ((fqe, "-o", tmp_path / "nodir" / "x.onnx"), "does not exist")):
        proc = _cli("export", "-m", *args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and msg in lines[0], proc.stderr
    assert sorted(os.listdir(tmp_path)) == before
