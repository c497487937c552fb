"""Quantized streaming models: quantize on clips, Keras frame by frame == engine bit for bit."""

import keras
import numpy as np
import pytest

import fixedq
import fixedq.engine as fe
from fixedq.engine.streaming import StreamingModel
from fixedq.layers.temporal import BufferTempConv, DepthwiseBufferTempConv
from fixedq.layers.temporal.quantized import (
    QuantizedBufferTempConv,
    QuantizedDepthwiseBufferTempConv,
)
from fixedq.models import predict_clips, reset_buffers

L = keras.layers


def _stream_model():
    x = keras.Input((5, 5, 2))
    y = L.Conv2D(4, 3, padding="same")(x)
    y = L.ReLU()(y)
    y = BufferTempConv(6, 3, use_bias=True, name="tconv")(y)
    y = L.ReLU()(y)
    y = DepthwiseBufferTempConv(4, name="dwt")(y)
    y = L.GlobalAveragePooling2D()(y)
    y = L.Dense(3)(y)
    return keras.Model(x, y)


def _clips(rng, n=6, steps=5, sparse=False):
    clips = rng.normal(size=(n, steps, 5, 5, 2)).astype("float32")
    if sparse:
        clips *= rng.random(clips.shape) < 0.1
    return clips


@pytest.fixture(scope="module")
def quantized():
    rng = np.random.default_rng(0)
    model = _stream_model()
    clips = _clips(rng, 16)
    q = fixedq.quantize(model, fixedq.QuantizationParams(), samples=clips, verbose=False)
    return model, q


def test_quantized_layers_are_streaming_and_close_to_float(quantized):
    model, q = quantized
    assert isinstance(q.get_layer("tconv"), QuantizedBufferTempConv)
    assert isinstance(q.get_layer("dwt"), QuantizedDepthwiseBufferTempConv)
    clips = _clips(np.random.default_rng(1))
    want, got = predict_clips(model, clips), predict_clips(q, clips)
    assert got.shape == want.shape == (6, 5, 3)
    assert np.max(np.abs(got - want)) < 0.1 * np.max(np.abs(want))


@pytest.mark.parametrize("sparse", [False, True])
def test_engine_bit_exact_frame_by_frame(quantized, sparse):
    _, q = quantized
    clips = _clips(np.random.default_rng(2), sparse=sparse)
    engine = fe.convert(q)
    assert isinstance(engine, StreamingModel)
    want = predict_clips(q, clips, batch_size=4)
    for mode in ("dense", "event"):
        np.testing.assert_array_equal(engine.predict(clips, batch_size=4, mode=mode), want)
    # far beyond the calibrated range: saturation is identical too
    big = clips * 50
    np.testing.assert_array_equal(engine.predict(big), predict_clips(q, big))


def test_reset_and_step_live(quantized):
    _, q = quantized
    clips = _clips(np.random.default_rng(3), n=2)
    engine = fe.convert(q)
    want = engine.predict(clips)
    engine.reset()
    live = np.stack([engine.step(clips[:, t]) for t in range(clips.shape[1])], axis=1)
    np.testing.assert_array_equal(live, want)
    reset_buffers(q)
    keras_live = np.stack([np.asarray(q.predict_on_batch(clips[:, t]))
                           for t in range(clips.shape[1])], axis=1)
    np.testing.assert_array_equal(keras_live, want)
    engine.reset()
    np.testing.assert_array_equal(engine.step(clips[:, 0]), want[:, 0])  # clean again


def test_event_stats_count_every_frame(quantized):
    _, q = quantized
    clips = _clips(np.random.default_rng(4), n=2, sparse=True)
    rows = {r["name"]: r for r in fe.convert(q).event_stats(clips)}
    assert rows["tconv"]["inputs"] == 2 * 5 * 5 * 5 * 4
    assert 0 < rows["tconv"]["events"] <= rows["tconv"]["inputs"]
    assert rows["tconv"]["synops"] <= rows["tconv"]["dense_macs"]


def test_keras_file_round_trip(quantized, tmp_path):
    _, q = quantized
    clips = _clips(np.random.default_rng(5), n=2)
    q.save(tmp_path / "q.keras")
    again = fixedq.load_model(tmp_path / "q.keras")
    np.testing.assert_array_equal(predict_clips(again, clips), predict_clips(q, clips))


def test_bad_inputs(quantized):
    _, q = quantized
    engine = fe.convert(q)
    with pytest.raises(ValueError, match=r"expects clips of shape \(N, T, 5, 5, 2\).*\(2, 5, 5\)"):
        engine.predict(np.zeros((2, 5, 5), "float32"))
    with pytest.raises(ValueError, match=r"clips of shape \(2, 0, 5, 5, 2\) are empty"):
        engine.predict(np.zeros((2, 0, 5, 5, 2), "float32"))
    with pytest.raises(ValueError, match="weight_rounding=True is not supported for streaming"):
        fixedq.quantize(_stream_model(), samples=_clips(np.random.default_rng(6), 2),
                        weight_rounding=True, verbose=False)


