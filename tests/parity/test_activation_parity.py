"""Elementwise tables (eq. 38) and softmax (eq. 39): quantized Keras == engine on every element.

Exhaustive over every input integer at 4, 8 and 16 bits for every table function and the
dedicated layers (LeakyReLU, PReLU, ELU, bounded ReLUs), inputs far beyond the calibrated range
(saturation), fused ``activation=`` arguments of Dense/Conv layers split by sanitize, per-axis
and asymmetric activations, softmax over the last axis of 2-D and 3-D tensors, the q-config
round trip, and a hand-built layer with GELU's tanh approximation."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

import fixedq
import fixedq.engine as fe
from fixedq.layers import (
    Dequantizer,
    InputQuantizer,
    QuantizedActivation,
    QuantizedDropout,
    QuantizedReLU,
    QuantizedSoftmax,
)
from fixedq.layers.spec import QSpec
from fixedq.layers.table import QuantizedTable
from fixedq.layers.table_functions import FUNCTIONS

L = keras.layers


def _quantize(model, x, **qp):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may fall back to float
        return fixedq.quantize(model, fixedq.QuantizationParams(**qp), samples=x, verbose=False)


def _every_integer(qmodel) -> np.ndarray:
    """Every integer of the single-feature input quantizer, as on-grid floats, plus values far
    beyond its range (saturating) and the exact range edges."""
    iq = next(layer for layer in qmodel.layers if isinstance(layer, InputQuantizer))
    p = iq.integer_params()
    lo, hi, f = int(p["lo"][0]), int(p["hi"][0]), int(np.ravel(p["frac"])[0])
    v = np.arange(lo, hi + 1, dtype=np.float64)
    extra = np.array([lo * 1000.0, hi * 1000.0, 1e9, -1e9]) * 2.0**-f
    return np.concatenate([np.ldexp(v, -f), extra]).astype("float32")[:, None]


def _assert_exact(qmodel, xs, engine=None):
    engine = engine or fe.convert(qmodel)
    want = qmodel.predict(xs, verbose=0, batch_size=4096)
    got = engine.predict(xs, batch_size=4096)
    bad = int(np.count_nonzero(want != got))
    assert bad == 0, f"{bad} of {want.size} elements differ"
    return want


LAYERS = {  # name -> layer factory over a one-feature input
    **{f"act_{n}": (lambda n=n: L.Activation(n)) for n in
       ("sigmoid", "hard_sigmoid", "swish", "silu", "hard_swish", "hard_silu", "gelu", "tanh",
        "softplus", "softsign", "mish", "elu", "selu", "celu", "leaky_relu", "linear",
        "exponential", "hard_tanh", "log_sigmoid", "tanh_shrink", "squareplus", "sparse_plus",
        "sparse_sigmoid", "soft_shrink", "hard_shrink")},
    "leaky_relu_layer": lambda: L.LeakyReLU(negative_slope=0.5),  # ties: 0.5 * odd integers
    "prelu_layer": lambda: L.PReLU(alpha_initializer=keras.initializers.Constant(-0.3)),
    "elu_layer": lambda: L.ELU(alpha=0.5),
    "relu6": lambda: L.Activation("relu6"),  # an integer clip, not a table
    # act_linear: sanitize makes Activation("linear") an Identity (integers pass through)
    "bounded_relu": lambda: L.ReLU(max_value=1.5),
    "relu_negative_slope": lambda: L.ReLU(negative_slope=0.25),  # sanitize: LeakyReLU(0.25)
}


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_every_input_integer(bits):
    """Every table (or clip) layer right after the input quantizer (one branch each of one
    model), fed every input integer: engine == Keras on every element, the output a real
    function of the input, and within 1/2 output LSB of the float function on the input grid
    (inside the output range)."""
    names = sorted(LAYERS)
    x = keras.Input((1,))
    model = keras.Model(x, [LAYERS[n]()(x) for n in names])
    samples = np.linspace(-5, 5, 64, dtype="float32")[:, None]
    q = _quantize(model, samples, input_bits=bits, activation_bits=bits, output_bits=bits)
    xs = _every_integer(q)
    assert len(xs) >= 2**bits  # exhaustive
    engine = fe.convert(q)
    want = [np.asarray(t) for t in q(xs)]  # eager: one trace per branch would cost more
    got = engine.predict(xs, batch_size=1 << 17)
    floats = [np.asarray(t, np.float64) for t in model(xs[:-4])]
    kinds = QuantizedTable | QuantizedReLU | QuantizedDropout  # act_linear: the identity
    layers = [layer for layer in q.layers if isinstance(layer, kinds)]
    assert len(layers) == len(names)
    for name, w, g, f, layer in zip(names, want, got, floats, layers, strict=True):
        assert np.array_equal(w, g), f"{name}: {np.count_nonzero(w != g)} elements differ"
        assert len(np.unique(w)) > 1, name  # a real function of its input, not a constant
        spec = layer.output_spec
        step = 2.0 ** -spec.frac_bits[0]
        lo, hi = (b * step for b in spec.int_bounds())
        inside = (f > lo) & (f < hi)
        err = np.abs(w[:-4][inside] - f[inside]) / step
        noise = 2.0**-20 * np.abs(f[inside]) / step + 1e-6  # the float32 model's rounding
        assert np.all(err <= 0.5 + noise), f"{name}: {err.max()} LSB"


def _fused_model():
    x = keras.Input((6, 6, 3))
    y = L.Conv2D(6, 3, padding="same", activation="swish")(x)
    y = L.DepthwiseConv2D(3, activation="hard_swish")(y)
    y = L.Conv2D(5, 1, activation="gelu")(y)
    a = L.Conv2D(4, 1, activation="sigmoid")(y)
    b = L.Conv2D(4, 1, activation="hard_sigmoid")(y)
    c = L.Conv2D(4, 1, activation="tanh")(y)
    d = L.Conv2D(4, 1, activation="relu6")(y)
    e = L.Conv2D(4, 1, activation="leaky_relu")(y)
    y = L.Concatenate()([a, b, c, d, e])
    y = L.Dense(7, activation="elu")(L.Flatten()(y))
    return keras.Model(x, L.Dense(4, activation="softmax")(y))


@pytest.mark.parametrize("qp", [{}, {"asymmetric_activations": True},
                                {"per_tensor_activations": True, "activation_bits": 4},
                                {"input_bits": 16, "activation_bits": 16, "output_bits": 16}],
                         ids=["8bit", "asymmetric", "4bit-per-tensor", "16bit"])
def test_fused_activations_are_split_and_exact(qp):
    """activation= on Conv2D/DepthwiseConv2D/Dense: split by sanitize, every one quantized (no
    Dequantizer before the output), engine == Keras on worst-case inputs."""
    rng = np.random.default_rng(0)
    model = _fused_model()
    x = rng.normal(size=(32, 6, 6, 3)).astype("float32")
    q = _quantize(model, x, **qp)
    tables = [layer for layer in q.layers if isinstance(layer, QuantizedTable)]
    assert len(tables) == 8, [type(layer).__name__ for layer in q.layers]
    assert isinstance(q.layers[-2], QuantizedSoftmax) and isinstance(q.layers[-1], Dequantizer)
    xs = np.concatenate([x, x * 30, -x * 30, np.zeros_like(x[:2])])
    y = _assert_exact(q, xs)
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, atol=4 * 2.0 ** -q.layers[-2].output_spec.
                               frac_bits[0] + 1e-6)


def test_softmax_over_the_last_axis_of_tokens():
    """Softmax of (N, tokens, C) (and a Softmax layer in the middle of a model)."""
    rng = np.random.default_rng(1)
    x = keras.Input((5, 8))
    y = L.Softmax()(L.Dense(8)(x))
    model = keras.Model(x, L.Dense(3)(y))
    xs = (rng.normal(size=(32, 5, 8)) * 3).astype("float32")
    q = _quantize(model, xs)
    assert any(isinstance(layer, QuantizedSoftmax) for layer in q.layers)
    _assert_exact(q, np.concatenate([xs, xs * 100]))


def test_softmax_on_another_axis_stays_float_with_a_warning():
    x = keras.Input((5, 8))
    model = keras.Model(x, L.Softmax(axis=1)(L.Dense(8)(x)))
    xs = np.random.default_rng(2).normal(size=(16, 5, 8)).astype("float32")
    with pytest.warns(UserWarning, match="Softmax is not supported with axis 1"):
        q = fixedq.quantize(model, samples=xs, verbose=False)
    np.testing.assert_allclose(q.predict(xs, verbose=0), model.predict(xs, verbose=0),
                               atol=0.05)


def test_q_config_round_trip_and_keras_file(tmp_path):
    """dump_config -> quantize(q_config=...) rebuilds the same model bit for bit; the .keras
    file loads to the same outputs."""
    rng = np.random.default_rng(3)
    x = keras.Input((6,))
    y = L.Dense(5, activation="gelu")(x)
    y = L.PReLU()(L.Dense(4, activation="hard_swish")(y))
    model = keras.Model(x, L.Dense(3, activation="softmax")(L.Activation("sigmoid")(y)))
    model.layers[-3].set_weights([np.array([0.3, -0.2, 0.1, 0.5], np.float32)])
    x = rng.normal(size=(32, 6)).astype("float32")
    q = _quantize(model, x)
    cfg = fixedq.dump_config(q)
    again = fixedq.quantize(model, samples=x[:4], q_config=cfg, verbose=False)
    assert np.array_equal(q.predict(x, verbose=0), again.predict(x, verbose=0))
    q.save(tmp_path / "q.keras")
    loaded = fixedq.load_model(tmp_path / "q.keras")
    assert np.array_equal(q.predict(x, verbose=0), loaded.predict(x, verbose=0))


def test_gelu_tanh_approximation_hand_built():
    """GELU's tanh approximation (no Keras layer config selects it): a hand-built quantized
    model converts and runs bit-exact over every 8-bit input."""
    spec_in = QSpec(7, True, (4,))
    x = keras.Input((1,))
    iq = InputQuantizer(output_spec=spec_in)
    act = QuantizedActivation("gelu", {"approximate": True}, input_specs=[spec_in],
                              output_spec=QSpec(7, True, (5,)))
    q = keras.Model(x, Dequantizer()(act(iq(x))))
    xs = _every_integer(q)
    y = _assert_exact(q, xs)
    ref = FUNCTIONS["gelu"].numpy(xs[:-4, 0].astype(np.float64), approximate=True)
    inside = ref < 127 / 32
    assert np.abs(y[:-4, 0][inside] - ref[inside]).max() <= 0.5 / 32 + 1e-9


def test_efficientnet_like_stem_with_squeeze_excitation():
    """Rescaling -> Normalization -> Conv(swish) -> DepthwiseConv(swish) -> squeeze-and-
    excitation (GAP keepdims, Conv swish, Conv sigmoid, Multiply) -> Conv -> softmax, as in
    EfficientNetB0: every layer integer, engine == Keras."""
    rng = np.random.default_rng(4)
    x = keras.Input((8, 8, 3))
    norm = L.Normalization(axis=-1)
    norm.adapt(rng.uniform(0, 1, size=(64, 8, 8, 3)))
    y = norm(L.Rescaling(1 / 255)(x))
    y = L.Conv2D(8, 3, strides=2, padding="same", activation="swish")(y)
    y = L.DepthwiseConv2D(3, padding="same", activation="swish")(y)
    s = L.GlobalAveragePooling2D(keepdims=True)(y)
    s = L.Conv2D(4, 1, activation="swish")(s)
    s = L.Conv2D(8, 1, activation="sigmoid")(s)
    y = L.Multiply()([y, s])
    y = L.GlobalAveragePooling2D()(L.Conv2D(6, 1)(y))
    model = keras.Model(x, L.Dense(5, activation="softmax")(y))
    xs = rng.uniform(0, 255, size=(32, 8, 8, 3)).astype("float32")
    q = _quantize(model, xs)
    names = [type(layer).__name__ for layer in q.layers]
    assert "QuantizedNormalization" in names and "QuantizedMultiply" in names, names
    assert names.count("QuantizedActivation") == 4 and names[-1] == "Dequantizer"
    _assert_exact(q, np.concatenate([xs, xs[:4] * 0, xs[:4] * 10]))


def test_qat_trains_through_tables_and_softmax():
    """fit on a quantized model with table layers and a final softmax: the straight-through
    gradient reaches the weights before them (they change, PReLU's alpha too), the loss falls,
    and the engine still equals Keras after training."""
    rng = np.random.default_rng(5)
    x = keras.Input((6,))
    y = L.PReLU()(L.Dense(8, activation="gelu")(x))
    model = keras.Model(x, L.Dense(3, activation="softmax")(L.Activation("tanh")(y)))
    xs = rng.normal(size=(256, 6)).astype("float32")
    labels = (xs[:, 0] > 0).astype("int32") + (xs[:, 1] > 0.5)
    q = _quantize(model, xs)
    before = [w.numpy().copy() for w in q.trainable_weights]
    q.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    first = q.evaluate(xs, labels, verbose=0)
    q.fit(xs, labels, epochs=3, batch_size=32, verbose=0)
    assert q.evaluate(xs, labels, verbose=0) < first
    after = q.trainable_weights
    assert all(not np.array_equal(b, a.numpy()) for b, a in zip(before, after, strict=True))
    _assert_exact(q, xs)


def test_qat_sees_the_integer_softmax_as_probabilities():
    """fixedq.qat infers its loss from the output: a 4-bit integer softmax (rows sum to 1 only
    within 2^-4 per class) is still recognized as probabilities, not logits."""
    from fixedq.models.qat import _is_probability_output

    x = keras.Input((6,))
    model = keras.Model(x, L.Dense(10, activation="softmax")(L.Dense(8)(x)))
    xs = np.random.default_rng(6).normal(size=(64, 6)).astype("float32")
    q = _quantize(model, xs, output_bits=4)
    assert isinstance(q.layers[-2], QuantizedSoftmax)
    assert _is_probability_output(q, np.asarray(q(xs)))
