"""tf-keras ``.h5`` files holding TFOpLambda / SlicingOpLambda nodes (``x + pos``,
``x * 0.5``, ``x[:, 0]``, ``tf.reduce_mean``, ``tf.concat``, ``tf.reshape``, ``tf.transpose``)
load with ``fixedq.load_model``, compute what tf-keras computes, and quantize to an
integer-only model that the engine runs bit-exactly."""

import warnings

import h5py
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import fixedq
import fixedq.engine as fe


def _tf_keras_model():
    x = tf_keras.Input((4, 8))
    d = tf_keras.layers.Dense(8)(x)
    pos = tf.constant(np.linspace(-1, 1, 32, dtype="float32").reshape(1, 4, 8))
    y = d + pos
    z = y * 0.5
    w = z + d
    s = w[:, 0]
    m = tf.reduce_mean(w, axis=1)
    c = tf.concat([s, m], axis=-1)
    r = tf.reshape(tf.transpose(w, (0, 2, 1)), (-1, 32))
    out = tf_keras.layers.Dense(3)(tf.concat([c, r], axis=-1))
    return tf_keras.Model(x, out)


def test_tf_op_lambda_h5_loads_and_quantizes_exactly(tmp_path):
    tk = _tf_keras_model()
    path = tmp_path / "tfop.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf-keras: "HDF5 is legacy"
        tk.save(path)
    with h5py.File(path) as f:
        assert b"TFOpLambda" in f.attrs["model_config"].encode() if isinstance(
            f.attrs["model_config"], str) else b"TFOpLambda" in f.attrs["model_config"]
    model = fixedq.load_model(path)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4, 8)).astype("float32")
    np.testing.assert_allclose(model.predict(x, verbose=0), tk.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # every node is quantized
        # per-tensor: a transpose moves the channel axis (per-axis frac_bits cannot follow)
        q = fixedq.quantize(model, fixedq.QuantizationParams(per_tensor_activations=True), x)
    names = [type(layer).__name__ for layer in q.layers]
    for kind in ("QuantizedAddPositionEmbs", "QuantizedRescaling", "QuantizedAdd",
                 "QuantizedExtractToken", "QuantizedGlobalAveragePooling1D",
                 "QuantizedConcatenate", "QuantizedPermute", "QuantizedReshape"):
        assert kind in names, (kind, names)
    probe = np.concatenate([x[:8], 50 * rng.normal(size=(4, 4, 8)).astype("float32")])
    np.testing.assert_array_equal(fe.convert(q).predict(probe), q.predict(probe, verbose=0))


def test_unsupported_tf_function_is_one_error_naming_the_node(tmp_path):
    x = tf_keras.Input((4,))
    y = tf_keras.layers.Dense(4)(tf.math.cumsum(x, axis=-1))
    path = tmp_path / "cumsum.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tf_keras.Model(x, y).save(path)
    with pytest.raises(ValueError, match=r"'tf\.math\.cumsum'.*'math\.cumsum'"):
        fixedq.load_model(path)
