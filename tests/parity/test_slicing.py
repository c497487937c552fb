"""Slicing operator nodes (Keras 3 ``x[:, 1:]``, ``x[..., :k]``, strides, negative strides,
integer indices; tf-keras ``SlicingOpLambda``) are quantized as the engine ``slice`` op (the
integers copied): integer-only, engine == quantized Keras on every element at worst-case
magnitudes, .keras / .fqe round trips, ONNX export == engine; a slice nobody can quantize
(a newaxis) is one warning naming the node, and the model still computes the
float function there."""

import warnings

import keras
import numpy as np
import pytest
import tf_keras

import fixedq
import fixedq.engine as fe
from fixedq.layers import QuantizedStridedSlice

L = keras.layers
QPS = {"8bit": {}, "4bit": {"activation_bits": 4, "per_tensor_activations": True},
       "asymmetric": {"asymmetric_activations": True}}


def _image_model():
    x = keras.Input((7, 6, 3))
    h = L.Conv2D(5, 3, padding="same")(x)
    parts = [
        h[:, 1:],  # rows from 1
        h[..., :3],  # the first channels (per-axis frac_bits follow)
        h[:, ::2, 1:5:3],  # strides
        h[:, ::-1, ::-2, 4:0:-2],  # negative strides, reversed channels
        h[:, :, 2],  # an integer index (a column), channels kept
        h[..., 3],  # an integer index on the channel axis: one channel left
        h[:, -2:, :],
    ]
    flat = [L.Flatten()(p) for p in parts]
    return keras.Model(x, L.Dense(4)(L.Concatenate()(flat)), name="slices")


def _token_model():
    x = keras.Input((6, 8))
    t = L.Dense(8)(x)
    rest = L.Dense(4)(t[:, 1:])  # drop a class token
    head = L.Dense(4)(t[:, 0, :5])  # the first token's first features
    return keras.Model(x, [L.GlobalAveragePooling1D()(rest), head], name="tokens")


def _exact(q, probe, tmp_path):
    want = q.predict(probe, verbose=0)
    want = want if isinstance(want, list) else [want]
    engine = fe.convert(q)
    got = engine.predict(probe)
    got = got if isinstance(got, list) else [got]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    fe.save(engine, tmp_path / "m.fqe")
    again = fe.load(tmp_path / "m.fqe").predict(probe)
    for g, w in zip(again if isinstance(again, list) else [again], want, strict=True):
        np.testing.assert_array_equal(g, w)
    path = tmp_path / "q.keras"
    fixedq.save_model(q, path)
    loaded = fixedq.load_model(path).predict(probe, verbose=0)
    for g, w in zip(loaded if isinstance(loaded, list) else [loaded], want, strict=True):
        np.testing.assert_array_equal(g, w)
    return engine


@pytest.mark.parametrize("qp", list(QPS))
@pytest.mark.parametrize("build, shape, n_slices", [(_image_model, (7, 6, 3), 7),
                                                    (_token_model, (6, 8), 2)],
                         ids=["image", "tokens"])
def test_keras3_slices_are_integer_copies(qp, build, shape, n_slices, tmp_path):
    model = build()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, *shape)).astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing stays float
        q = fixedq.quantize(model, fixedq.QuantizationParams(**QPS[qp]), x)
    slices = [la for la in q.layers if isinstance(la, QuantizedStridedSlice)]
    assert len(slices) == n_slices
    probe = np.concatenate([x, 50 * x[:6], -50 * x[:6], np.zeros_like(x[:1])])
    engine = _exact(q, probe, tmp_path)
    assert sum(op.kind == "slice" for op in engine.ops) == n_slices
    if build is _image_model:  # the channel index: every output has that channel's frac_bits
        pick = next(la for la in slices if la.shrink == [3])
        assert set(pick.output_spec.frac_bits) == {int(pick.input_spec0.frac_array(5)[3])}
    # the ONNX export runs the same integers
    ort = pytest.importorskip("onnxruntime")
    from fixedq.interop import to_onnx

    sess = ort.InferenceSession(to_onnx(engine, "int").SerializeToString(),
                                providers=["CPUExecutionProvider"])
    want = engine.predict(probe, output="int")
    got = sess.run(None, {"input": probe})
    for g, w in zip(got, want if isinstance(want, list) else [want], strict=True):
        np.testing.assert_array_equal(g, w)


