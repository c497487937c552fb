"""The ops added through the registry (AveragePooling2D, Conv1D, GlobalAveragePooling1D):
Keras vs engine bit for bit over geometries, bit widths, asymmetric windows and inputs far
beyond the calibrated range (the shared harness checks one model each; this adds variety)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from test_parity import QPARAMS, _samples, _seq, check_parity

import fixedq
from fixedq.layers.params import QuantizationParams
from fixedq.layers.pooling import pool_counts

L = keras.layers
A8 = QuantizationParams(asymmetric_activations=True)


def _extreme(x):
    return np.concatenate([x, 40 * np.sign(x), np.full_like(x[:2], 1e9),
                           np.full_like(x[:2], -1e9)]).astype("float32")


@pytest.mark.parametrize("qp", ["q8", "q4", "q4t"])
@pytest.mark.parametrize("pool,strides,padding", [
    (2, None, "valid"), (3, 2, "valid"), (3, 1, "same"), (2, 3, "same"), ((3, 2), (2, 1), "same")])
def test_average_pooling2d(qp, pool, strides, padding):
    model = _seq((7, 9, 3), [L.Conv2D(6, 3, padding="same"), L.ReLU(),
                             L.AveragePooling2D(pool, strides, padding=padding),
                             L.Conv2D(4, 1)])
    x = _samples((7, 9, 3), n=24)
    check_parity(model, _extreme(x), QPARAMS[qp], calib=x, events=qp == "q8")


def test_average_pooling2d_signed_and_asymmetric():
    # a signed input (no ReLU before it), then an asymmetric window after a BN
    model = _seq((8, 8, 3), [L.Conv2D(5, 3, padding="same"),
                             L.AveragePooling2D(3, 2, padding="same"),
                             L.BatchNormalization(), L.AveragePooling2D(2), L.Flatten(),
                             L.Dense(3)])
    x = _samples((8, 8, 3), n=24)
    for qp in (QuantizationParams(), A8):
        check_parity(model, _extreme(x), qp, calib=x, events=False)


def test_pool_counts_match_tensorflow():
    ones = np.ones((1, 5, 7, 1), "float32")
    for pool, strides in (((3, 3), (2, 2)), ((2, 4), (1, 3)), ((4, 2), (3, 1))):
        sums = keras.ops.convert_to_numpy(keras.ops.conv(
            ones, np.ones((*pool, 1, 1), "float32"), strides, "same"))[0, :, :, 0]
        assert np.array_equal(pool_counts((5, 7), pool, strides, "same"), sums)


@pytest.mark.parametrize("qp", ["q8", "q4", "q4t"])
def test_conv1d_variants(qp, tmp_path):
    model = _seq((20, 3), [L.Conv1D(8, 3, padding="same"), L.ReLU(),
                           L.Conv1D(8, 3, dilation_rate=2), L.ReLU(),
                           L.Conv1D(6, 4, strides=3, padding="same", use_bias=False),
                           L.GlobalAveragePooling1D(), L.Dense(4)])
    x = _samples((20, 3), n=24)
    check_parity(model, _extreme(x), QPARAMS[qp], calib=x, tmp_path=tmp_path)


def test_conv1d_asymmetric_input_and_dynamic_steps():
    # an asymmetric window into a 'same' Conv1D: its zero-padded border folds a bias map
    model = _seq((12, 4), [L.Conv1D(6, 3), L.BatchNormalization(),
                           L.Conv1D(5, 3, padding="same"), L.GlobalAveragePooling1D()])
    x = _samples((12, 4), n=24)
    check_parity(model, _extreme(x), A8, calib=x, events=False)
    dyn = _seq((None, 4), [L.Conv1D(6, 3, padding="same"), L.ReLU(), L.Conv1D(3, 2)])
    qmodel = fixedq.quantize(dyn, samples=x, verbose=False)
    engine = fixedq.engine.convert(qmodel)
    for steps in (5, 17):
        xs = _samples((steps, 4), n=6, seed=steps)
        assert np.array_equal(engine.predict(xs), qmodel.predict(xs, verbose=0))


def test_new_ops_fall_back_with_reason():
    model = _seq((12, 4), [L.Conv1D(6, 3, padding="causal"), L.GlobalAveragePooling1D()])
    with pytest.warns(UserWarning, match="Conv1D"):
        qmodel = fixedq.quantize(model, samples=_samples((12, 4), n=8), verbose=False)
    assert [type(layer).__name__ for layer in qmodel.layers][-2:] == [
        "Conv1D", "GlobalAveragePooling1D"]  # float from the causal Conv1D on
