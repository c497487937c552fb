"""Operator nodes (``x + y``, ``x * 0.5``, ``keras.ops.mean``, slicing, ...) in Keras 3
functional models: read into the graph as the equivalent layers, rebuilt with the same function,
saved and loaded; operations without a layer equivalent stay float with one warning."""

import re
import warnings

import keras
import numpy as np
import pytest
from keras import ops

import fixedq
import fixedq.engine as fe
from fixedq.layers.operators import OperationLayer
from fixedq.transforms.graph import build_model, read_graph

L = keras.layers


def _operator_model():
    x = keras.Input((4, 8), name="x")
    y = keras.Input((4, 8), name="y")
    outs = [ops.reshape(x, (-1, 32)), ops.transpose(x, (0, 2, 1)), ops.mean(x, axis=1),
            ops.mean(x, axis=1, keepdims=True), ops.concatenate([x, y], axis=-1), x[:, 0],
            x[:, -1], x[:, 1:3, ::2], ops.expand_dims(x, 1), ops.squeeze(ops.expand_dims(x, 1), 1),
            x + np.arange(32, dtype="float32").reshape((1, 4, 8)), x - y, x * y, x / 2.0, 2.0 - x,
            x + keras.Variable(np.ones((4, 8))), x * np.arange(8, dtype="float32"),
            ops.sigmoid(x)]
    return keras.Model([x, y], outs)


def test_operator_nodes_become_standard_layers():
    model = _operator_model()
    classes = [n.cls.__name__ for n in read_graph(model).nodes[2:]]
    assert classes == [
        "Reshape", "Permute", "GlobalAveragePooling1D", "GlobalAveragePooling1D", "Concatenate",
        "ExtractToken", "ExtractToken", "StridedSlice", "Reshape", "Reshape", "Reshape",
        "AddPositionEmbs", "Subtract", "Multiply", "Rescaling", "Rescaling", "AddPositionEmbs",
        "Rescaling", "Activation"]


def test_rebuilt_graph_computes_the_same_function_and_round_trips(tmp_path):
    model = _operator_model()
    rebuilt = build_model(read_graph(model))
    rng = np.random.default_rng(0)
    a, b = (rng.normal(size=(3, 4, 8)).astype("float32") for _ in range(2))
    want, got = model.predict([a, b], verbose=0), rebuilt.predict([a, b], verbose=0)
    for w, g in zip(want, got, strict=True):
        assert w.shape == g.shape
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)  # x / 2 is x * 0.5 here
    path = tmp_path / "rebuilt.keras"
    rebuilt.save(path)
    loaded = keras.saving.load_model(path)
    for g, h in zip(got, loaded.predict([a, b], verbose=0), strict=True):
        np.testing.assert_array_equal(g, h)


def _se_block_model():
    """A small squeeze-and-excitation CNN written with tensor operators, as users do."""
    x = keras.Input((8, 8, 3))
    f = L.Conv2D(6, 3, padding="same")(x * (1 / 127.5) - 1.0)
    s = ops.mean(f, axis=(1, 2), keepdims=True)
    s = L.ReLU(6.0)(L.Conv2D(6, 1)(s) + 3.0) * (1.0 / 6.0)  # hard sigmoid
    y = f * s
    y = ops.concatenate([y, f], axis=-1)
    y = ops.reshape(y, (-1, 8 * 8 * 12))
    return keras.Model(x, L.Dense(3)(y))


@pytest.mark.parametrize("qp", [
    fixedq.QuantizationParams(),
    fixedq.QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4,
                              per_tensor_activations=True),
    fixedq.QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4,
                              asymmetric_activations=True),
], ids=["8bit", "4bit_per_tensor", "4bit_asymmetric"])
def test_operator_model_is_integer_only_and_engine_exact(qp):
    model = _se_block_model()
    rng = np.random.default_rng(1)
    samples = rng.uniform(0, 255, (32, 8, 8, 3)).astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing falls back
        q = fixedq.quantize(model, qp, samples)
    kinds = {type(layer).__name__ for layer in q.layers}
    assert {"QuantizedMultiply", "QuantizedRescaling", "QuantizedGlobalAveragePooling2D",
            "QuantizedConcatenate", "QuantizedReshape"} <= kinds
    assert [type(layer).__name__ for layer in q.layers].count("Dequantizer") == 1
    x = np.concatenate([samples[:4], np.zeros((1, 8, 8, 3), "float32"),
                        np.full((1, 8, 8, 3), 255.0, "float32"),
                        rng.uniform(-1e4, 1e4, (2, 8, 8, 3)).astype("float32")])
    np.testing.assert_array_equal(fe.convert(q).predict(x), q.predict(x, verbose=0))
    if qp.activation_bits == 8:
        float_out = model.predict(samples[:8], verbose=0)
        err = np.abs(q.predict(samples[:8], verbose=0) - float_out).max()
        assert err < 0.1 * np.abs(float_out).max()


