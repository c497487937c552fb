"""quantize / dump_config / QAT / unsupported paths with the transformer layers."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

import fixedq
from fixedq.layers.transformers import QuantizedAttention, QuantizedLayerMadNormalization
from fixedq.models.vit_adapt import build_vit

X = np.random.default_rng(0).normal(size=(48, 8, 8, 1)).astype("float32")
Y = np.random.default_rng(1).integers(0, 3, 48)


def _vit(**kw):
    return build_vit((8, 8, 1), patch=4, dim=8, heads=2, blocks=1, mlp_dim=8, num_classes=3,
                     rescale=None, **kw)


def test_quantize_kinds_and_config_round_trip():
    model = _vit()
    qmodel = fixedq.quantize(model, samples=X, verbose=False)
    types = {type(layer).__name__ for layer in qmodel.layers}
    assert {"QuantizedAttention", "QuantizedLayerMadNormalization", "QuantizedClassToken",
            "QuantizedAddPositionEmbs", "QuantizedExtractToken"} <= types
    cfg = fixedq.dump_config(qmodel)
    for name in ("b0_att", "b0_ln1", "cls", "pos"):
        assert "calibration" in cfg["layers"][name]
    again = fixedq.quantize(model, q_config=cfg, verbose=False)
    assert np.array_equal(again.predict(X, verbose=0), qmodel.predict(X, verbose=0))
    cfg["layers"]["b0_att"]["activation_bits"] = 6
    edited = fixedq.quantize(model, q_config=cfg, verbose=False)
    att = edited.get_layer("b0_att")
    assert isinstance(att, QuantizedAttention) and att.output_spec.value_bits == 5
    assert edited.get_layer("b0_ln1").output_spec == qmodel.get_layer("b0_ln1").output_spec


def test_model_not_mutated_and_float_weights_copied():
    model = _vit()
    before = [w.copy() for w in model.get_weights()]
    qmodel = fixedq.quantize(model, samples=X, verbose=False)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    ln = qmodel.get_layer("b0_ln1")
    assert isinstance(ln, QuantizedLayerMadNormalization)
    assert np.array_equal(ln.gamma.numpy(), model.get_layer("b0_ln1").gamma.numpy())
    assert np.array_equal(qmodel.get_layer("cls").token.numpy(),
                          model.get_layer("cls").token.numpy())


def test_qat_trains_transformer_parameters():
    model = _vit()
    qmodel = fixedq.quantize(model, fixedq.QuantizationParams(weight_bits=4), samples=X,
                             verbose=False)
    pos0 = qmodel.get_layer("pos").pos_embedding.numpy().copy()
    gamma0 = qmodel.get_layer("b0_ln1").gamma.numpy().copy()
    qmodel.compile(keras.optimizers.Adam(1e-2),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    hist = qmodel.fit(X, Y, epochs=2, batch_size=16, verbose=0)
    assert np.all(np.isfinite(hist.history["loss"]))
    assert not np.array_equal(qmodel.get_layer("pos").pos_embedding.numpy(), pos0)
    assert not np.array_equal(qmodel.get_layer("b0_ln1").gamma.numpy(), gamma0)
    # after training the forward pass is still on-grid and integer-only
    out = qmodel.get_layer("b0_att").output
    probe = keras.Model(qmodel.inputs, out)
    f = np.asarray(qmodel.get_layer("b0_att").output_spec.frac_bits)
    v = probe.predict(X, verbose=0) * 2.0**f
    assert np.array_equal(v, np.round(v))


def test_softmax_attention_is_quantized_to_the_integer_softmax():
    """Attention(softmax="softmax") has an integer path (eq. 30b): no warning, engine exact."""
    import fixedq.engine as fe

    model = _vit(softmax="softmax")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        qmodel = fixedq.quantize(model, samples=X, verbose=False)
    assert qmodel.get_layer("b0_att").softmax == "softmax"
    np.testing.assert_array_equal(fe.convert(qmodel).predict(X), qmodel.predict(X, verbose=0))


def test_build_vit_bad_sizes():
    with pytest.raises(ValueError, match="heads=3 does not divide dim=8"):
        build_vit((8, 8, 1), patch=4, dim=8, heads=3)
    with pytest.raises(ValueError, match="not a multiple of patch=3"):
        build_vit((8, 8, 1), patch=3)
