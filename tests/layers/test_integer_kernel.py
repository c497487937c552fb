"""The weight quantizer holds chosen integers (``kernel_offset``): exact, saved, trained, engine."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import fixedq.engine as fe
from fixedq import QuantizationParams, load_model, quantize, save_model
from fixedq.layers.neural import QuantizedNeuralLayer

QP4 = QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=8)


def _model():
    keras.utils.set_random_seed(7)
    inp = keras.Input((8, 8, 3), name="img")
    h = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv")(inp)
    h = keras.layers.DepthwiseConv2D(3, activation="relu", name="dw")(h)
    h = keras.layers.Flatten()(h)
    out = keras.layers.Dense(5, name="fc")(h)
    return keras.Model(inp, out)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.random((64, 8, 8, 3)).astype("float32"), rng.integers(0, 5, 64)


def _neural(q):
    return [ly for ly in q.layers if isinstance(ly, QuantizedNeuralLayer)]


def _choose(layer, rng):
    """Random integers in [-qmax, qmax], with both extremes and many non-nearest values."""
    qmax = layer.qmax
    w_q = rng.integers(-qmax, qmax + 1, tuple(layer.kernel.shape))
    flat = w_q.reshape(-1)
    flat[0], flat[-1] = qmax, -qmax
    return w_q


@pytest.fixture()
def held(data):
    q = quantize(_model(), QP4, samples=data[0], verbose=False)
    rng = np.random.default_rng(1)
    chosen = {}
    for layer in _neural(q):
        scale = np.asarray(layer.quantized_weights()[1])
        w_q = _choose(layer, rng)
        layer.set_integer_kernel(w_q)
        assert np.array_equal(np.asarray(layer.quantized_weights()[1]), scale)  # scale kept
        chosen[layer.name] = w_q
    return q, chosen


def test_chosen_integers_are_held_exactly_and_the_engine_agrees(held, data):
    q, chosen = held
    for layer in _neural(q):
        w_q = chosen[layer.name]
        assert np.array_equal(layer.integer_kernel(), w_q)
        assert np.any(layer.nearest_integer_kernel() != w_q)  # not what rounding would pick
        assert np.array_equal(layer.integer_params()["kernel"], w_q)
        assert {int(w_q.max()), int(w_q.min())} == {layer.qmax, -layer.qmax}
    x = data[0][:32]
    assert np.array_equal(fe.convert(q).predict(x, batch_size=32), q.predict(x, verbose=0))


def test_bad_integers_are_rejected(held):
    layer = _neural(held[0])[0]
    with pytest.raises(ValueError, match="values must be in"):
        layer.set_integer_kernel(np.full(tuple(layer.kernel.shape), layer.qmax + 1))
    with pytest.raises(ValueError, match="must be integers of shape"):
        layer.set_integer_kernel(np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="must be integers of shape"):
        layer.set_integer_kernel(np.full(tuple(layer.kernel.shape), 0.5))


def test_save_load_and_config_round_trip(held, data, tmp_path):
    q, chosen = held
    x = data[0][:32]
    want = q.predict(x, verbose=0)
    path = str(tmp_path / "held.keras")
    save_model(q, path)
    again = load_model(path)
    assert np.array_equal(again.predict(x, verbose=0), want)
    for layer in _neural(again):
        assert np.array_equal(layer.integer_kernel(), chosen[layer.name])
    clone = keras.Model.from_config(q.get_config())
    clone.set_weights(q.get_weights())
    assert np.array_equal(clone.predict(x, verbose=0), want)


def test_weight_lists_without_the_offset_still_load(held, data, tmp_path):
    q, _ = held
    layer = _neural(q)[0]
    kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
    layer.set_weights([kernel, bias])  # the pre-offset weight list: offset back to zero
    assert not np.any(layer.kernel_offset.numpy())
    assert np.array_equal(layer.integer_kernel(), layer.nearest_integer_kernel())
    store = {"0": kernel, "1": bias}  # a pre-offset .keras variable store
    layer.set_integer_kernel(_choose(layer, np.random.default_rng(3)))
    layer.load_own_variables(store)
    assert not np.any(layer.kernel_offset.numpy())


def test_fit_trains_the_latent_kernel_keeps_offsets_and_stays_bit_exact(held, data):
    q, chosen = held
    x, y = data
    before = {ly.name: (ly.kernel.numpy().copy(), ly.kernel_offset.numpy().copy())
              for ly in _neural(q)}
    q.compile(keras.optimizers.Adam(1e-2),
              keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    q.fit(x, y, epochs=1, batch_size=32, verbose=0)
    for layer in _neural(q):
        kernel, offset = before[layer.name]
        assert not np.array_equal(layer.kernel.numpy(), kernel)  # straight-through gradient
        assert np.array_equal(layer.kernel_offset.numpy(), offset)  # not trainable
        want = np.clip(layer.nearest_integer_kernel() + offset, -layer.qmax, layer.qmax)
        assert np.array_equal(layer.integer_kernel(), want)
    xt = x[:32]
    assert np.array_equal(fe.convert(q).predict(xt, batch_size=32), q.predict(xt, verbose=0))
