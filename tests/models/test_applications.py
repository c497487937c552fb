"""keras.applications networks (random weights, small inputs) come out integer-only and run
bit-exactly in the engine: ResNet50 (its ZeroPadding2D(3) before a stride-2 valid conv is not
foldable into 'same' and becomes a pad op)."""

import time
import warnings

import keras
import numpy as np
import pytest

import fixedq
import fixedq.engine as fe


def _images(n, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, 32, 32, 3)).astype("float32")


@pytest.mark.parametrize("name", ["ResNet50"])
def test_application_is_integer_only_and_engine_exact(name):
    start = time.perf_counter()
    model = getattr(keras.applications, name)(input_shape=(32, 32, 3), weights=None,
                                              classifier_activation=None)
    samples = _images(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing falls back to float
        q = fixedq.quantize(model, fixedq.QuantizationParams(), samples)
    names = [type(layer).__name__ for layer in q.layers]
    assert names.count("Dequantizer") == 1 and names[-1] == "Dequantizer"
    assert "QuantizedZeroPadding" in names
    x = np.concatenate([_images(1, seed=1), np.zeros((1, 32, 32, 3), "float32")])
    np.testing.assert_array_equal(fe.convert(q).predict(x), q.predict(x, verbose=0))
    print(f"{name}: {time.perf_counter() - start:.1f} s")
