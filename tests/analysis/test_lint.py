"""fixedq.analysis.lint: BatchNormalization and weight-decay checks of float models (seed 001)."""

from __future__ import annotations

import json

import keras
import pytest

from fixedq.analysis import lint
from fixedq.analysis.lint import is_quantized

L2 = keras.regularizers.L2


def _kinds(report):
    return [(p.layer, p.kind) for p in report.problems]


def _model(layers, name="m"):
    x = keras.Input((8, 8, 3), name="x")
    h = x
    for layer in layers:
        h = layer(h)
    return keras.Model(x, h, name=name)


def test_friendly_model_passes():
    model = _model([
        keras.layers.Conv2D(8, 3, kernel_regularizer=L2(1e-4), name="c1"),
        keras.layers.BatchNormalization(name="bn1"), keras.layers.ReLU(),
        keras.layers.DepthwiseConv2D(3, depthwise_regularizer=L2(1e-4), name="dw"),
        keras.layers.BatchNormalization(name="bn2"), keras.layers.ReLU(),
        keras.layers.Conv2D(4, 1, kernel_regularizer=L2(1e-4), name="head"),  # last: no BN
    ])
    report = lint(model)
    assert report.ok and report.layers_checked == 3
    assert "no problems found" in report.format_table()


def test_depthwise_and_conv_without_batchnorm():
    model = _model([
        keras.layers.Conv2D(8, 3, kernel_regularizer=L2(1e-4), name="c1"),
        keras.layers.ReLU(),
        keras.layers.DepthwiseConv2D(3, depthwise_regularizer=L2(1e-4), name="dw"),
        keras.layers.Conv2D(8, 1, activation="relu", kernel_regularizer=L2(1e-4), name="c2"),
        keras.layers.BatchNormalization(name="bn"),  # after the fused ReLU: does not count
        keras.layers.SeparableConv2D(8, 3, depthwise_regularizer=L2(1e-4),
                                     pointwise_regularizer=L2(1e-4), name="sep"),
        keras.layers.Conv2D(4, 1, kernel_regularizer=L2(1e-4), name="head"),
    ])
    report = lint(model)
    assert _kinds(report) == [("dw", "depthwise_without_batchnorm"),
                              ("sep", "depthwise_without_batchnorm"),
                              ("c1", "conv_without_batchnorm"),
                              ("c2", "conv_without_batchnorm")]
    assert "fused activation 'relu'" in report.problems[3].message
    assert not report.ok


def test_last_convolutions_of_every_branch_are_exempt_but_depthwise_never():
    x = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, name="trunk", kernel_regularizer=L2(1e-4))(x)
    h = keras.layers.BatchNormalization()(h)
    a = keras.layers.Conv2D(4, 1, name="head_a", kernel_regularizer=L2(1e-4))(h)
    b = keras.layers.DepthwiseConv2D(3, name="head_b", depthwise_regularizer=L2(1e-4))(h)
    report = lint(keras.Model(x, [a, b]))
    assert _kinds(report) == [("head_b", "depthwise_without_batchnorm")]


def test_weight_decay_missing_small_and_from_optimizer():
    def build(reg_c1, reg_fc):
        x = keras.Input((16,))
        h = keras.layers.Dense(8, kernel_regularizer=reg_c1, name="fc1")(x)
        return keras.Model(x, keras.layers.Dense(2, kernel_regularizer=reg_fc, name="fc2")(h),
                           name="mlp")

    none = lint(build(None, None))
    assert _kinds(none) == [("mlp", "missing_weight_decay")]  # one model-level problem
    mixed = lint(build(L2(1e-6), None))
    assert _kinds(mixed) == [("fc2", "missing_weight_decay"), ("fc1", "small_weight_decay")]
    assert mixed.problems[1].value == pytest.approx(1e-6)
    assert lint(build(keras.regularizers.L1L2(l1=0.0, l2=1e-4), L2(2e-5))).ok
    assert not lint(build(keras.regularizers.L1(1e-4), L2(1e-4))).ok  # L1 is not weight decay
    assert lint(build(L2(1e-6), L2(1e-6)), min_weight_decay=1e-7).ok
    compiled = build(None, None)
    compiled.compile(keras.optimizers.AdamW(1e-3, weight_decay=1e-4), "mse")
    assert lint(compiled).ok
    d = json.loads(json.dumps(mixed.to_dict()))
    assert d["kind"] == "float_model_lint" and d["thresholds"]["min_weight_decay"] == 1e-5


def test_bad_input_and_dispatch_helper(trained_bn_cnn):
    with pytest.raises(ValueError, match="min_weight_decay"):
        lint(trained_bn_cnn, min_weight_decay=-1)
    with pytest.raises(TypeError):
        lint("model.keras")
    assert not is_quantized(trained_bn_cnn)
    report = lint(trained_bn_cnn)  # BN everywhere except the separable conv; no weight decay
    assert set(_kinds(report)) == {("sep", "depthwise_without_batchnorm"),
                                   ("bn_cnn", "missing_weight_decay")}