def test_fqe_file_round_trip_and_validation(quantized, tmp_path):
    _, q = quantized
    engine = fe.convert(q)
    path = tmp_path / "stream.fqe"
    engine.save(path)
    loaded = fe.load(path)
    assert isinstance(loaded, StreamingModel)
    clips = _clips(np.random.default_rng(7), n=3)
    np.testing.assert_array_equal(loaded.predict(clips), engine.predict(clips))
    op = next(o for o in loaded.ops if o.name == "tconv")
    assert op.kind == "buffer_conv" and op.attrs["kernel_size"] == 3
    from fixedq.engine import validate

    header = {"input_shape": [None, 3, 4], "ops": [
        {"name": "x", "kind": "input", "inputs": [], "attrs": {}, "arrays": {}},
        {"name": "t", "kind": "buffer_conv", "inputs": ["x"], "attrs": {"kernel_size": 3},
         "arrays": {"kernel": {"shape": [3, 4, 5]}}}]}
    assert validate.check_shapes(header)[1] == (None, 3, 5)
    header["ops"][1]["arrays"]["kernel"]["shape"] = [2, 4, 5]  # not kernel_size frames
    with pytest.raises(ValueError, match=r"ops\[1\] \('t', buffer_conv\): kernel \[2, 4, 5\] "
                                         "does not fit kernel_size 3"):
        validate.check_shapes(header)


def test_targets_accept_buffer_conv_on_akida2_only(quantized):
    from fixedq.engine.targets import check_target

    _, q = quantized
    engine = fe.convert(q)
    assert check_target(engine, "akida-2.0").name == "akida-2.0"
    with pytest.raises(ValueError, match=r"'tconv' \(buffer_conv\): op kind 'buffer_conv' is "
                                         "not supported"):
        check_target(engine, "akida-1.0")


def _recurrent_model():
    from fixedq.layers.temporal import StatefulRecurrent

    x = keras.Input((3, 3, 2))
    y = L.Conv2D(4, 1, name="c")(x)
    y = StatefulRecurrent(name="ssm")(y)
    y = L.ReLU()(y)
    y = BufferTempConv(3, 2, name="tc")(y)
    return keras.Model(x, L.Dense(2, name="fc")(L.Flatten()(y)))


@pytest.mark.parametrize("bits", [8, 4])
def test_stateful_recurrent_quantized_bit_exact(bits, tmp_path):
    from fixedq.layers.temporal.quantized_recurrent import QuantizedStatefulRecurrent

    rng = np.random.default_rng(8)
    model = _recurrent_model()
    model.get_layer("ssm").set_weights([np.array([0.9, 0.5, -0.7, 0.0], "float32"),
                                        np.array([0.3, -0.8, 0.6, 0.99], "float32")])
    clips = rng.normal(size=(8, 12, 3, 3, 2)).astype("float32")
    q = fixedq.quantize(model, fixedq.QuantizationParams(weight_bits=bits,
                                                         activation_bits=bits),
                        samples=clips, verbose=False)
    assert isinstance(q.get_layer("ssm"), QuantizedStatefulRecurrent)
    want = predict_clips(q, clips)
    engine = fe.convert(q)
    np.testing.assert_array_equal(engine.predict(clips), want)
    np.testing.assert_array_equal(engine.predict(clips * 40), predict_clips(q, clips * 40))
    engine.save(tmp_path / "r.fqe")
    np.testing.assert_array_equal(fe.load(tmp_path / "r.fqe").predict(clips), want)
    if bits == 8:  # 16-bit states: close to the float recurrence
        ref = predict_clips(model, clips)
        assert np.max(np.abs(want - ref)) < 0.15 * np.max(np.abs(ref))


