"""Transformer layers, Keras vs integer engine, bit for bit (np.array_equal).

Small ViTs (Conv2D patches, ClassToken, AddPositionEmbs, LayerMadNormalization, Dense q/k/v,
Attention with the integer shiftmax, residual Adds, ExtractToken) at several bit widths, a
standalone Shiftmax, extreme inputs, the event path and a .fqe round trip.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import fixedq
import fixedq.engine as fe
from fixedq.layers.params import QuantizationParams
from fixedq.layers.transformers import (
    AddPositionEmbs,
    ClassToken,
    LayerMadNormalization,
    Shiftmax,
)
from fixedq.models.vit_adapt import build_vit

QP = {"q8": QuantizationParams(),
      "w4a8": QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=8),
      "q4t": QuantizationParams(weight_bits=4, activation_bits=4, per_tensor_activations=True),
      "q8t": QuantizationParams(per_tensor_activations=True),
      # asymmetric windows on the signed tensors (projections, residual sums, MAD norm, logits)
      "a8": QuantizationParams(asymmetric_activations=True),
      "a4": QuantizationParams(weight_bits=4, activation_bits=4, asymmetric_activations=True)}


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, (ClassToken, AddPositionEmbs)):
            layer.set_weights([rng.normal(size=w.shape) * 0.5 for w in layer.weights])
        if isinstance(layer, LayerMadNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(-1.5, 1.5, c), rng.normal(size=c) * 0.3])
    return model


def _parity(model, x, qparams, tmp_path=None):
    qmodel = fixedq.quantize(model, qparams, samples=x, verbose=False)
    engine = fe.convert(qmodel)
    want = qmodel.predict(x, verbose=0, batch_size=16)
    got = engine.predict(x, batch_size=7)
    bad = int(np.count_nonzero(want != got))
    assert bad == 0, f"{bad} of {want.size} differ"
    assert np.array_equal(engine.predict(x, mode="event", batch_size=32), want)
    if tmp_path is not None:
        engine.save(tmp_path / "vit.fqe")
        assert np.array_equal(fe.load(tmp_path / "vit.fqe").predict(x), want)
    return qmodel, engine, want


@pytest.mark.parametrize("qp", sorted(QP))
def test_vit_parity(qp, tmp_path):
    model = _randomize(build_vit((16, 16, 1), patch=4, dim=16, heads=2, blocks=2, mlp_dim=24,
                                 num_classes=5, rescale=None))
    x = np.random.default_rng(1).normal(size=(40, 16, 16, 1)).astype("float32")
    qmodel, engine, _ = _parity(model, x, QP[qp], tmp_path if qp == "q8" else None)
    kinds = {op.kind for op in engine.ops}
    assert {"attention", "madnorm", "class_token", "add_pos", "extract_token"} <= kinds


def test_vit_parity_extreme_inputs():
    model = _randomize(build_vit((8, 8, 3), patch=4, dim=8, heads=4, blocks=1, mlp_dim=8,
                                 num_classes=3, rescale=None), seed=3)
    rng = np.random.default_rng(2)
    calib = rng.normal(size=(32, 8, 8, 3)).astype("float32")
    # far outside the calibrated range: everything saturates somewhere, still bit-exact
    x = np.concatenate([calib, 50 * np.sign(calib), np.zeros_like(calib[:4]),
                        np.full_like(calib[:4], 1e4)])
    qmodel = fixedq.quantize(model, QP["q8"], samples=calib, verbose=False)
    engine = fe.convert(qmodel)
    assert np.array_equal(engine.predict(x), qmodel.predict(x, verbose=0))


def test_standalone_shiftmax_and_tokens_parity():
    x = keras.Input((6, 10))
    h = keras.layers.Dense(10)(x)
    h = Shiftmax()(h)
    h = keras.layers.Dense(4)(h)
    model = keras.Model(x, h)
    xs = (np.random.default_rng(4).normal(size=(50, 6, 10)) * 3).astype("float32")
    _, engine, _ = _parity(model, xs, QP["q8"])
    assert "shiftmax" in {op.kind for op in engine.ops}


def test_keras_save_load_bit_identical(tmp_path):
    model = _randomize(build_vit((8, 8, 1), patch=4, dim=8, heads=2, blocks=1, mlp_dim=8,
                                 num_classes=3, rescale=None))
    x = np.random.default_rng(5).normal(size=(20, 8, 8, 1)).astype("float32")
    qmodel = fixedq.quantize(model, QP["w4a8"], samples=x, verbose=False)
    path = tmp_path / "q.keras"
    qmodel.save(path)
    again = keras.saving.load_model(path)
    want = qmodel.predict(x, verbose=0)
    assert np.array_equal(again.predict(x, verbose=0), want)
    assert np.array_equal(fe.convert(again).predict(x), want)
