"""tf-keras defines ``hard_sigmoid`` as ``clip(0.2 x + 0.5, 0, 1)``; Keras 3 reads the same name
as ``relu6(x + 3) / 6``. A tf-keras file loaded by ``fixedq.load_model`` keeps tf-keras'
function (bit-identical float outputs), quantizes it as an integer table of that function,
and the engine runs it bit-exactly."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import fixedq
import fixedq.engine as fe
from fixedq.layers.table import QuantizedActivation


def _tf_keras_model():
    tf_keras.utils.set_random_seed(0)  # tf-keras' own initializers (conftest seeds Keras 3)
    L = tf_keras.layers
    x = tf_keras.Input((6, 6, 2))
    a = L.Activation("hard_sigmoid", name="act_hs")(L.Conv2D(4, 3, name="conv")(x))
    b = L.Conv2D(3, 1, activation="hard_sigmoid", name="conv_hs")(a)
    y = L.Dense(5, activation="hard_sigmoid", name="dense_hs")(L.Flatten()(b))
    return tf_keras.Model(x, y)


def _inputs(rng):
    # conv outputs over the whole knee region of both definitions (-3..3 and -2.5..2.5)
    return (rng.normal(size=(48, 6, 6, 2)) * 2).astype("float32")


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_tf_keras_hard_sigmoid_keeps_its_definition(tmp_path, suffix):
    tk = _tf_keras_model()
    path = tmp_path / f"hs{suffix}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf-keras: "HDF5 is legacy"
        tk.save(path)
    model = fixedq.load_model(path)
    x = _inputs(np.random.default_rng(0))
    want = tk.predict(x, verbose=0)
    np.testing.assert_array_equal(model.predict(x, verbose=0), want)  # bit-identical
    if suffix == ".h5":  # Keras 3 alone loads the file silently with its own hard_sigmoid
        naive = keras.saving.load_model(path, compile=False)
        # (the two definitions differ by up to 0.083; through the layers, less)
        assert np.abs(naive.predict(x, verbose=0) - want).max() > 0.01
    # the float model survives a Keras 3 .keras round trip with the tf-keras function
    again = tmp_path / "again.keras"
    fixedq.save_model(model, again)
    np.testing.assert_array_equal(fixedq.load_model(again).predict(x, verbose=0), want)


@pytest.mark.parametrize("qp", [{}, {"activation_bits": 4, "per_tensor_activations": True}],
                         ids=["8bit", "4bit"])
def test_tf_keras_hard_sigmoid_quantizes_to_its_table_bit_exact(tmp_path, qp):
    tk = _tf_keras_model()
    path = tmp_path / "hs.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tk.save(path)
    model = fixedq.load_model(path)
    rng = np.random.default_rng(1)
    x = _inputs(rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no float fallback anywhere
        q = fixedq.quantize(model, fixedq.QuantizationParams(**qp), x)
    tables = [layer for layer in q.layers if isinstance(layer, QuantizedActivation)]
    assert [t.function for t in tables] == ["tf_keras_hard_sigmoid"] * 3
    # worst-case magnitudes: saturated inputs on both sides, zeros, and the calibration set
    probe = np.concatenate([x, 60 * x[:8], -60 * x[:8], np.zeros_like(x[:2])])
    yq = q.predict(probe, verbose=0)
    np.testing.assert_array_equal(fe.convert(q).predict(probe), yq)
    # every table holds tf-keras' function (within 1/2 LSB), not Keras 3's
    for layer in tables:
        p = layer.integer_params()
        lo, hi = layer.input_spec0.int_bounds()
        v = np.arange(lo, hi + 1)
        f, g = int(p["in_frac"][0]), int(p["out_frac"][0])
        x_grid = np.ldexp(v.astype(np.float64), -f)
        got = p["table"][v + p["base"][0]] * 2.0**-g
        bounds = (float(np.min(p["out_lo"])) * 2.0**-g, float(np.max(p["out_hi"])) * 2.0**-g)
        tfk = np.clip(tf_keras.activations.hard_sigmoid(tf.constant(x_grid)).numpy(), *bounds)
        k3 = np.clip(np.asarray(keras.activations.hard_sigmoid(x_grid)), *bounds)
        assert np.abs(got - tfk).max() <= 0.5 * 2.0**-g + 1e-9, layer.name
        assert np.any(np.floor(k3 * 2.0**g + 0.5) != got * 2.0**g), layer.name  # another table
    saved = tmp_path / "q.keras"
    fixedq.save_model(q, saved)
    np.testing.assert_array_equal(fixedq.load_model(saved).predict(probe, verbose=0), yq)


@pytest.mark.parametrize("name", ["model.h5", "model.hdf", "model"])
def test_keras3_hard_sigmoid_is_left_alone_whatever_the_file_name(tmp_path, name):
    """A Keras 3 HDF5 file keeps Keras 3's relu6(x+3)/6 under any name (the tf-keras rewrite
    applies to tf-keras files only)."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Activation("hard_sigmoid")])
    model.save(tmp_path / "k3.h5")
    path = tmp_path / name
    (tmp_path / "k3.h5").rename(path)
    x = np.array([[-4.0], [-1.0], [0.0], [2.0], [4.0]], "float32")
    got = fixedq.load_model(path).predict(x, verbose=0)
    np.testing.assert_array_equal(got, model.predict(x, verbose=0))
    np.testing.assert_allclose(got[3], [5.0 / 6.0], rtol=1e-6)  # not tf-keras' 0.9
