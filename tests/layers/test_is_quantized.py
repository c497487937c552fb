"""One "is this model quantized" check: fixedq.is_quantized (used by check/inspect/qat/CLI)."""

import keras
import numpy as np

import fixedq
from fixedq.analysis.lint import is_quantized as lint_is_quantized
from fixedq.layers.base import is_quantized, is_quantized_layer


def test_float_and_quantized_models():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc")])
    q = fixedq.quantize(model, samples=np.random.rand(16, 4).astype("float32"), verbose=False)
    assert fixedq.is_quantized is is_quantized
    assert not is_quantized(model) and not lint_is_quantized(model)
    assert is_quantized(q) and lint_is_quantized(q)
    assert is_quantized_layer(q.get_layer("fc")) and not is_quantized_layer(model.get_layer("fc"))
