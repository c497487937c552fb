"""1-D layers without an op of their own (DepthwiseConv1D, SeparableConv1D, MaxPooling1D,
AveragePooling1D) run as their 2-D versions over a (1, steps) image: the same float function,
then integer-only and engine bit-exact."""

import warnings

import keras
import numpy as np

import fixedq
import fixedq.engine as fe
from fixedq.transforms import sanitize

L = keras.layers


def _model():
    x = keras.Input((16, 3))
    y = L.DepthwiseConv1D(3, depth_multiplier=2, padding="same", name="dw")(x)
    y = L.SeparableConv1D(5, 3, strides=2, name="sep", activation="relu")(y)
    y = L.MaxPooling1D(2, name="mp")(y)
    y = L.AveragePooling1D(2, strides=1, padding="same", name="ap")(y)
    y = L.DepthwiseConv1D(2, dilation_rate=2, name="dw2")(y)
    return keras.Model(x, L.Dense(3, name="fc")(L.GlobalAveragePooling1D(name="gap")(y)))


def test_one_d_layers_as_2d_compute_the_same_function():
    model = _model()
    new_model, report = sanitize(model)
    assert sum("one_d_as_2d" in str(c) for c in report.changes) == 5
    assert {"dw", "sep", "mp", "ap", "dw2"} <= {layer.name for layer in new_model.layers}
    x = np.random.default_rng(0).normal(size=(8, 16, 3)).astype("float32")
    np.testing.assert_allclose(new_model.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_one_d_model_is_integer_only_and_engine_exact():
    model = _model()
    rng = np.random.default_rng(1)
    samples = rng.normal(size=(64, 16, 3)).astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        q = fixedq.quantize(model, fixedq.QuantizationParams(), samples)
    names = [type(layer).__name__ for layer in q.layers]
    assert names.count("Dequantizer") == 1
    x = np.concatenate([samples[:4], 30 * rng.normal(size=(2, 16, 3)).astype("float32")])
    np.testing.assert_array_equal(fe.convert(q).predict(x), q.predict(x, verbose=0))


def test_causal_or_dynamic_one_d_layers_are_left_alone():
    x = keras.Input((None, 3))
    y = L.MaxPooling1D(2, name="mp")(x)
    _, report = sanitize(keras.Model(x, y))
    assert not any("one_d_as_2d" in str(c) for c in report.changes)
