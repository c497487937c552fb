"""adapt_vit: standard Keras ViT (MultiHeadAttention, LayerNormalization, Softmax) -> fixedq."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import fixedq
import fixedq.engine as fe
from fixedq.layers.transformers import Attention, LayerMadNormalization, Shiftmax
from fixedq.models.vit_adapt import adapt_vit, build_vit

X = np.random.default_rng(0).normal(size=(24, 8, 8, 1)).astype("float32")


def _standard():
    return build_vit((8, 8, 1), patch=4, dim=8, heads=2, blocks=1, mlp_dim=8, num_classes=3,
                     standard=True, rescale=None)


def test_adapt_is_exact_with_softmax_and_layernorm_kept():
    model = _standard()
    adapted = adapt_vit(model, softmax="softmax", norm="keep")
    assert any(isinstance(layer, Attention) for layer in adapted.layers)
    assert not any(isinstance(layer, keras.layers.MultiHeadAttention) for layer in adapted.layers)
    np.testing.assert_allclose(adapted.predict(X, verbose=0), model.predict(X, verbose=0),
                               atol=1e-5)


def test_adapt_default_is_quantizable_and_engine_exact():
    model = _standard()
    adapted = adapt_vit(model)
    assert sum(isinstance(layer, LayerMadNormalization) for layer in adapted.layers) == 3
    ln = model.get_layer("b0_ln1")
    np.testing.assert_allclose(adapted.get_layer("b0_ln1").gamma.numpy(),
                               ln.gamma.numpy() * np.sqrt(2 / np.pi), rtol=1e-6)
    qmodel = fixedq.quantize(adapted, samples=X, verbose=False)
    assert np.array_equal(fe.convert(qmodel).predict(X), qmodel.predict(X, verbose=0))


def test_softmax_layer_becomes_shiftmax():
    x = keras.Input((4, 6))
    model = keras.Model(x, keras.layers.Softmax(name="sm")(keras.layers.Dense(6)(x)))
    assert isinstance(adapt_vit(model).get_layer("sm"), Shiftmax)


@pytest.mark.parametrize("kwargs, match", [({"softmax": "exp"}, "'exp'"),
                                           ({"norm": "batch"}, "'batch'")])
def test_adapt_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        adapt_vit(_standard(), **kwargs)


def test_adapt_rejects_value_dim_mismatch():
    x = keras.Input((5, 8))
    y = keras.layers.MultiHeadAttention(2, 4, value_dim=3, name="mha")(x, x)
    with pytest.raises(ValueError, match="value_dim=3 != key_dim=4"):
        adapt_vit(keras.Model(x, y))


def test_short_finetune_recovers_accuracy_after_adapt():
    """Train a standard Keras ViT on real digits, adapt it (Shiftmax + MAD norm), fine-tune one
    epoch: the adapted model gets back to within 3 points of the original."""
    from sklearn.datasets import load_digits

    keras.utils.set_random_seed(0)
    d = load_digits()
    x = (d.images / 16.0).astype("float32")[..., None]
    y = d.target
    xtr, ytr, xte, yte = x[:1400], y[:1400], x[1400:], y[1400:]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = build_vit((8, 8, 1), patch=2, dim=16, heads=2, blocks=1, mlp_dim=32,
                      num_classes=10, standard=True, rescale=None)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss)
    model.fit(xtr, ytr, epochs=15, batch_size=32, verbose=0)
    acc = lambda m: float(np.mean(np.argmax(m.predict(xte, verbose=0), 1) == yte))  # noqa: E731
    base = acc(model)
    assert base > 0.8
    adapted = adapt_vit(model)
    adapted.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    adapted.fit(xtr, ytr, epochs=1, batch_size=32, verbose=0)
    assert acc(adapted) >= base - 0.03
