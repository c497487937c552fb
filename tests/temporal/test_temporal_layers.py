"""Float temporal layers: streaming equals the clip computation, state handling, round trips."""

import keras
import numpy as np
import pytest

from fixedq.layers.temporal import (
    BufferTempConv,
    DepthwiseBufferTempConv,
    PleiadesLayer,
    StatefulRecurrent,
    jacobi_basis,
)
from fixedq.layers.temporal.pleiades import jacobi
from fixedq.models import predict_clips, reset_buffers

L = keras.layers


def _clip_conv3d(clips, kernel):
    """Causal Conv3D (k, 1, 1) over time of (N, T, H, W, C) clips with a (k, C, F) kernel."""
    k = kernel.shape[0]
    x = keras.Input(clips.shape[1:])
    y = L.ZeroPadding3D(((k - 1, 0), (0, 0), (0, 0)))(x)
    conv = L.Conv3D(kernel.shape[-1], (k, 1, 1), use_bias=False)
    y = conv(y)
    conv.set_weights([kernel[:, None, None]])
    return np.asarray(keras.Model(x, y).predict_on_batch(clips))


def _stream_model(layer, frame_shape):
    x = keras.Input(frame_shape)
    return keras.Model(x, layer(x))


def test_buffer_temp_conv_equals_causal_conv3d():
    rng = np.random.default_rng(0)
    clips = rng.normal(size=(2, 5, 3, 4, 3)).astype("float32")
    layer = BufferTempConv(6, 3)
    model = _stream_model(layer, (3, 4, 3))
    kernel = layer.get_weights()[0]
    got = predict_clips(model, clips)
    np.testing.assert_allclose(got, _clip_conv3d(clips, kernel), atol=1e-5)


def test_depthwise_buffer_temp_conv_reference():
    rng = np.random.default_rng(1)
    clips = rng.normal(size=(3, 4, 2, 5)).astype("float32")  # (N, T, W, C)
    layer = DepthwiseBufferTempConv(3, use_bias=True)
    model = _stream_model(layer, (2, 5))
    kernel = rng.normal(size=(3, 5)).astype("float32")
    bias = rng.normal(size=(5,)).astype("float32")
    layer.set_weights([kernel, bias])
    padded = np.concatenate([np.zeros_like(clips[:, :2]), clips], axis=1)
    want = sum(padded[:, j:j + 4] * kernel[j] for j in range(3)) + bias
    np.testing.assert_allclose(predict_clips(model, clips), want, atol=1e-5)


def test_stateful_recurrent_stream_equals_clip_and_complex_reference():
    rng = np.random.default_rng(2)
    clips = rng.normal(size=(2, 6, 3, 4)).astype("float32")
    stream = StatefulRecurrent()
    model = _stream_model(stream, (3, 4))
    x = keras.Input((6, 3, 4))
    clip_layer = StatefulRecurrent(clip=True)
    clip_model = keras.Model(x, clip_layer(x))
    clip_layer.set_weights(stream.get_weights())
    a = stream.get_weights()[0] + 1j * stream.get_weights()[1]
    s = np.zeros(clips.shape[:1] + clips.shape[2:], complex)
    want = []
    for t in range(6):
        s = a * s + clips[:, t]
        want.append(s.real)
    want = np.stack(want, 1)
    np.testing.assert_allclose(predict_clips(model, clips), want, atol=1e-5)
    np.testing.assert_allclose(clip_model.predict_on_batch(clips), want, atol=1e-5)


def test_reset_and_batch_size_change_start_clean():
    rng = np.random.default_rng(3)
    layer = BufferTempConv(2, 3, use_bias=True)
    model = _stream_model(layer, (4,))
    frames = rng.normal(size=(3, 4)).astype("float32")
    first = np.asarray(model.predict_on_batch(frames))
    model.predict_on_batch(frames)
    assert not np.allclose(model.predict_on_batch(frames), first)  # it remembers
    reset_buffers(model)
    np.testing.assert_array_equal(model.predict_on_batch(frames), first)
    model.predict_on_batch(frames)
    np.testing.assert_array_equal(model.predict_on_batch(frames[:2]), first[:2])  # new batch


