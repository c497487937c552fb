"""Tests for the float DepthwiseConv2DTranspose layer."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from fixedq.layers import DepthwiseConv2DTranspose

CHANNELS = 3


def _reference(x: np.ndarray, kernel: np.ndarray, bias, kernel_size, strides, padding):
    """Conv2DTranspose applied channel by channel with the same per-channel kernel."""
    outputs = []
    for c in range(x.shape[-1]):
        ref = keras.layers.Conv2DTranspose(
            1, kernel_size, strides=strides, padding=padding, use_bias=bias is not None
        )
        ref.build((None, *x.shape[1:3], 1))
        weights = [kernel[:, :, c : c + 1, :]]
        if bias is not None:
            weights.append(bias[c : c + 1])
        ref.set_weights(weights)
        outputs.append(np.asarray(ref(x[..., c : c + 1])))
    return np.concatenate(outputs, axis=-1)


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("strides", [1, 2, (2, 1)])
@pytest.mark.parametrize("kernel_size", [1, 2, 3, 4, (3, 2)])
def test_matches_per_channel_conv2d_transpose(kernel_size, strides, padding):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 6, CHANNELS)).astype("float32")
    layer = DepthwiseConv2DTranspose(
        kernel_size, strides=strides, padding=padding, bias_initializer="random_normal"
    )
    y = np.asarray(layer(x))
    kernel, bias = (np.asarray(w) for w in layer.get_weights())
    assert kernel.shape == (*layer.kernel_size, CHANNELS, 1)
    expected = _reference(x, kernel, bias, kernel_size, strides, padding)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, atol=1e-5, rtol=0)
    assert tuple(layer.compute_output_shape(x.shape)) == y.shape


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("kernel_size, strides", [(3, 2), (2, 2), (1, 3)])
def test_symbolic_shapes_match_conv2d_transpose(kernel_size, strides, padding):
    inputs = keras.Input((None, 7, 4))
    ours = DepthwiseConv2DTranspose(kernel_size, strides=strides, padding=padding)(inputs)
    ref = keras.layers.Conv2DTranspose(4, kernel_size, strides=strides, padding=padding)(inputs)
    assert tuple(ours.shape) == tuple(ref.shape)
    model = keras.Model(inputs, ours)
    x = np.ones((1, 5, 7, 4), "float32")
    out = np.asarray(model(x))
    ref_out = keras.layers.Conv2DTranspose(4, kernel_size, strides=strides, padding=padding)(x)
    assert out.shape == tuple(ref_out.shape)


def test_no_bias_and_activation():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 4, 4, 2)).astype("float32")
    layer = DepthwiseConv2DTranspose(
        3, strides=2, padding="same", use_bias=False, activation="relu"
    )
    y = np.asarray(layer(x))
    assert len(layer.weights) == 1
    kernel = np.asarray(layer.kernel)
    expected = np.maximum(_reference(x, kernel, None, 3, 2, "same"), 0.0)
    np.testing.assert_allclose(y, expected, atol=1e-5, rtol=0)


def test_config_round_trip():
    layer = DepthwiseConv2DTranspose(
        (3, 2),
        strides=(2, 1),
        padding="SAME",
        activation="relu",
        kernel_regularizer="l2",
        name="dwt",
    )
    x = np.random.default_rng(2).normal(size=(1, 4, 4, 2)).astype("float32")
    y = np.asarray(layer(x))
    config = layer.get_config()
    assert config["padding"] == "same"
    clone = DepthwiseConv2DTranspose.from_config(config)
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(np.asarray(clone(x)), y)
    assert clone.get_config() == config


def test_keras_save_load(tmp_path):
    inputs = keras.Input((4, 4, 3))
    outputs = DepthwiseConv2DTranspose(3, strides=2, padding="same", name="dwt")(inputs)
    model = keras.Model(inputs, outputs)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # registered: no custom_objects needed
    assert isinstance(loaded.get_layer("dwt"), DepthwiseConv2DTranspose)
    x = np.random.default_rng(3).normal(size=(2, 4, 4, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


def test_registered_name():
    name = keras.saving.get_registered_name(DepthwiseConv2DTranspose)
    assert name == "fixedq>DepthwiseConv2DTranspose"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kernel_size": 0}, "kernel_size"),
        ({"kernel_size": -1}, "kernel_size"),
        ({"kernel_size": (3, 0)}, "kernel_size"),
        ({"kernel_size": (3, 3, 3)}, "kernel_size"),
        ({"kernel_size": 2.5}, "kernel_size"),
        ({"kernel_size": True}, "kernel_size"),
        ({"kernel_size": 3, "strides": 0}, "strides"),
        ({"kernel_size": 3, "padding": "full"}, "padding.*'full'"),
        ({"kernel_size": 3, "padding": None}, "padding"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DepthwiseConv2DTranspose(**kwargs)


def test_bad_input_rank():
    layer = DepthwiseConv2DTranspose(3)
    with pytest.raises(ValueError):
        layer(np.zeros((1, 4, 4), "float32"))


def test_trains_with_fit():
    inputs = keras.Input((4, 4, 2))
    model = keras.Model(inputs, DepthwiseConv2DTranspose(3, strides=2, padding="same")(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    rng = np.random.default_rng(4)
    x = rng.normal(size=(8, 4, 4, 2)).astype("float32")
    y = rng.normal(size=(8, 8, 8, 2)).astype("float32")
    before = np.asarray(model.layers[-1].kernel).copy()
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert not np.array_equal(before, np.asarray(model.layers[-1].kernel))
