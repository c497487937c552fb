"""Keras vs integer engine, bit for bit: every supported layer, both bit widths, worst cases.

Each test builds a small float model, quantizes it with real calibration samples, converts it
and asserts ``np.array_equal`` between ``qmodel.predict`` and the engine (dense path, event
path, and after a save/load round trip).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import fixedq
import fixedq.engine as fe
from fixedq.layers.params import QuantizationParams

L = keras.layers
Q8 = QuantizationParams()
Q4 = QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4)
Q4T = QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4,
                         per_tensor_activations=True)
Q8T = QuantizationParams(per_tensor_activations=True)
QPARAMS = {"q8": Q8, "q4": Q4, "q4t": Q4T, "q8t": Q8T}


def _samples(shape, n=48, seed=0, scale=1.0):
    return (np.random.default_rng(seed).normal(size=(n, *shape)) * scale).astype("float32")


def check_parity(model, x, qparams=Q8, calib=None, tmp_path=None, events=True):
    """Quantize, convert, and assert exact equality of every output element; returns engine."""
    qmodel = fixedq.quantize(model, qparams, samples=x if calib is None else calib,
                             verbose=False)
    engine = fe.convert(qmodel)
    want = qmodel.predict(x, verbose=0, batch_size=32)
    got = engine.predict(x, batch_size=17)
    want_l = want if isinstance(want, list) else [want]
    got_l = got if isinstance(got, list) else [got]
    assert len(want_l) == len(got_l)
    for w, g in zip(want_l, got_l, strict=True):
        assert g.dtype == np.float32 and g.shape == w.shape
        bad = int(np.count_nonzero(w != g))
        assert bad == 0, f"{bad} of {w.size} elements differ (max |diff| {np.abs(w - g).max()})"
    if events:
        ev = engine.predict(x, batch_size=64, mode="event")
        for w, g in zip(want_l, ev if isinstance(ev, list) else [ev], strict=True):
            assert np.array_equal(w, g)
    if tmp_path is not None:
        path = tmp_path / "m.fqe"
        engine.save(path)
        again = fe.load(path).predict(x, batch_size=32)
        for w, g in zip(want_l, again if isinstance(again, list) else [again], strict=True):
            assert np.array_equal(w, g)
    return engine, qmodel


def _seq(input_shape, layers, name="m"):
    x = keras.Input(input_shape)
    y = x
    for layer in layers:
        y = layer(y)
    return keras.Model(x, y, name=name)


@pytest.mark.parametrize("qp", ["q8", "q4", "q4t"])
def test_conv_variants(qp, tmp_path):
    model = _seq((14, 14, 3), [
        L.Conv2D(8, 3, padding="same"), L.ReLU(),
        L.Conv2D(8, 3, padding="valid", dilation_rate=2), L.ReLU(),
        L.Conv2D(12, 3, strides=2, padding="same"), L.ReLU(), L.MaxPooling2D(),
        L.Conv2D(6, 2, strides=2, padding="valid"),
        L.Flatten(), L.Dense(5)])
    x = _samples((14, 14, 3))
    engine, _ = check_parity(model, x, QPARAMS[qp], tmp_path=tmp_path)
    assert any(op.attrs.get("pool") for op in engine.ops)  # max-pool fused into its conv


def test_even_strided_same_padding_and_maxpool_same():
    model = _seq((9, 10, 2), [
        L.Conv2D(4, 4, strides=2, padding="same"), L.ReLU(),
        L.MaxPooling2D(3, strides=2, padding="same"),
        L.Conv2D(4, 2, padding="same"), L.MaxPooling2D(2, padding="same"), L.Flatten(),
        L.Dense(3)])
    check_parity(model, _samples((9, 10, 2)))


@pytest.mark.parametrize("qp", ["q8", "q4t"])
def test_depthwise_and_separable(qp):
    model = _seq((10, 10, 4), [
        L.DepthwiseConv2D(3, depth_multiplier=2, padding="same"), L.ReLU(),
        L.SeparableConv2D(6, 3, padding="valid"), L.ReLU(),
        L.DepthwiseConv2D(3, strides=2, padding="valid"),
        L.GlobalAveragePooling2D(), L.Dense(4)])
    engine, qmodel = check_parity(model, _samples((10, 10, 4)), QPARAMS[qp])
    types = [op.attrs.get("type") for op in engine.ops if op.kind == "neural"]
    assert types.count("depthwise") == 3 and types.count("conv2d") == 1


@pytest.mark.parametrize("qp", ["q8", "q4"])
def test_conv_transpose(qp):
    model = _seq((6, 5, 3), [
        L.Conv2DTranspose(4, 3, strides=2, padding="same"), L.ReLU(),
        L.Conv2DTranspose(3, 3, strides=2, padding="valid"), L.ReLU(),
        L.Conv2DTranspose(2, 2, strides=3, padding="valid"),
        L.Conv2DTranspose(2, 4, strides=1, padding="same")])
    check_parity(model, _samples((6, 5, 3)), QPARAMS[qp])


def test_dense_2d_and_3d_reshape_permute_dropout(tmp_path):
    model = _seq((24,), [
        L.Dense(32), L.ReLU(), L.Dropout(0.3), L.Reshape((4, 8)), L.Dense(6), L.ReLU(),
        L.Permute((2, 1)), L.Dense(5), L.Flatten(), L.Dense(3)])
    check_parity(model, _samples((24,)), Q8T, tmp_path=tmp_path)


def test_batchnorm_unfoldable_and_rescaling_with_offset(affine_skip):
    x = keras.Input((8, 8, 3))
    y = L.GlobalAveragePooling2D()(affine_skip.block(x))
    model = keras.Model(x, L.Dense(3)(y))
    rng = np.random.default_rng(1)
    affine_skip.randomize_batchnorms(model, rng)
    xs = rng.integers(0, 256, size=(40, 8, 8, 3)).astype("float32")
    engine, qmodel = check_parity(model, xs)
    kinds = [op.kind for op in engine.ops]
    assert kinds.count("affine") == 3 and "add" in kinds and "gap" in kinds
    # uint8 inputs are accepted and equal the float path
    assert np.array_equal(engine.predict(xs.astype(np.uint8)), qmodel.predict(xs, verbose=0))


@pytest.mark.parametrize("qp", ["q8", "q4t"])
def test_residual_add_and_concatenate(qp):
    x = keras.Input((8, 8, 3))
    y = L.Conv2D(6, 3, padding="same")(x)
    y = L.ReLU()(y)
    r = L.Conv2D(6, 3, padding="same")(y)
    r = L.ReLU()(r)
    y = L.Add()([y, r])
    y = L.ReLU(max_value=4.0)(y)
    c = L.Conv2D(3, 1)(y)
    y = L.Concatenate()([y, c])
    z = L.Concatenate(axis=1)([y, y])
    z = L.MaxPooling2D()(z)
    z = L.Flatten()(z)
    model = keras.Model(x, L.Dense(4)(z))
    check_parity(model, _samples((8, 8, 3)), QPARAMS[qp])


def test_multi_output():
    x = keras.Input((6, 6, 2))
    y = L.Conv2D(4, 3)(x)
    y = L.ReLU()(y)
    a = L.Dense(3, name="head_a")(L.Flatten()(y))
    b = L.GlobalAveragePooling2D(name="head_b")(y)
    model = keras.Model(x, [a, b])
    engine, _ = check_parity(model, _samples((6, 6, 2)))
    assert len(engine.outputs) == 2


def test_worst_case_3x3x512_conv_saturating_inputs():
    """Extreme weights (+-max everywhere) and inputs saturating the input quantizer: the
    accumulator bound passes 2^24 (float64 path) and the 32-bit buffer is reached."""
    model = _seq((5, 5, 512), [L.Conv2D(4, 3, padding="same", use_bias=True), L.Flatten(),
                               L.Dense(2)])
    conv = model.layers[1]
    k = np.ones((3, 3, 512, 4), dtype="float32")
    k[..., 1] = -1.0
    k[..., 2] = np.where(np.random.default_rng(0).random((3, 3, 512)) < 0.5, -1.0, 1.0)
    conv.set_weights([k, np.array([0.0, 0.0, 3.0, -3.0], "float32")])
    calib = _samples((5, 5, 512), n=16)
    x = np.concatenate([np.full((3, 5, 5, 512), 50.0, "float32"),
                        np.full((3, 5, 5, 512), -50.0, "float32"),
                        _samples((5, 5, 512), n=4, seed=3, scale=30.0)])
    engine, qmodel = check_parity(model, x, Q8, calib=calib)
    op = next(op for op in engine.ops if op.attrs.get("type") == "conv2d")
    assert op.attrs["accum_bound"] >= 2**24 and op.attrs["accum_dtype"] == "float64"
    assert int(np.abs(op.arrays["kernel"]).min()) == 127
    ints = engine.predict(x, output="int")
    assert ints.dtype == np.int64


def test_16bit_activations_and_weights_saturate_32bit_buffer():
    q16 = QuantizationParams(input_weight_bits=16, weight_bits=16, activation_bits=16,
                             input_bits=16, output_bits=16)
    model = _seq((6, 6, 64), [L.Conv2D(8, 3, padding="same"), L.ReLU(),
                              L.Conv2D(8, 3, padding="valid"), L.Flatten(), L.Dense(4)])
    calib = _samples((6, 6, 64), n=24)
    x = np.concatenate([calib[:8], calib[8:16] * 40.0])
    engine, _ = check_parity(model, x, q16, calib=calib)
    bounds = [op.attrs["accum_bound"] for op in engine.ops if op.kind == "neural"]
    assert max(bounds) >= 2**31  # the 32-bit buffer saturation is on the tested path
    assert all(op.attrs["accum_dtype"] == "float64" for op in engine.ops if op.kind == "neural")


def test_sklearn_digits_cnn(tmp_path):
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = (digits.images[:200, :, :, None] * 16).astype("float32")
    model = _seq((8, 8, 1), [
        L.Rescaling(1 / 255.0), L.Conv2D(8, 3, padding="same"), L.ReLU(), L.MaxPooling2D(),
        L.Conv2D(16, 3, padding="same"), L.ReLU(), L.GlobalAveragePooling2D(), L.Dense(10)])
    check_parity(model, x, Q4T, tmp_path=tmp_path)