def test_quantized_recurrent_state_tracks_the_integer_reference():
    """The Keras state equals eq. 41 computed with Python integers."""
    from fixedq.tensors.rounding import shift_round

    rng = np.random.default_rng(9)
    model = _recurrent_model()
    model.get_layer("ssm").set_weights([np.array([0.95, 0.2, -0.5, 0.7], "float32"),
                                        np.array([0.2, 0.9, 0.5, -0.6], "float32")])
    clips = rng.normal(size=(4, 6, 3, 3, 2)).astype("float32")
    q = fixedq.quantize(model, samples=clips, verbose=False)
    layer = q.get_layer("ssm")
    p = layer.integer_params()
    probe = keras.Model(q.inputs, [q.get_layer("c").output, layer.output])
    reset_buffers(q)
    s_re = s_im = np.zeros((4, 3, 3, 4), np.int64)
    f_in = layer.input_spec0.max_frac
    for t in range(6):
        u_f, y_f = (np.asarray(a, np.float64) for a in probe.predict_on_batch(clips[:, t]))
        u = np.round(u_f * 2.0**f_in).astype(np.int64)
        n_re = np.clip(shift_round(p["a_re"] * s_re - p["a_im"] * s_im, p["coef_frac"])
                       + shift_round(u, p["in_shift"]), -p["state_hi"], p["state_hi"])
        n_im = np.clip(shift_round(p["a_re"] * s_im + p["a_im"] * s_re, p["coef_frac"]),
                       -p["state_hi"], p["state_hi"])
        s_re, s_im = n_re, n_im
        y = np.clip(shift_round(s_re, p["out_shift"]), p["out_lo"], p["out_hi"])
        np.testing.assert_array_equal(y_f * 2.0**layer.output_spec.frac_array(4), y)
    reset_buffers(q)


def test_histogram_calibration_and_qconfig_replay_on_clips():
    """A histogram method reads the clips twice (frame by frame); the dumped q-config
    reproduces the model bit for bit without samples."""
    rng = np.random.default_rng(10)
    model = _stream_model()
    clips = _clips(rng, 8)
    q = fixedq.quantize(model, samples=clips, calibration="mse", verbose=False)
    config = fixedq.dump_config(q)
    again = fixedq.quantize(model, q_config=config, verbose=False)
    test = _clips(rng, 3)
    np.testing.assert_array_equal(predict_clips(again, test), predict_clips(q, test))
    with pytest.raises(TypeError, match="clips given as a NumPy array"):
        fixedq.quantize(model, samples=(c for c in clips), verbose=False)


@pytest.mark.parametrize("state_bits", [8, 12, 24])
def test_state_bits_from_the_q_config(state_bits, tmp_path):
    """``state_bits`` per layer (overrides and q-config replay): the layer, the engine op
    (its saturation bound) and the .fqe follow it, bit-exact with Keras at worst-case inputs."""
    rng = np.random.default_rng(11)
    model = _recurrent_model()
    model.get_layer("ssm").set_weights([np.array([0.97, 0.5, -0.7, 0.0], "float32"),
                                        np.array([0.2, -0.8, 0.6, 0.99], "float32")])
    clips = rng.normal(size=(6, 10, 3, 3, 2)).astype("float32")
    q = fixedq.quantize(model, samples=clips, verbose=False,
                        overrides={"ssm": {"state_bits": state_bits}})
    layer = q.get_layer("ssm")
    assert layer.state_bits == state_bits
    config = fixedq.dump_config(q)
    assert config["layers"]["ssm"]["state_bits"] == state_bits
    engine = fe.convert(q)
    op = next(op for op in engine.ops if op.kind == "recurrent")
    assert op.attrs["state_bits"] == state_bits
    assert int(op.arrays["state_hi"][0]) == 2 ** (state_bits - 1) - 1
    for x in (clips, clips * 1000):  # the state saturates at +-state_hi in both
        np.testing.assert_array_equal(engine.predict(x), predict_clips(q, x))
    engine.save(tmp_path / "r.fqe")
    np.testing.assert_array_equal(fe.load(tmp_path / "r.fqe").predict(clips),
                                  predict_clips(q, clips))
    replay = fixedq.quantize(model, samples=clips, verbose=False, q_config=config)
    assert replay.get_layer("ssm").state_bits == state_bits
    default = fixedq.quantize(model, samples=clips, verbose=False)
    assert default.get_layer("ssm").state_bits == 16


@pytest.mark.parametrize("value", [3, 25, 16.0, "16", True, None])
def test_bad_state_bits_are_refused_naming_the_value(value):
    model = _recurrent_model()
    clips = np.zeros((2, 2, 3, 3, 2), "float32")
    with pytest.raises(ValueError, match=r"layer 'ssm', key 'state_bits': must be an integer "
                                         r"in \[4, 24\]"):
        fixedq.quantize(model, samples=clips, verbose=False,
                        overrides={"ssm": {"state_bits": value}})


def test_state_bits_on_another_layer_is_refused():
    model = _recurrent_model()
    clips = np.zeros((2, 2, 3, 3, 2), "float32")
    with pytest.raises(ValueError, match=r"layer 'c', key 'state_bits': only StatefulRecurrent "
                                         r"layers have an integer state; layer 'c' is a Conv2D"):
        fixedq.quantize(model, samples=clips, verbose=False,
                        overrides={"c": {"state_bits": 12}})
