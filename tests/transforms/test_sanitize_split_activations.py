"""Rewrite 2: fused activations split into their own layer."""

import keras
import pytest

from fixedq.layers import DepthwiseConv2DTranspose
from fixedq.transforms import sanitize


def _layers():
    return [
        lambda a: keras.layers.Conv2D(4, 3, activation=a, name="w"),
        lambda a: keras.layers.Dense(4, activation=a, name="w"),
        lambda a: keras.layers.DepthwiseConv2D(3, activation=a, name="w"),
        lambda a: keras.layers.SeparableConv2D(4, 3, activation=a, name="w"),
        lambda a: keras.layers.Conv2DTranspose(4, 3, strides=2, activation=a, name="w"),
        lambda a: DepthwiseConv2DTranspose(3, strides=2, activation=a, name="w"),
    ]


@pytest.mark.parametrize("make", _layers())
def test_relu_split(helpers, make):
    x = keras.Input((6, 6, 3))
    model = keras.Model(x, keras.layers.Flatten(name="flat")(make("relu")(x)))
    helpers.randomize_biases(model)
    new_model, report = sanitize(model)
    assert new_model.get_layer("w").get_config()["activation"] == "linear"
    relu = new_model.get_layer("w_relu")
    assert isinstance(relu, keras.layers.ReLU) and relu.max_value is None
    assert new_model.get_layer("flat").input is relu.output
    assert [c.rewrite for c in report] == ["split_activations"]
    helpers.assert_same_function(model, new_model)


def test_relu6_and_other_activation(helpers):
    x = keras.Input((5,))
    y = keras.layers.Dense(4, activation="relu6", name="a")(x)
    y = keras.layers.Dense(4, activation="tanh", name="b")(y)
    model = keras.Model(x, y)
    new_model, report = sanitize(model)
    assert new_model.get_layer("a_relu").max_value == 6.0
    act = new_model.get_layer("b_activation")
    assert isinstance(act, keras.layers.Activation)
    assert new_model.output is act.output
    assert len(report) == 2
    helpers.assert_same_function(model, new_model)


def test_unique_names_and_linear_untouched(helpers):
    x = keras.Input((5,))
    y = keras.layers.Dense(4, activation="relu", name="d")(x)
    y = keras.layers.Dense(4, name="d_relu")(y)  # name clash with the split layer
    model = keras.Model(x, y)
    new_model, report = sanitize(model)
    assert [c.layers for c in report] == [("d", "d_relu_1")]
    assert len({layer.name for layer in new_model.layers}) == len(new_model.layers)
    helpers.assert_same_function(model, new_model)
