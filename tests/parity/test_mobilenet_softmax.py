"""keras.applications MobileNetV2 (alpha 0.35, 32 x 32, weights=None) with its final
``Activation("softmax")``: quantized integer-only end to end (nothing falls back to float) and
the engine bit-exact, softmax included (issue 13: the softmax used to fall back, so the engine
refused the whole model)."""

from __future__ import annotations

import warnings

import keras
import numpy as np

import fixedq
import fixedq.engine as fe
from fixedq.layers import Dequantizer, QuantizedSoftmax


def test_mobilenet_v2_is_integer_only_with_its_softmax():
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None,
                                           classes=10)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # non-trivial statistics and logits that differ per sample
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c),
                               rng.normal(0, 0.1, c), rng.uniform(0.5, 2.0, c)])
    x = rng.uniform(-1, 1, size=(8, 32, 32, 3)).astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no layer may fall back to float
        q = fixedq.quantize(model, samples=x, verbose=False)
    dequantizers = [layer for layer in q.layers if isinstance(layer, Dequantizer)]
    assert dequantizers == [q.layers[-1]]  # only at the output
    assert isinstance(q.layers[-2], QuantizedSoftmax)
    engine = fe.convert(q)
    assert engine.ops[-1].kind == "softmax"
    want = np.asarray(q(x))  # eager: tracing predict's graph would cost ~5x more here
    got = engine.predict(x)
    assert np.array_equal(want, got)
    np.testing.assert_allclose(want.sum(axis=1), 1.0, atol=10 / 256)
    ref = np.asarray(model(x))
    assert np.abs(want - ref).max() < 0.25  # random weights at 8 bits: close, not exact
