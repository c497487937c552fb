"""to_streaming: after t frames the streaming model equals the clip model at time t."""

import keras
import numpy as np
import pytest

from fixedq.layers.temporal import PleiadesLayer, StatefulRecurrent
from fixedq.models import predict_clips
from fixedq.transforms.to_streaming import to_streaming

L = keras.layers


def _pad(k):
    return L.ZeroPadding3D(((k - 1, 0), (0, 0), (0, 0)))


def _clip_model(steps=6):
    x = keras.Input((steps, 6, 6, 2))
    y = _pad(3)(x)
    y = L.Conv3D(4, (3, 1, 1), name="t1")(y)
    y = L.BatchNormalization(name="bn")(y)
    y = L.ReLU()(y)
    y = L.Conv3D(6, (1, 3, 3), padding="same", strides=(1, 2, 2), name="s1")(y)
    y = L.ZeroPadding3D(((1, 0), (1, 1), (1, 1)))(y)
    y = L.Conv3D(6, (2, 1, 1), groups=6, use_bias=False, name="dw")(y)
    y = L.Conv3D(5, (1, 3, 3), name="s2")(y)
    y = L.ReLU()(y)
    y = _pad(4)(y)
    y = PleiadesLayer(4, (4, 1, 1), degrees=2, alpha=0.5, name="pleiades")(y)
    y = L.AveragePooling3D((1, 3, 3), name="pool")(y)
    y = StatefulRecurrent(clip=True, name="ssm")(y)
    y = L.TimeDistributed(L.Flatten(), name="flat")(y)
    y = L.TimeDistributed(L.Dense(3), name="head")(y)
    return keras.Model(x, y)


def test_streaming_equals_clip_at_every_frame():
    rng = np.random.default_rng(0)
    model = _clip_model()
    bn = model.get_layer("bn")
    bn.set_weights([rng.uniform(0.5, 2, 4), rng.normal(size=4), rng.normal(size=4),
                    rng.uniform(0.5, 2, 4)])
    clips = rng.normal(size=(3, 6, 6, 6, 2)).astype("float32")
    want = np.asarray(model.predict_on_batch(clips))
    stream = to_streaming(model)
    assert stream.input_shape == (None, 6, 6, 2)
    kinds = {layer.name: type(layer).__name__ for layer in stream.layers}
    assert kinds["t1"] == "BufferTempConv" and kinds["dw"] == "DepthwiseBufferTempConv"
    assert kinds["pleiades"] == "BufferTempConv" and kinds["s1"] == "Conv2D"
    assert kinds["head"] == "Dense" and kinds["pool"] == "AveragePooling2D"
    got = predict_clips(stream, clips, batch_size=2)
    assert got.shape == want.shape == (3, 6, 3)
    assert np.max(np.abs(got - want)) <= 1e-5 * max(1.0, np.max(np.abs(want)))
    # a longer clip on the same streaming model: frames beyond the training length still match
    long = rng.normal(size=(1, 9, 6, 6, 2)).astype("float32")
    want_long = np.asarray(_rebuilt(model, 9).predict_on_batch(long))
    np.testing.assert_allclose(predict_clips(stream, long), want_long, atol=1e-4)


def _rebuilt(model, steps):
    """The same clip model (weights shared) on clips of ``steps`` frames."""
    clone = _clip_model(steps)
    clone.set_weights(model.get_weights())
    return clone


def test_user_model_is_not_changed():
    model = _clip_model()
    before = [w.copy() for w in model.get_weights()]
    to_streaming(model)
    assert model.input_shape == (None, 6, 6, 6, 2)
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def _wrap(*layers, shape=(4, 5, 5, 2)):
    x = keras.Input(shape)
    y = x
    for layer in layers:
        y = layer(y)
    return keras.Model(x, y)


@pytest.mark.parametrize("layers, match", [
    ([L.Conv3D(2, (3, 1, 1), padding="same", name="c")],
     r"'c' \(Conv3D\) uses padding 'same' over time: not causal"),
    ([L.ZeroPadding3D(((1, 1), (0, 0), (0, 0)), name="p"), L.Conv3D(2, (3, 1, 1))],
     r"'p' \(ZeroPadding3D\) pads the time axis by \(1, 1\)"),
    ([L.Conv3D(2, (3, 1, 1), name="c")], r"'c' .* padded by 0 past frames"),
    ([_pad(3), L.Conv3D(2, (3, 3, 3), name="c")], r"'c' .* temporal kernel must be \(k, 1, 1\)"),
    ([L.Conv3D(2, (1, 3, 1), name="c")], None),  # spatial: fine
    ([L.BatchNormalization(axis=1, name="bn")], r"'bn' \(BatchNormalization\).*over time"),
    ([L.AveragePooling3D((2, 1, 1), name="ap")], r"'ap' .* pools over time"),
    ([L.GlobalAveragePooling3D(name="g")], r"'g' \(GlobalAveragePooling3D\) is not supported"),
    ([_pad(2), L.ReLU(name="r")], r"'r' \(ReLU\) reads a time-padded tensor"),
    ([L.TimeDistributed(L.Flatten()), L.Conv1D(2, 3, name="c1")],
     r"'c1' \(Conv1D\) would run its kernel over the time axis"),
    ([L.Reshape((4, 50), name="rs")], r"'rs' \(Reshape\) moves or merges the time axis"),
])
def test_bad_clip_models_name_the_layer(layers, match):
    model = _wrap(*layers)
    if match is None:
        assert isinstance(to_streaming(model), keras.Model)
        return
    with pytest.raises(ValueError, match=match):
        to_streaming(model)


def test_frame_model_is_refused():
    x = keras.Input((8,))
    with pytest.raises(ValueError, match=r"has shape \(None, 8\); a clip model takes clips"):
        to_streaming(keras.Model(x, L.Dense(2)(x)))
