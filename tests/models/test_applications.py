"""keras.applications networks (random weights, small inputs) come out integer-only and run
bit-exactly in the engine: ResNet50 (its ZeroPadding2D(3) before a stride-2 valid conv is not
foldable into 'same' and becomes a pad op), EfficientNetB0 and MobileNetV3Small
(squeeze-and-excitation gates as Multiply ops)."""

import time
import warnings

import keras
import numpy as np
import pytest

import fixedq
import fixedq.engine as fe


def _images(n, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, 32, 32, 3)).astype("float32")


def _integer_only(model):
    """8-bit quantize with no float fallback (a fallback warning fails the test); the
    quantized model and its layer class names (one Dequantizer, at the end)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        q = fixedq.quantize(model, fixedq.QuantizationParams(), _images(4))
    names = [type(layer).__name__ for layer in q.layers]
    assert names.count("Dequantizer") == 1 and names[-1] == "Dequantizer"
    return q, names


def _assert_engine_exact(q):
    """The engine equals quantized Keras on a random image and an all-zero one."""
    x = np.concatenate([_images(1, seed=1), np.zeros((1, 32, 32, 3), "float32")])
    np.testing.assert_array_equal(fe.convert(q).predict(x), q.predict(x, verbose=0))


@pytest.mark.parametrize("name", ["ResNet50", "EfficientNetB0"])
def test_application_is_integer_only_and_engine_exact(name):
    start = time.perf_counter()
    model = getattr(keras.applications, name)(input_shape=(32, 32, 3), weights=None,
                                              classifier_activation=None)
    q, names = _integer_only(model)
    if name == "ResNet50":  # ZeroPadding2D(3) before the 7x7 stride-2 conv: not 'same'
        assert "QuantizedZeroPadding" in names
    else:  # squeeze-and-excitation: sigmoid table -> Multiply (its paddings fold into 'same')
        assert names.count("QuantizedMultiply") == 16
    _assert_engine_exact(q)
    print(f"{name}: {time.perf_counter() - start:.1f} s")


def test_mobilenet_v3_small_squeeze_excitation_is_integer_only_and_engine_exact():
    """MobileNetV3Small: hard-sigmoid written with operators (ReLU6(x + 3) * 1/6, read as
    Rescaling/ReLU/Rescaling), squeeze-and-excitation gates (GlobalAveragePooling2D(keepdims)
    -> Conv -> hard-sigmoid -> Multiply), hard-swish tables, asymmetric ZeroPadding2D, and the
    final Activation(None) ('linear'), an identity that passes the logits' integers through
    (not a table, not a float layer): the whole model is integer-only."""
    model = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), weights=None,
                                                classifier_activation=None)
    q, names = _integer_only(model)
    assert names.count("QuantizedMultiply") == 9  # the SE gates; hard-swish is a table
    predictions = q.get_layer("predictions")
    assert type(predictions).__name__ == "QuantizedDropout"  # the identity op
    assert predictions.output_spec == predictions.input_specs[0]
    engine = fe.convert(q)
    assert [op.kind for op in engine.ops if op.name == "predictions"] == ["identity"]
    _assert_engine_exact(q)
