"""SmoothQuant on attention inputs: the q/k/v projections share one smoothing vector."""

from __future__ import annotations

import keras
import numpy as np

import fixedq
from fixedq.layers.transformers import LayerMadNormalization
from fixedq.models.calibrate import calibrate
from fixedq.models.vit_adapt import build_vit
from fixedq.transforms.smooth_quant import smooth_quant


def _vit_with_outliers(seed=0):
    keras.utils.set_random_seed(seed)
    model = build_vit((16, 16, 1), patch=4, dim=16, heads=2, blocks=1, mlp_dim=24,
                      num_classes=5, rescale=None)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, LayerMadNormalization):
            gamma = rng.uniform(0.5, 1.5, layer.gamma.shape[0])
            gamma[:2] *= 40.0  # two outlier channels, as LLM/ViT activations have
            layer.set_weights([gamma, rng.normal(size=gamma.shape) * 0.1])
    return model


def test_qkv_share_one_vector_function_preserved_and_per_tensor_error_drops():
    model = _vit_with_outliers()
    x = np.random.default_rng(1).normal(size=(64, 16, 16, 1)).astype("float32")
    new, report = smooth_quant(model, x, alpha=0.5)
    ref = model.predict(x, verbose=0)
    np.testing.assert_allclose(new.predict(x, verbose=0), ref, rtol=1e-4,
                               atol=1e-4 * np.abs(ref).max())
    shared = [r for r in report if "shared by 3 Dense layers" in r]
    assert {r.split(":")[0] for r in shared} == {"b0_q", "b0_k", "b0_v"}
    norm = next(r for r in shared).split("'")[1]

    def spread(m):
        st = calibrate(m, x, [norm], verbose=False)[norm]
        r = np.maximum(np.abs(st.minimum), np.abs(st.maximum))
        return r.max() / r[r > 0].min()

    assert spread(new) < spread(model) / 4
    per_tensor = fixedq.QuantizationParams(per_tensor_activations=True)
    plain = fixedq.quantize(model, per_tensor, samples=x, verbose=False)
    smoothed = fixedq.quantize(model, per_tensor, samples=x, smooth_quant=0.5, verbose=False)

    for name in ("b0_q", "b0_k", "b0_v"):  # the attention inputs SmoothQuant targets
        want = keras.Model(model.input, model.get_layer(name).output).predict(x, verbose=0)

        def err(q, name=name, want=want):
            got = keras.Model(q.input, q.get_layer(name).output).predict(x, verbose=0)
            return float(np.mean((got - want) ** 2) / np.mean(want**2))

        assert err(smoothed) < 0.85 * err(plain)  # measured 0.60-0.74 (seed 0)


def test_unselected_sibling_keeps_the_group_unchanged():
    model = _vit_with_outliers()
    x = np.random.default_rng(2).normal(size=(32, 16, 16, 1)).astype("float32")
    new, report = smooth_quant(model, x, alpha=0.5, layers=["b0_q", "b0_k"])
    assert all("also feeds unselected ['b0_v']" in r for r in report if r.startswith("b0_q"))
    for name in ("b0_q", "b0_k", "b0_v"):
        np.testing.assert_array_equal(new.get_layer(name).get_weights()[0],
                                      model.get_layer(name).get_weights()[0])
