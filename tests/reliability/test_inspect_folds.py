"""``inspect`` compares each quantized layer with the float function it replaces (issue 17).

With ``Rescaling(1/255) -> Conv2D -> BatchNormalization`` the first conv quantizes
``k * gamma / sqrt(var + eps) / 255``: the report's weight SNR must be measured against that
folded kernel (not the raw ``kernel`` 255 times larger, which gave 0 dB / 99.6 %).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import fixedq
from fixedq.analysis.inspection import inspect

L = keras.layers


@pytest.fixture(scope="module")
def models():
    rng = np.random.default_rng(0)
    x = keras.Input((12, 12, 3))
    y = L.Rescaling(1 / 255.0)(x)
    y = L.Conv2D(8, 3, padding="same", name="conv1")(y)
    y = L.BatchNormalization(name="bn1")(y)
    y = L.ReLU(name="relu1")(y)
    y = L.Conv2D(8, 3, name="conv2")(y)
    y = L.BatchNormalization(name="bn2")(y)
    y = L.ReLU(name="relu2")(y)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    model = keras.Model(x, L.Dense(4, name="fc")(y))
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.gamma.shape
            layer.set_weights([rng.uniform(0.5, 2, c), rng.normal(size=c),
                               rng.normal(size=c) * 0.1, rng.uniform(0.01, 0.1, c)])
    samples = rng.uniform(0, 255, size=(64, 12, 12, 3)).astype("float32")
    qmodel = fixedq.quantize(model, samples=samples, verbose=False)
    return model, qmodel, samples, inspect(model, qmodel, samples, verbose=False)


def _snr(ref, q):
    return 10 * np.log10(np.sum(ref**2) / np.sum((ref - q) ** 2))


def test_first_conv_weights_are_compared_after_the_folds(models):
    model, qmodel, _, report = models
    row = report.layer("conv1")
    assert row.weight_bits == 8
    assert row.weights.snr_db > 30, report.format_table()
    assert row.weights.rel_error < 0.03
    # independent check: the folded float kernel, computed from the float model by hand
    k = np.asarray(model.get_layer("conv1").kernel, np.float64)
    gamma, beta, mean, var = (np.asarray(w, np.float64)
                              for w in model.get_layer("bn1").get_weights())
    eps = model.get_layer("bn1").epsilon
    folded = k * gamma / np.sqrt(var + eps) / 255.0
    w_q, scale, *_ = qmodel.get_layer("conv1").quantized_weights()
    deq = np.asarray(w_q, np.float64) * np.asarray(scale, np.float64)
    np.testing.assert_allclose(row.weights.snr_db, _snr(folded, deq), atol=0.05)
    assert row.bias.snr_db > 30


def test_every_layer_is_meaningful(models):
    _, _, _, report = models
    for name in ("conv1", "conv2", "fc"):
        row = report.layer(name)
        assert row.weights.snr_db > 40 and row.weights.rel_error < 0.02, report.format_table()
    for row in report.layers:
        if row.activation is not None:
            assert row.activation.snr_db > 25, report.format_table()


def test_activation_reference_is_the_folded_float_function(models):
    """The reference of conv1 is the float Rescaling -> conv1 -> bn1 -> relu1 output."""
    model, qmodel, samples, report = models
    x = samples[:16]
    float_out = keras.Model(model.inputs, model.get_layer("relu1").output).predict(x, verbose=0)
    q_out = keras.Model(qmodel.inputs, qmodel.get_layer("conv1").output).predict(x, verbose=0)
    direct = _snr(np.asarray(float_out, np.float64), np.asarray(q_out, np.float64))
    assert direct > 30
    assert report.layer("conv1").reference == "relu1(conv1)"
    assert abs(report.layer("conv1").activation.snr_db - direct) < 3
