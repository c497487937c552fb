"""Weight rounding optimization (fixedq.models.weight_rounding) on a CNN trained on real digits."""

import json

import keras
import numpy as np
import pytest
from keras import ops

import fixedq.engine as fe
from fixedq import QuantizationParams, dump_config, load_model, quantize, save_model
from fixedq.models.weight_rounding import (
    WeightRounding,
    decode,
    optimize_rounding,
    optimize_rows,
)

QP4 = QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4)


def _integers(layer):
    return np.asarray(ops.convert_to_numpy(layer.quantized_weights()[0]), np.int64)


def _quantized_layers(q):
    return [ly for ly in q.layers if hasattr(ly, "quantized_weights")]


def _output_error(layer, x, w_q):
    """Sum of squared differences between the layer's linear op with the float kernel and with
    the dequantized integers ``w_q``, on inputs ``x`` (independent of the module's moments)."""
    scale = layer.quantized_weights()[1]
    w_deq = ops.cast(ops.cast(w_q, "float64") * scale, "float32")
    ref = layer._linear(x, ops.cast(layer.effective_kernel(), "float32"))
    err = ops.convert_to_numpy(layer._linear(x, w_deq) - ref)
    return float(np.sum(np.square(err.astype(np.float64))))


def test_optimize_rows_never_worse_than_nearest_and_keeps_the_max():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 12)) @ rng.normal(size=(12, 12))  # correlated inputs
    h = x.T @ x / len(x)
    w = rng.uniform(-7, 7, size=(20, 12))
    w[np.arange(20), rng.integers(0, 12, 20)] = 7.0 * rng.choice([-1, 1], 20)
    for options in (WeightRounding(), WeightRounding(method="local", sweeps=5)):
        q, nearest = optimize_rows(w, h, 7, options)
        energy = np.einsum("md,de,me->m", q - w, h, q - w)
        base = np.einsum("md,de,me->m", nearest - w, h, nearest - w)
        assert np.all(energy <= base + 1e-9) and energy.sum() < 0.7 * base.sum()
        assert np.all(np.abs(q) <= 7) and np.all(q[np.abs(w) == 7] == w[np.abs(w) == 7])


def test_reconstruction_error_improves_on_trained_cnn(trained_cnn, digits):
    x = digits[0][:256]
    q = quantize(trained_cnn, QP4, samples=x, verbose=False, bias_correction=False,
                 weight_rounding=False)
    layers = [ly for ly in _quantized_layers(q) if ly.weight_bits <= 4]
    feeds = [keras.Model(q.inputs[0], ly.input) for ly in layers]
    held_out = digits[2][:128]
    nearest = {ly.name: _integers(ly) for ly in layers}
    before = {ly.name: _output_error(ly, f(held_out), nearest[ly.name])
              for ly, f in zip(layers, feeds, strict=True)}
    report = optimize_rounding(q, x, WeightRounding(target="quantized"), verbose=False)
    assert set(report) == {ly.name for ly in layers} and len(layers) >= 4
    for layer in layers:
        assert report[layer.name]["after"] <= report[layer.name]["before"]
        assert np.array_equal(_integers(layer), decode(
            layer.qconfig["weight_rounding"]["kernel"], layer.kernel.shape))
    # the first layer's inputs did not change: an exact comparison on held-out digits
    first = layers[0]
    after = _output_error(first, feeds[0](held_out), _integers(first))
    assert after < 0.8 * before[first.name], (before[first.name], after)
    total_before = sum(r["before"] for r in report.values())
    total_after = sum(r["after"] for r in report.values())
    assert total_after < 0.7 * total_before, (total_before, total_after)


def test_latent_weights_stay_close_to_the_float_ones(trained_cnn, digits):
    x = digits[0][:128]
    kwargs = dict(samples=x, verbose=False, bias_correction=False)
    plain = quantize(trained_cnn, QP4, weight_rounding=False, **kwargs)
    for keep in (True, False):
        q = quantize(trained_cnn, QP4, weight_rounding={"frames": 64, "keep_latent": keep},
                     **kwargs)
        layer, ref = q.get_layer("pw"), plain.get_layer("pw")
        w, w0 = layer.kernel.numpy(), ref.kernel.numpy()
        q1, q0 = _integers(layer), _integers(ref)
        scale = np.asarray(ops.convert_to_numpy(layer.quantized_weights()[1]))
        assert np.array_equal(scale, np.asarray(ops.convert_to_numpy(ref.quantized_weights()[1])))
        moved = q1 != q0
        # what the module promises: the integers stay in range and the channel maxima (the
        # scale's source) keep their value; how far a weight moves depends on the calibration
        # frames' float results, so no distance bound is asserted
        qmax = 2 ** (layer.weight_bits - 1) - 1
        assert moved.any() and np.all(np.abs(q1) <= qmax)
        top0 = np.abs(w0) == np.max(np.abs(w0), axis=(0, 1, 2), keepdims=True)
        assert np.array_equal(q1[top0], q0[top0]) and np.all(np.abs(q0[top0]) == qmax)
        if keep:  # the float kernel is untouched: the layer's kernel_offset holds the integers
            assert np.array_equal(w, w0)
            assert np.array_equal(layer.kernel_offset.numpy() != 0, moved)
        else:
            top = np.abs(w0) == np.max(np.abs(w0), axis=(0, 1, 2), keepdims=True)
            assert np.allclose((w / scale)[~top], q1[~top], rtol=0, atol=1e-5)


