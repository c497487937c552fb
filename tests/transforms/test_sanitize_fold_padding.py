"""Rewrite 3: ZeroPadding2D + valid conv merged into a 'same' conv when exactly equivalent."""

import keras
import pytest

from fixedq.transforms import sanitize
from fixedq.transforms.fold_padding import pads_same


def _model(padding, conv, size=8):
    x = keras.Input((size, size, 3))
    y = keras.layers.ZeroPadding2D(padding, name="pad")(x)
    return keras.Model(x, conv(y))


CONVS = {
    "conv": lambda **k: keras.layers.Conv2D(4, name="c", **k),
    "dw": lambda **k: keras.layers.DepthwiseConv2D(name="c", **k),
    "sep": lambda **k: keras.layers.SeparableConv2D(4, name="c", **k),
}


@pytest.mark.parametrize("kind", sorted(CONVS))
@pytest.mark.parametrize(
    ("size", "padding", "kernel", "strides", "dilation"),
    [
        (8, 1, 3, 1, 1),
        (8, ((0, 1), (0, 1)), 3, 2, 1),  # TF puts the odd zero at the bottom/right
        (7, 1, 3, 2, 1),
        (8, ((1, 2), (1, 2)), 4, 1, 1),
        (8, 2, 3, 1, 2),
    ],
)
def test_merged_when_equivalent(helpers, kind, size, padding, kernel, strides, dilation):
    conv = CONVS[kind](kernel_size=kernel, strides=strides, dilation_rate=dilation)
    model = _model(padding, conv, size)
    helpers.randomize_biases(model)
    new_model, report = sanitize(model)
    assert "pad" not in [layer.name for layer in new_model.layers]
    assert new_model.get_layer("c").padding == "same"
    assert [c.layers for c in report] == [("pad", "c")]
    helpers.assert_same_function(model, new_model)


@pytest.mark.parametrize(
    ("size", "padding", "kernel", "strides"),
    [
        (8, ((1, 0), (1, 0)), 3, 2),  # extra zero on the wrong side
        (8, 1, 3, 2),  # 'same' would pad (0, 1)
        (8, 2, 3, 1),  # too much padding
        (8, ((1, 1), (0, 0)), 3, 1),  # only one axis
    ],
)
def test_kept_when_not_equivalent(helpers, size, padding, kernel, strides):
    model = _model(padding, keras.layers.Conv2D(4, kernel, strides=strides, name="c"), size)
    new_model, report = sanitize(model)
    assert len(report) == 0
    assert new_model.get_layer("c").padding == "valid"
    helpers.assert_same_function(model, new_model)


def test_same_conv_and_other_reader_keep_padding(helpers):
    x = keras.Input((8, 8, 3))
    p = keras.layers.ZeroPadding2D(1, name="pad")(x)
    a = keras.layers.Conv2D(4, 3, name="c")(p)
    b = keras.layers.MaxPooling2D(3, strides=1, name="pool")(p)
    model = keras.Model(x, keras.layers.Concatenate()([a, b]))
    new_model, report = sanitize(model)
    assert [c.layers for c in report] == [("pad", "c")]
    assert new_model.get_layer("pool").input is new_model.get_layer("pad").output
    helpers.assert_same_function(model, new_model)


def test_unknown_size():
    assert pads_same(None, 3, 1, 1) == (1, 1)
    assert pads_same(None, 3, 2, 1) is None
    x = keras.Input((None, None, 3))
    y = keras.layers.ZeroPadding2D(1)(x)
    model = keras.Model(x, keras.layers.Conv2D(2, 3, strides=2)(y))
    assert len(sanitize(model)[1]) == 0