def test_unknown_operation_warns_once_and_computes_the_float_function():
    x = keras.Input((6,))
    h = L.Dense(5, name="fc1")(x)
    y = L.Dense(3, name="fc2")(ops.sin(h) * 2.0)
    model = keras.Model(x, y)
    rng = np.random.default_rng(2)
    samples = rng.normal(size=(64, 6)).astype("float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = fixedq.quantize(model, fixedq.QuantizationParams(), samples)
    stops = [str(w.message) for w in caught if "quantization stops" in str(w.message)]
    assert len(stops) == 1 and re.search(r"'sin(_\d+)?' \(OperationLayer\)", stops[0]), stops
    assert any(isinstance(layer, OperationLayer) for layer in q.layers)
    # from the Dequantizer on, the quantized model is the float model's function exactly
    d = keras.Model(q.inputs, q.get_layer("fc1_dequantizer").output).predict(samples, verbose=0)
    want = model.get_layer("fc2")(np.sin(d) * 2.0)
    np.testing.assert_allclose(q.predict(samples, verbose=0), want, rtol=1e-5, atol=1e-5)
    float_out = model.predict(samples, verbose=0)
    assert np.abs(q.predict(samples, verbose=0) - float_out).max() < 0.05 * np.abs(
        float_out).max()


def test_operation_layer_refuses_a_non_keras_module():
    with pytest.raises(ValueError, match="must be a Keras module"):
        OperationLayer({"module": "os", "class_name": "system", "config": {}},
                       {"args": [], "kwargs": {}})


def test_dynamic_spatial_size_is_pinned_not_a_crash():
    """``(None, None, 3)`` with asymmetric padding, a keepdims mean and a broadcast product:
    quantize pins the size-dependent mean to the samples' size (a warning naming it)."""
    x = keras.Input((None, None, 3))
    f = L.Conv2D(6, 3, strides=2)(L.ZeroPadding2D(((0, 1), (0, 1)))(x))
    y = f * L.Conv2D(6, 1)(ops.mean(f, axis=(1, 2), keepdims=True))
    model = keras.Model(x, L.GlobalAveragePooling2D()(y))
    samples = np.random.default_rng(3).uniform(0, 255, (16, 16, 16, 3)).astype("float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = fixedq.quantize(model, fixedq.QuantizationParams(), samples)
    pinned = [str(w.message) for w in caught if "dynamic dimensions" in str(w.message)]
    assert len(pinned) == 1 and re.search(r"'mean(_\d+)?'", pinned[0]), pinned
    assert tuple(q.inputs[0].shape) == (None, 16, 16, 3)
    np.testing.assert_array_equal(fe.convert(q).predict(samples[:4]),
                                  q.predict(samples[:4], verbose=0))


def test_subtract_of_tensors_is_quantized_as_add_of_a_negation():
    x = keras.Input((6,))
    a, b = L.Dense(4, name="fa")(x), L.Dense(4, name="fb")(x)
    model = keras.Model(x, L.Dense(2, name="out")(a - b))
    samples = np.random.default_rng(4).normal(size=(64, 6)).astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        q = fixedq.quantize(model, fixedq.QuantizationParams(), samples)
    names = [type(layer).__name__ for layer in q.layers]
    assert names.count("Dequantizer") == 1 and "QuantizedAdd" in names
    np.testing.assert_array_equal(fe.convert(q).predict(samples), q.predict(samples, verbose=0))
    float_out = model.predict(samples, verbose=0)
    assert np.abs(q.predict(samples, verbose=0) - float_out).max() < 0.05 * np.abs(
        float_out).max()