@pytest.mark.parametrize("target", ["float", "quantized"])
def test_engine_bit_exact_qconfig_and_keras_roundtrip(trained_cnn, digits, tmp_path, target):
    x, xte = digits[0][:256], digits[2][:200]
    q = quantize(trained_cnn, QP4, samples=x, verbose=False,
                 weight_rounding={"target": target, "frames": 128})
    cfg = json.loads(json.dumps(dump_config(q)))
    rounded = [n for n, e in cfg["layers"].items() if "weight_rounding" in e]
    assert rounded and "conv1" not in rounded  # the 8-bit first layer keeps nearest rounding
    want = q.predict(xte, verbose=0)
    assert np.array_equal(fe.convert(q).predict(xte, batch_size=64), want)
    again = quantize(trained_cnn, q_config=cfg, verbose=False)
    assert np.array_equal(again.predict(xte, verbose=0), want)
    for name in rounded:
        assert np.array_equal(_integers(again.get_layer(name)), _integers(q.get_layer(name)))
    path = str(tmp_path / "rounded.keras")
    save_model(q, path)
    assert np.array_equal(load_model(path).predict(xte, verbose=0), want)
    # a fine-tuning step keeps Keras and the engine identical (the kernels left the grid)
    q.compile(keras.optimizers.Adam(1e-3),
              keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    q.fit(x, digits[1][:256], epochs=1, batch_size=64, verbose=0)
    assert np.array_equal(fe.convert(q).predict(xte, batch_size=64), q.predict(xte, verbose=0))


def test_folded_rescaling_layer_at_4_bits_is_exact(digits):
    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 1), name="img")
    h = keras.layers.Rescaling(1 / 16, name="rescale")(inp)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(h)
    h = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(h)
    h = keras.layers.Flatten(name="flat")(keras.layers.ReLU(name="relu")(h))
    model = keras.Model(inp, keras.layers.Dense(10, name="fc")(h))
    x = np.round(digits[0][:128] * 16)
    qp = QuantizationParams(input_weight_bits=4, weight_bits=3, activation_bits=4)
    q = quantize(model, qp, samples=x, verbose=False)  # "auto": on at <= 4-bit weights
    layers = {ly.name for ly in _quantized_layers(q) if "weight_rounding" in ly.qconfig}
    assert layers == {"stem", "dw", "fc"} and q.get_layer("stem").kernel_unit is not None
    assert np.array_equal(fe.convert(q).predict(x, batch_size=64), q.predict(x, verbose=0))


def test_auto_default_and_opt_out(trained_cnn, digits):
    x = digits[0][:128]
    q4 = quantize(trained_cnn, QP4, samples=x, verbose=False, weight_rounding=False)
    assert not any("weight_rounding" in e for e in dump_config(q4)["layers"].values())
    q8 = quantize(trained_cnn, QuantizationParams(), samples=x, verbose=False)
    assert not any("weight_rounding" in e for e in dump_config(q8)["layers"].values())
    with pytest.warns(UserWarning, match="random samples"):
        qr = quantize(trained_cnn, QP4, num_samples=64, verbose=False)  # no samples: nearest
    assert not any("weight_rounding" in e for e in dump_config(qr)["layers"].values())


def test_edited_bits_drop_the_recorded_rounding(trained_cnn, digits):
    x = digits[0][:128]
    q = quantize(trained_cnn, QP4, samples=x, verbose=False,
                 weight_rounding={"frames": 64})
    cfg = dump_config(q)
    cfg["layers"]["pw"]["weight_bits"] = 8
    with pytest.warns(UserWarning, match="'pw' now has 8-bit weights"):
        again = quantize(trained_cnn, q_config=cfg, verbose=False)
    assert "weight_rounding" not in dump_config(again)["layers"]["pw"]


