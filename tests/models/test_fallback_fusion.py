"""A ReLU planned to fuse into a layer that falls back to float is never lost (issue 12)."""

import warnings

import keras
import numpy as np
import pytest

import fixedq
from fixedq.layers.neural import QuantizedNeuralLayer


def _model(unsupported, pool: bool = False):
    """Dense -> unsupported -> Dense -> ReLU -> Dense, or with convolutions and a max-pool
    between the second one and the ReLU (the ReLU then fuses through the pool)."""
    rng = np.random.default_rng(0)
    if pool:
        x = keras.Input((6, 6, 2), name="x")
        y = keras.layers.Conv2D(8, 3, padding="same", name="fc1")(x)
        y = unsupported(y)
        y = keras.layers.Conv2D(8, 3, padding="same", name="fc2")(y)
        y = keras.layers.MaxPooling2D(2, name="pool")(y)
        y = keras.layers.ReLU(name="relu")(y)
        y = keras.layers.Flatten(name="flat")(y)
    else:
        x = keras.Input((8,), name="x")
        y = keras.layers.Dense(16, name="fc1")(x)
        y = unsupported(y)
        y = keras.layers.Dense(16, name="fc2")(y)
        y = keras.layers.ReLU(name="relu")(y)
    y = keras.layers.Dense(4, name="fc3")(y)
    model = keras.Model(x, y)
    # shift fc2's bias so that the ReLU clips about half of its outputs (it matters)
    kernel, bias = model.get_layer("fc2").get_weights()
    model.get_layer("fc2").set_weights([kernel, bias + rng.normal(0, 0.5, bias.shape)])
    return model


@pytest.mark.parametrize("unsupported", [
    lambda: keras.layers.UnitNormalization(name="norm"),  # no op in the registry
    lambda: keras.layers.Activation("log_softmax", name="log_softmax"),  # not elementwise
], ids=["UnitNormalization", "log_softmax"])
@pytest.mark.parametrize("pool", [False, True], ids=["relu", "maxpool-relu"])
def test_relu_after_an_unsupported_layer_is_kept(unsupported, pool):
    model = _model(unsupported(), pool)
    shape = (256, 6, 6, 2) if pool else (256, 8)
    samples = np.random.default_rng(1).normal(0, 1, shape).astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = fixedq.quantize(model, samples=samples, verbose=False)
    # fc2 runs after the unsupported layer, in float: the ReLU must stay, as a float layer
    assert not isinstance(qmodel.get_layer("fc2"), QuantizedNeuralLayer)
    assert type(qmodel.get_layer("relu")) is keras.layers.ReLU
    want = model.predict(samples, verbose=0)
    got = qmodel.predict(samples, verbose=0)
    # only fc1 and the input are quantized: the error is small against the value range
    # (without the ReLU it was as large as the values themselves)
    err = float(np.max(np.abs(got - want)))
    assert err < 0.05 * float(np.max(np.abs(want))), err


def test_relu_after_a_quantized_layer_still_fuses():
    x = keras.Input((8,), name="x")
    y = keras.layers.Dense(16, name="fc1")(x)
    y = keras.layers.ReLU(name="relu")(y)
    model = keras.Model(x, keras.layers.Dense(4, name="fc2")(y))
    samples = np.random.default_rng(1).normal(0, 1, (64, 8)).astype("float32")
    qmodel = fixedq.quantize(model, samples=samples, verbose=False)
    names = [layer.name for layer in qmodel.layers]
    assert "relu" not in names
    assert not qmodel.get_layer("fc1").output_spec.signed  # the ReLU is its output clip


def test_fallback_warning_names_the_setting_a_known_layer_cannot_take():
    inp = keras.Input((16, 3))
    h = keras.layers.Conv1D(4, 3, padding="causal", name="causal")(inp)
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    x = np.random.default_rng(0).normal(size=(32, 16, 3)).astype("float32")
    with pytest.warns(UserWarning, match=r"'causal' \(Conv1D\): Conv1D is not supported with "
                                         r"padding 'causal'; a Dequantizer"):
        fixedq.quantize(model, samples=x, verbose=False)
