"""Rescaling folded into the next layer with weights: same float function, exact input ints."""

import keras
import numpy as np
import pytest

from fixedq import quantize
from fixedq.models.fold_rescaling import fold_rescaling
from fixedq.transforms.graph import build_model, read_graph

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("make, offset, folds", [
    (lambda: keras.layers.Conv2D(4, 3), [-1.0, 0.5, 2.0], True),
    (lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2), [-1.0, 0.5, 2.0], True),
    (lambda: keras.layers.Conv2D(4, 3, padding="same"), 0.0, True),
    (lambda: keras.layers.Conv2D(4, 3, padding="same"), -1.0, False),  # padding sees offset
])
def test_fold_preserves_function(make, offset, folds):
    x = keras.Input((6, 6, 3))
    y = make()(keras.layers.Rescaling([0.1, 0.2, 0.3], offset=offset, name="r")(x))
    model = keras.Model(x, y)
    graph = read_graph(model)
    assert fold_rescaling(graph) == (["r"] if folds else [])
    xs = RNG.uniform(0, 255, (4, 6, 6, 3)).astype("float32")
    ref = model.predict(xs, verbose=0)
    np.testing.assert_allclose(build_model(graph).predict(xs, verbose=0), ref,
                               atol=1e-6 * np.abs(ref).max())


def test_quantize_keeps_uint8_pixels_exact():
    x = keras.Input((8, 8, 1), name="img")
    h = keras.layers.Rescaling(1 / 255, name="rescale")(x)
    model = keras.Model(x, keras.layers.Dense(3, name="fc")(keras.layers.Flatten()(
        keras.layers.Conv2D(4, 3, name="conv")(h))))
    xs = RNG.integers(0, 256, (64, 8, 8, 1)).astype("float32")
    q = quantize(model, samples=xs, verbose=False)
    names = [type(ly).__name__ for ly in q.layers]
    assert "QuantizedRescaling" not in names
    iq = q.get_layer("img_quantizer")
    assert iq.output_spec.frac_bits == (0,) and not iq.output_spec.signed
    probe = keras.Model(q.inputs, iq.output)
    assert np.array_equal(probe.predict(xs, verbose=0), xs)  # 0..255 pass unchanged