def test_bad_input(trained_cnn, digits):
    x = digits[0][:64]
    for bad, err, match in [("yes", ValueError, "method must be one of"),
                            (3, TypeError, "weight_rounding must be"),
                            ({"frames": 0}, ValueError, "frames must be an integer >= 1"),
                            ({"damp": 2.0}, ValueError, "damp"),
                            ({"target": "logits"}, ValueError, "target"),
                            ({"keep_latent": 1}, ValueError, "keep_latent must be true"),
                            ({"bogus": 1}, ValueError, "unknown weight_rounding keys"),
                            ({"max_bits": 12}, ValueError, r"max_bits must be an integer in "
                                                           r"\[2, 8\]")]:
        with pytest.raises(err, match=match):
            quantize(trained_cnn, QP4, samples=x, verbose=False, weight_rounding=bad)
    with pytest.raises(ValueError, match="needs calibration samples"):
        quantize(trained_cnn, QP4, num_samples=32, verbose=False, weight_rounding=True)
    q = quantize(trained_cnn, QP4, samples=x, verbose=False, weight_rounding={"frames": 32})
    cfg = dump_config(q)
    cfg["layers"]["pw"]["weight_rounding"]["kernel"] = "AAAA"
    with pytest.raises(ValueError, match="'pw' weight_rounding does not fit"):
        quantize(trained_cnn, q_config=cfg, verbose=False)
    with pytest.raises(ValueError, match="already carry a weight_rounding"):
        optimize_rounding(q, x, WeightRounding(target="quantized"), verbose=False)


def test_input_moments_subsample_large_layers(trained_cnn, digits, monkeypatch):
    """Past the work budget the moments come from a seeded random subset of the patch rows
    (at least MIN_ROWS_PER_DIM * d of them): close to the full moments, same result twice, and
    the optimization still beats nearest rounding on the full inputs."""
    from fixedq.models import weight_rounding as wr

    x = digits[0][:64]
    q = quantize(trained_cnn, QP4, samples=x, verbose=False, weight_rounding=False)
    from fixedq.layers.neural import QuantizedConv2D

    layer = next(ly for ly in _quantized_layers(q) if ly.weight_bits == 4
                 and isinstance(ly, QuantizedConv2D))
    feed = keras.Model(q.inputs, layer.input)
    xin = np.asarray(feed.predict(x, verbose=0), np.float64)
    full = wr.input_moments(layer, xin)
    rows = wr._rows_of(layer, xin[:1]).shape[1] * len(xin)
    d = full.shape[-1]
    monkeypatch.setattr(wr, "MOMENT_BUDGET", 1.0)  # cap = MIN_ROWS_PER_DIM * d rows
    keep = wr._row_fraction(layer, xin)
    assert 0 < keep < 1 and keep == pytest.approx(wr.MIN_ROWS_PER_DIM * d / rows)
    sub = wr.input_moments(layer, xin)
    np.testing.assert_array_equal(sub, wr.input_moments(layer, xin))  # seeded
    assert not np.array_equal(sub, full)
    rel = np.linalg.norm(sub - full) / np.linalg.norm(full)
    assert rel < 0.3, rel
    w = np.asarray(ops.convert_to_numpy(layer.effective_kernel()), np.float64)
    opts = WeightRounding()
    w_q, nearest, _ = wr.optimize_layer(layer, xin, opts)
    assert _output_error(layer, xin.astype("float32"), w_q) \
        <= _output_error(layer, xin.astype("float32"), nearest)
    assert w.shape == w_q.shape


def test_auto_replays_q_configs_and_skips_one_shot_and_tiny_samples(trained_cnn, digits):
    """"auto" weight rounding and bias correction: a q-config is replayed as recorded even
    when samples are given; a one-shot generator (consumed by calibration) skips both with a
    warning (an explicit request is an error); fewer than MIN_AUTO_FRAMES samples skip the
    rounding with a warning."""
    from fixedq.models.quantize import MIN_AUTO_FRAMES

    x = digits[0][:64]
    plain = quantize(trained_cnn, QP4, samples=x, verbose=False, weight_rounding=False,
                     bias_correction=False)
    cfg = dump_config(plain)
    again = quantize(trained_cnn, q_config=json.loads(json.dumps(cfg)), samples=x,
                     verbose=False)
    assert dump_config(again) == cfg
    np.testing.assert_array_equal(again.predict(x, verbose=0), plain.predict(x, verbose=0))

    def gen():
        for i in range(0, 64, 16):
            yield x[i:i + 16]

    with pytest.warns(UserWarning, match="one-shot generator"):
        q = quantize(trained_cnn, QP4, samples=gen(), verbose=False)
    layers = dump_config(q)["layers"].values()
    assert not any("weight_rounding" in e or "bias_delta" in e for e in layers)
    with pytest.raises(ValueError, match="one-shot generator"):
        quantize(trained_cnn, QP4, samples=gen(), verbose=False, weight_rounding=True)
    with pytest.warns(UserWarning, match="weight rounding skipped"):
        q = quantize(trained_cnn, QP4, samples=x[:MIN_AUTO_FRAMES - 1], verbose=False)
    assert not any("weight_rounding" in e for e in dump_config(q)["layers"].values())
