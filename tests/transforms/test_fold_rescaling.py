"""Rescaling folded into the next layer with weights: same float function, exact input ints."""

import keras
import numpy as np
import pytest

import fixedq
from fixedq import quantize
from fixedq.transforms.fold_rescaling import fold_rescaling
from fixedq.transforms.graph import build_model, read_graph

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("make, offset, folds", [
    (lambda: keras.layers.Conv2D(4, 3), [-1.0, 0.5, 2.0], True),
    (lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2), [-1.0, 0.5, 2.0], True),
    (lambda: keras.layers.Conv2D(4, 3, padding="same"), 0.0, True),
    (lambda: keras.layers.Conv2D(4, 3, padding="same"), -1.0, False),  # padding sees offset
])
def test_fold_preserves_function(make, offset, folds):
    x = keras.Input((6, 6, 3))
    y = make()(keras.layers.Rescaling([0.1, 0.2, 0.3], offset=offset, name="r")(x))
    model = keras.Model(x, y)
    graph = read_graph(model)
    assert fold_rescaling(graph) == (["r"] if folds else [])
    xs = RNG.uniform(0, 255, (4, 6, 6, 3)).astype("float32")
    ref = model.predict(xs, verbose=0)
    np.testing.assert_allclose(build_model(graph).predict(xs, verbose=0), ref,
                               atol=1e-6 * np.abs(ref).max())


def test_quantize_keeps_uint8_pixels_exact():
    x = keras.Input((8, 8, 1), name="img")
    h = keras.layers.Rescaling(1 / 255, name="rescale")(x)
    model = keras.Model(x, keras.layers.Dense(3, name="fc")(keras.layers.Flatten()(
        keras.layers.Conv2D(4, 3, name="conv")(h))))
    xs = RNG.integers(0, 256, (64, 8, 8, 1)).astype("float32")
    q = quantize(model, samples=xs, verbose=False)
    names = [type(ly).__name__ for ly in q.layers]
    assert "QuantizedRescaling" not in names
    iq = q.get_layer("img_quantizer")
    assert iq.output_spec.frac_bits == (0,) and not iq.output_spec.signed
    probe = keras.Model(q.inputs, iq.output)
    assert np.array_equal(probe.predict(xs, verbose=0), xs)  # 0..255 pass unchanged


def test_qat_trains_a_folded_kernel_in_its_original_units():
    """Regression (issue 5, ViT QAT got worse): the folded patch kernel is ~1/255 of the
    original, so Adam's ~lr-per-element steps were 255x too large for it and 4-bit QAT of a
    ViT diverged in a few steps. The variable now keeps the original units (``kernel_unit``);
    the kernel the layer quantizes is still the folded one, bit for bit."""
    from fixedq.models.vit_adapt import build_vit

    keras.utils.set_random_seed(0)
    model = build_vit((8, 8, 1), patch=4, dim=8, heads=2, blocks=1, mlp_dim=8, num_classes=3)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(32, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 3, size=32)
    q = fixedq.quantize(model, fixedq.QuantizationParams(weight_bits=4), samples=x,
                        verbose=False)
    layer, kernel = q.get_layer("patches"), model.get_layer("patches").get_weights()[0]
    np.testing.assert_array_equal(layer.kernel.numpy(), kernel)
    folded = (kernel.astype(np.float64) / 255).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(layer.effective_kernel()), folded)
    lr = 1e-3
    q.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(True))
    q.train_on_batch(x, y)
    step = np.abs(np.asarray(layer.effective_kernel()) - folded).max()
    assert 0 < step <= 1.5 * lr / 255  # before the fix: ~lr, 255x the float model's step
