"""The whole pipeline on a small mobile-net-like model: equivalence, idempotence, no mutation,
report, and .keras save/load of the result."""

import keras
import numpy as np
from keras import ops

from fixedq.transforms import REWRITES, SanitizeReport, sanitize


def _mobilenet_like():
    x = keras.Input((8, 8, 3), name="image")
    y = keras.layers.ZeroPadding2D(((0, 1), (0, 1)), name="stem_pad")(x)
    y = keras.layers.Conv2D(8, 3, strides=2, use_bias=False, name="stem")(y)
    y = keras.layers.BatchNormalization(name="stem_bn")(y)
    y = keras.layers.Activation("relu6", name="stem_relu")(y)
    # inverted residual block
    skip = y
    y = keras.layers.Conv2D(16, 1, use_bias=False, name="expand")(y)
    y = keras.layers.BatchNormalization(name="expand_bn")(y)
    y = keras.layers.ReLU(6.0, name="expand_relu")(y)
    y = keras.layers.ZeroPadding2D(1, name="dw_pad")(y)
    y = keras.layers.DepthwiseConv2D(3, use_bias=False, name="dw")(y)
    y = keras.layers.BatchNormalization(name="dw_bn")(y)
    y = keras.layers.Lambda(lambda t: ops.relu(t), name="dw_relu")(y)
    y = keras.layers.Conv2D(8, 1, use_bias=False, name="project")(y)
    y = keras.layers.BatchNormalization(name="project_bn")(y)
    y = keras.layers.Lambda(lambda t: t[0] + t[1], name="residual")([skip, y])
    # separable conv with fused relu, then relu -> maxpool
    y = keras.layers.SeparableConv2D(12, 3, padding="same", activation="relu", name="sep")(y)
    y = keras.layers.MaxPooling2D(name="pool")(y)
    y = keras.layers.Lambda(lambda t: ops.reshape(t, (-1, 2 * 2 * 12)), name="flatten")(y)
    y = keras.layers.Dropout(0.2, name="drop")(y)
    y = keras.layers.Dense(6, name="fc")(y)
    y = keras.layers.BatchNormalization(name="fc_bn")(y)
    y = keras.layers.Dense(4, activation="softmax", name="head")(y)
    model = keras.Model(x, y, name="tiny_mobilenet")
    return model


def _prepared(helpers):
    model = _mobilenet_like()
    helpers.randomize_batchnorm(model)
    helpers.randomize_biases(model)
    return model


def test_mobilenet_like(helpers):
    model = _prepared(helpers)
    new_model, report = sanitize(model)
    helpers.assert_same_function(model, new_model, batch=3)

    names = [layer.name for layer in new_model.layers]
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in new_model.layers)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in new_model.layers)
    assert "stem_pad" not in names and "dw_pad" not in names
    assert isinstance(new_model.get_layer("residual"), keras.layers.Add)
    assert isinstance(new_model.get_layer("flatten"), keras.layers.Reshape)
    assert isinstance(new_model.get_layer("head_softmax"), keras.layers.Softmax)
    assert "drop" in names
    assert names.index("pool") < names.index("sep_relu")
    assert new_model.get_layer("stem").padding == "same"
    assert new_model.inputs[0].name == "image"
    assert new_model.inputs[0].shape == (None, 8, 8, 3)

    rewrites = [c.rewrite for c in report]
    assert rewrites == sorted(rewrites, key=[r.__name__ for r in REWRITES].index)
    assert len(report.by_rewrite("fold_batchnorm")) == 5
    assert {c.layers[1] for c in report.by_rewrite("fold_batchnorm")} == {
        "stem_bn",
        "expand_bn",
        "dw_bn",
        "project_bn",
        "fc_bn",
    }
    text = str(report)
    assert text.startswith(f"sanitize: {len(report)} changes")
    assert "[fold_batchnorm] dw, dw_bn" in text
    assert "[reorder_relu_maxpool] sep_relu, pool" in text


def test_idempotent(helpers):
    model = _prepared(helpers)
    once, _ = sanitize(model)
    twice, report = sanitize(once)
    assert isinstance(report, SanitizeReport)
    assert len(report) == 0
    assert str(report) == "sanitize: no changes"
    assert helpers.layer_types(once) == helpers.layer_types(twice)
    helpers.assert_same_function(once, twice)


def test_input_model_unchanged(helpers):
    model = _prepared(helpers)
    before = helpers.snapshot(model)
    layers_before = list(model.layers)
    x = helpers.random_inputs(model)[0]
    out_before = np.asarray(model(x))
    sanitize(model)
    assert list(model.layers) == layers_before
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))
    np.testing.assert_array_equal(np.asarray(model(x)), out_before)


def test_keras_save_load(helpers, tmp_path):
    model = _prepared(helpers)
    new_model, _ = sanitize(model)
    path = tmp_path / "sanitized.keras"
    new_model.save(path)
    loaded = keras.saving.load_model(path)
    x = helpers.random_inputs(model)[0]
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(new_model(x)))


def test_keras_mobilenet_v2(helpers):
    model = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10, classifier_activation=None
    )
    helpers.randomize_batchnorm(model)
    new_model, report = sanitize(model)
    assert len(report.by_rewrite("fold_batchnorm")) == 52
    assert len(report.by_rewrite("fold_padding")) == 4
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in new_model.layers)
    assert not any(isinstance(layer, keras.layers.ZeroPadding2D) for layer in new_model.layers)
    helpers.assert_same_function(model, new_model)
    assert len(sanitize(new_model)[1]) == 0
