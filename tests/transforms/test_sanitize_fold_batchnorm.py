"""Rewrite 4: BatchNormalization folded into the preceding weighted layer."""

import keras
import numpy as np
import pytest

from fixedq.layers import DepthwiseConv2DTranspose
from fixedq.transforms import sanitize

LAYERS = {
    "conv": lambda b: keras.layers.Conv2D(5, 3, use_bias=b, name="w"),
    "conv_groups": lambda b: keras.layers.Conv2D(4, 3, groups=2, use_bias=b, name="w"),
    "dense": lambda b: keras.layers.Dense(5, use_bias=b, name="w"),
    "depthwise": lambda b: keras.layers.DepthwiseConv2D(3, use_bias=b, name="w"),
    "depthwise_mult": lambda b: keras.layers.DepthwiseConv2D(
        3, depth_multiplier=3, use_bias=b, name="w"
    ),
    "separable": lambda b: keras.layers.SeparableConv2D(
        5, 3, depth_multiplier=2, use_bias=b, name="w"
    ),
    "transpose": lambda b: keras.layers.Conv2DTranspose(5, 3, strides=2, use_bias=b, name="w"),
    "dw_transpose": lambda b: DepthwiseConv2DTranspose(3, strides=2, use_bias=b, name="w"),
}


def _model(helpers, kind, use_bias, center=True, scale=True, in_channels=4):
    x = keras.Input((6, 6, in_channels))
    y = LAYERS[kind](use_bias)(x)
    y = keras.layers.BatchNormalization(center=center, scale=scale, epsilon=1e-2, name="bn")(y)
    model = keras.Model(x, y)
    helpers.randomize_batchnorm(model)
    helpers.randomize_biases(model)
    return model


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("use_bias", [True, False])
def test_folds(helpers, kind, use_bias):
    model = _model(helpers, kind, use_bias)
    before = helpers.snapshot(model)
    new_model, report = sanitize(model)
    assert "bn" not in [layer.name for layer in new_model.layers]
    layer = new_model.get_layer("w")
    assert layer.use_bias
    assert [c.layers for c in report] == [("w", "bn")]
    helpers.assert_same_function(model, new_model)
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))


@pytest.mark.parametrize(("center", "scale"), [(False, False), (True, False), (False, True)])
def test_folds_without_center_or_scale(helpers, center, scale):
    model = _model(helpers, "conv", False, center=center, scale=scale)
    new_model, report = sanitize(model)
    assert len(report) == 1
    helpers.assert_same_function(model, new_model)


def test_depthwise_channel_order_is_checked_against_keras(helpers):
    # Distinct per-channel scales make a wrong (mult, in) ordering visible.
    model = _model(helpers, "depthwise_mult", True, in_channels=2)
    bn = model.get_layer("bn")
    gamma, beta, mean, _ = bn.get_weights()
    bn.set_weights([np.arange(1, 7, dtype="float32"), beta, mean, np.ones(6, "float32")])
    new_model, _ = sanitize(model)
    helpers.assert_same_function(model, new_model)


def test_conv1d_activation_is_split_and_batchnorm_folded(helpers):
    # a keyword-spotting style block: Conv1D(activation="relu") -> BN is Conv1D -> ReLU -> BN;
    # after the split the BN still reads the ReLU, so only a BN right after a linear Conv1D folds
    x = keras.Input((12, 4))
    y = keras.layers.Conv1D(6, 3, padding="same", activation="relu", name="c1")(x)
    y = keras.layers.Conv1D(5, 3, strides=2, name="c2")(y)
    y = keras.layers.BatchNormalization(epsilon=1e-2, name="bn")(y)
    model = keras.Model(x, y)
    helpers.randomize_batchnorm(model)
    helpers.randomize_biases(model)
    new_model, report = sanitize(model)
    assert [c.layers for c in report] == [("c1", "c1_relu"), ("c2", "bn")]
    assert [(type(ly).__name__, ly.name) for ly in new_model.layers[1:]] == [
        ("Conv1D", "c1"), ("ReLU", "c1_relu"), ("Conv1D", "c2")]
    helpers.assert_same_function(model, new_model)


def test_not_folded_when_bn_has_other_inputs_or_layer_other_readers(helpers):
    x = keras.Input((6, 6, 3))
    c = keras.layers.Conv2D(4, 3, name="c")(x)
    bn = keras.layers.BatchNormalization(name="bn")(c)
    other = keras.layers.ReLU(name="r")(c)  # conv output read twice
    model = keras.Model(x, keras.layers.Add()([bn, other]))
    helpers.randomize_batchnorm(model)
    new_model, report = sanitize(model)
    assert len(report) == 0
    helpers.assert_same_function(model, new_model)


def test_not_folded_after_activation_or_unsupported_layer(helpers):
    x = keras.Input((6, 6, 3))
    y = keras.layers.Conv2D(4, 3, activation="relu", name="c")(x)
    y = keras.layers.BatchNormalization(name="bn1")(y)
    y = keras.layers.MaxPooling2D(name="p")(y)
    y = keras.layers.BatchNormalization(name="bn2")(y)
    model = keras.Model(x, y)
    helpers.randomize_batchnorm(model)
    new_model, report = sanitize(model)
    assert report.by_rewrite("fold_batchnorm") == []
    assert {"bn1", "bn2"} <= {layer.name for layer in new_model.layers}
    helpers.assert_same_function(model, new_model)


def test_not_folded_on_other_axis(helpers):
    x = keras.Input((6, 6, 3))
    y = keras.layers.Conv2D(4, 3, name="c")(x)
    model = keras.Model(x, keras.layers.BatchNormalization(axis=1, name="bn")(y))
    helpers.randomize_batchnorm(model)
    new_model, report = sanitize(model)
    assert len(report) == 0
    helpers.assert_same_function(model, new_model)


def test_chain_of_two_bn_folds_both(helpers):
    x = keras.Input((5,))
    y = keras.layers.Dense(3, name="d")(x)
    y = keras.layers.BatchNormalization(name="bn1")(y)
    y = keras.layers.BatchNormalization(name="bn2")(y)
    model = keras.Model(x, y)
    helpers.randomize_batchnorm(model)
    new_model, report = sanitize(model)
    assert [c.layers for c in report] == [("d", "bn1"), ("d", "bn2")]
    assert helpers.layer_types(new_model) == ["InputLayer", "Dense"]
    helpers.assert_same_function(model, new_model)
