"""sanitize splits Keras MultiHeadAttention into Dense q/k/v + Attention(softmax) + Dense (the
same float function); calls it cannot split stay float with a warning naming why; the split
attention quantizes to the integer softmax attention (eq. 30b), engine bit-exact."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

import fixedq
import fixedq.engine as fe
from fixedq.layers.transformers import Attention, QuantizedAttention
from fixedq.transforms import sanitize

L = keras.layers


def _tokens(n=16, shape=(6, 8), seed=0):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype("float32")


@pytest.mark.parametrize("make", [
    lambda: L.MultiHeadAttention(2, 4, name="mha"),
    lambda: L.MultiHeadAttention(3, 5, use_bias=False, name="mha"),  # width 15 != 8 channels
    lambda: L.MultiHeadAttention(2, 4, dropout=0.3, name="mha"),
])
@pytest.mark.parametrize("cross", [False, True])
def test_split_is_the_same_function(make, cross):
    x = keras.Input((6, 8))
    y = L.Dense(8, name="fc")(x)
    mha = make()
    out = mha(query=y, value=x, key=y) if cross else mha(y, y)
    model = keras.Model(x, out)
    for w in model.weights:  # non-trivial biases
        w.assign(np.random.default_rng(1).normal(size=w.shape).astype("float32") * 0.5)
    new, report = sanitize(model)
    assert [c.rewrite for c in report].count("split_attention") == 1
    assert not any(isinstance(ly, L.MultiHeadAttention) for ly in new.layers)
    att = [ly for ly in new.layers if isinstance(ly, Attention)]
    assert len(att) == 1 and att[0].softmax == "softmax"
    x = _tokens()
    np.testing.assert_allclose(new.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("make,call,why", [
    (lambda: L.MultiHeadAttention(2, 4, value_dim=2, name="mha"), lambda m, y: m(y, y),
     "value_dim 2 != key_dim 4"),
    (lambda: L.MultiHeadAttention(2, 4, name="mha"),
     lambda m, y: m(y, y, use_causal_mask=True), "a mask"),
    (lambda: L.MultiHeadAttention(2, 4, output_shape=(5,), name="mha"), lambda m, y: m(y, y),
     "output_shape"),
])
def test_calls_that_cannot_be_split_stay_float_with_the_reason(make, call, why):
    x = keras.Input((6, 8))
    y = L.Dense(8, name="fc")(x)
    model = keras.Model(x, L.Dense(2, name="head")(L.Flatten()(call(make(), y))))
    samples = _tokens()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = fixedq.quantize(model, fixedq.QuantizationParams(), samples)
    stops = [str(w.message) for w in caught if "quantization stops" in str(w.message)]
    assert len(stops) == 1 and "'mha' (MultiHeadAttention)" in stops[0] and why in stops[0]
    ref = model.predict(samples, verbose=0)
    assert np.abs(q.predict(samples, verbose=0) - ref).max() < 0.1 * np.abs(ref).max()


def test_integer_softmax_attention_is_close_to_float_and_engine_exact(tmp_path):
    x = keras.Input((10, 16))
    y = L.Dense(16, name="fc")(x)
    model = keras.Model(x, L.MultiHeadAttention(4, 4, name="mha")(y, y))
    samples = _tokens(64, (10, 16), seed=3)
    q = fixedq.quantize(model, fixedq.QuantizationParams(), samples)
    layer = q.get_layer("mha")
    assert isinstance(layer, QuantizedAttention) and layer.softmax == "softmax"
    engine = fe.convert(q)
    assert "attention_softmax" in {op.kind for op in engine.ops}
    probe = np.concatenate([samples[:8], np.zeros_like(samples[:1]),
                            np.full_like(samples[:1], 50.0), np.full_like(samples[:1], -50.0)])
    np.testing.assert_array_equal(engine.predict(probe), q.predict(probe, verbose=0))
    ref = model.predict(samples, verbose=0)
    err = np.abs(q.predict(samples, verbose=0) - ref).max() / np.abs(ref).max()
    assert err < 0.05, err
    path = tmp_path / "mha.keras"
    q.save(path)
    again = fixedq.load_model(path)
    np.testing.assert_array_equal(again.predict(probe, verbose=0), q.predict(probe, verbose=0))