def test_pleiades_is_conv3d_with_polynomial_kernel_and_trains():
    rng = np.random.default_rng(4)
    clips = rng.normal(size=(4, 5, 4, 4, 2)).astype("float32")
    x = keras.Input(clips.shape[1:])
    layer = PleiadesLayer(3, (3, 2, 2), degrees=1, alpha=0.5, beta=-0.5)
    model = keras.Model(x, layer(x))
    kernel = np.einsum("td,dhwcf->thwcf", jacobi_basis(3, 1, 0.5, -0.5),
                       layer.get_weights()[0])
    conv = L.Conv3D(3, (3, 2, 2))
    ref = keras.Sequential([keras.Input(clips.shape[1:]), conv])
    conv.set_weights([kernel, layer.get_weights()[1]])
    np.testing.assert_allclose(model.predict_on_batch(clips), ref.predict_on_batch(clips),
                               atol=1e-5)
    before = layer.get_weights()[0].copy()
    model.compile("adam", "mse")
    model.fit(clips, np.ones((4, 3, 3, 3, 3), "float32"), epochs=1, verbose=0)
    assert not np.allclose(layer.get_weights()[0], before)


def test_jacobi_polynomials_closed_forms():
    x = np.linspace(-1, 1, 7)
    a, b = 0.5, 1.5
    np.testing.assert_allclose(jacobi(1, a, b, x), (a + 1) + (a + b + 2) * (x - 1) / 2)
    np.testing.assert_allclose(jacobi(2, 0.0, 0.0, x), (3 * x**2 - 1) / 2)
    np.testing.assert_allclose(jacobi(3, 0.0, 0.0, x), (5 * x**3 - 3 * x) / 2, atol=1e-12)
    assert np.linalg.matrix_rank(jacobi_basis(5, 4, a, b)) == 5


@pytest.mark.parametrize("make", [
    lambda: BufferTempConv(3, 2, use_bias=True),
    lambda: DepthwiseBufferTempConv(3),
    lambda: StatefulRecurrent(),
])
def test_keras_round_trip(make, tmp_path):
    rng = np.random.default_rng(5)
    layer = make()
    model = _stream_model(layer, (2, 3))
    clips = rng.normal(size=(2, 4, 2, 3)).astype("float32")
    want = predict_clips(model, clips)
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(predict_clips(loaded, clips), want)
    assert [w.name for w in loaded.weights] == [w.name for w in model.weights]


def test_pleiades_round_trip(tmp_path):
    x = keras.Input((3, 2, 2, 1))
    model = keras.Model(x, PleiadesLayer(2, (2, 1, 1), degrees=1)(x))
    clips = np.random.default_rng(6).normal(size=(1, 3, 2, 2, 1)).astype("float32")
    model.save(tmp_path / "p.keras")
    loaded = keras.saving.load_model(tmp_path / "p.keras")
    np.testing.assert_array_equal(loaded.predict_on_batch(clips), model.predict_on_batch(clips))


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="kernel_size must be a positive integer"):
        BufferTempConv(2, 0)
    with pytest.raises(ValueError, match="filters must be a positive integer"):
        BufferTempConv(0, 2)
    with pytest.raises(ValueError, match=r"degrees must be an integer in \[0, 2\]"):
        PleiadesLayer(2, (3, 1, 1), degrees=3)
    with pytest.raises(ValueError, match="alpha and beta must be > -1"):
        PleiadesLayer(2, (3, 1, 1), degrees=1, alpha=-1.0)
    with pytest.raises(ValueError, match=r"needs clips \(N, T, H, W, C\)"):
        PleiadesLayer(2, (3, 1, 1), degrees=1).build((None, 4, 4, 1))
    model = _stream_model(DepthwiseBufferTempConv(2), (4, 3))
    with pytest.raises(ValueError, match=r"clips must have shape \(N, T, 4, 3\).*got \(2, 4, 3\)"):
        predict_clips(model, np.zeros((2, 4, 3), "float32"))
    with pytest.raises(ValueError, match=r"shape \(2, 0, 4, 3\) are empty"):
        predict_clips(model, np.zeros((2, 0, 4, 3), "float32"))
