"""Rewrite 5: ReLU -> MaxPooling2D swapped into MaxPooling2D -> ReLU."""

import keras
import pytest

from fixedq.transforms import sanitize


@pytest.mark.parametrize(
    "relu",
    [
        lambda: keras.layers.ReLU(name="r"),
        lambda: keras.layers.ReLU(max_value=6.0, name="r"),
        lambda: keras.layers.ReLU(negative_slope=0.1, threshold=0.5, name="r"),
        lambda: keras.layers.Activation("relu", name="r"),
    ],
)
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_swapped(helpers, relu, padding):
    x = keras.Input((7, 7, 3))
    y = keras.layers.Conv2D(4, 1, name="c")(x)
    y = relu()(y)
    y = keras.layers.MaxPooling2D(2, padding=padding, name="p")(y)
    model = keras.Model(x, keras.layers.Flatten(name="f")(y))
    new_model, report = sanitize(model)
    names = [layer.name for layer in new_model.layers]
    assert names.index("p") < names.index("r")
    assert new_model.get_layer("p").input is new_model.get_layer("c").output
    assert new_model.get_layer("f").input is new_model.get_layer("r").output
    assert report.by_rewrite("reorder_relu_maxpool")[0].layers == ("r", "p")
    helpers.assert_same_function(model, new_model)


def test_model_output_follows_relu(helpers):
    x = keras.Input((4, 4, 2))
    y = keras.layers.MaxPooling2D(name="p")(keras.layers.ReLU(name="r")(x))
    model = keras.Model(x, y)
    new_model, _ = sanitize(model)
    assert new_model.output is new_model.get_layer("r").output
    helpers.assert_same_function(model, new_model)


def test_chain_of_pools(helpers):
    x = keras.Input((8, 8, 2))
    y = keras.layers.ReLU(name="r")(x)
    y = keras.layers.MaxPooling2D(name="p1")(y)
    y = keras.layers.MaxPooling2D(name="p2")(y)
    model = keras.Model(x, y)
    new_model, report = sanitize(model)
    assert [layer.name for layer in new_model.layers][1:] == ["p1", "p2", "r"]
    assert len(report) == 2
    helpers.assert_same_function(model, new_model)


def test_not_swapped_with_other_readers_or_other_pools(helpers):
    x = keras.Input((8, 8, 2))
    r = keras.layers.ReLU(name="r")(x)
    p = keras.layers.MaxPooling2D(name="p")(r)
    a = keras.layers.AveragePooling2D(2, name="a")(keras.layers.ReLU(name="r2")(x))
    model = keras.Model(x, [p, a, r])
    new_model, report = sanitize(model)
    assert len(report) == 0
    helpers.assert_same_function(model, new_model)