def test_tf_keras_slicing_op_lambda_h5(tmp_path):
    xi = tf_keras.Input((6, 5))
    d = tf_keras.layers.Dense(6)(xi)
    parts = [d[:, 1:], d[..., :3], d[:, ::2, 1:4], d[:, :, 2]]
    out = tf_keras.layers.Dense(3)(tf_keras.layers.Concatenate()(
        [tf_keras.layers.Flatten()(p) for p in parts]))
    tk = tf_keras.Model(xi, out)
    path = tmp_path / "slices.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tk.save(path)
    model = fixedq.load_model(path)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 6, 5)).astype("float32")
    np.testing.assert_allclose(model.predict(x, verbose=0), tk.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        q = fixedq.quantize(model, fixedq.QuantizationParams(), x)
    assert sum(isinstance(la, QuantizedStridedSlice) for la in q.layers) == 4
    probe = np.concatenate([x, 50 * x[:4], -50 * x[:4]])
    _exact(q, probe, tmp_path)


@pytest.mark.parametrize("cut", [lambda t: t[:, None], lambda t: t[..., None, 1:]],
                         ids=["newaxis", "newaxis-and-slice"])
def test_unquantizable_slice_is_one_warning_naming_the_node(cut):
    x = keras.Input((4, 3))
    y = cut(L.Dense(3)(x))
    model = keras.Model(x, L.Flatten()(y))
    xs = np.random.default_rng(2).normal(size=(16, 4, 3)).astype("float32")
    with pytest.warns(UserWarning, match=r"'get_item\w*' \(OperationLayer\).*static strided "
                                         r"slices") as record:
        q = fixedq.quantize(model, fixedq.QuantizationParams(), xs)
    assert sum("quantization stops" in str(w.message) for w in record) == 1
    np.testing.assert_allclose(q.predict(xs, verbose=0), model.predict(xs, verbose=0),
                               atol=0.05)


def test_slice_on_a_dynamic_axis_is_checked_at_run_time():
    """A program with dynamic spatial sizes loads (the indices cannot be checked against a
    size nobody knows yet); the kernel checks that they lie inside the real input and names the
    slice otherwise. (A larger input is sliced at the recorded normalized ends, as quantized
    Keras slices it.)"""
    from fixedq.engine.ops import Op, run_op

    op = Op("cut", "slice", ["x"], {"begin": [2, 0, 0], "end": [6, 4, 3], "strides": [2, 1, 1]},
            {})
    x = np.arange(2 * 6 * 4 * 3).reshape(2, 6, 4, 3)
    np.testing.assert_array_equal(run_op(op, [x]), x[:, 2:6:2])
    with pytest.raises(ValueError, match=r"slice 2:6:2 of axis 1 is outside its 4 entries"):
        run_op(op, [x[:, :4]])
    with pytest.raises(ValueError, match=r"slice 0:4:1 of axis 2 is outside its 3 entries"):
        run_op(op, [x[:, :, :3]])


def test_slices_must_be_normalized():
    """The layers and the engine hold normalized slices only (what the operator-node reader
    writes); a negative begin or a negative end with a positive stride would make ``call``
    and ``compute_output_shape`` disagree, so both refuse it naming the slice."""
    from fixedq.engine.validate import _slice_shape  # the rule under test
    from fixedq.layers import StridedSlice

    ok = StridedSlice([2, 0], [-1, 3], [-1, 1])  # a negative stride down to index 0
    assert ok.compute_output_shape((None, 4, 3)) == (None, 3, 3)
    for begin, end, strides in (([0], [-1], [1]), ([-2], [3], [1]), ([3], [-2], [-1])):
        with pytest.raises(ValueError, match="not a normalized slice"):
            StridedSlice(begin, end, strides)
        with pytest.raises(ValueError, match="is not normalized"):
            _slice_shape({"begin": begin, "end": end, "strides": strides}, (None, 3))
