"""Calibration, weight rounding and bias correction keep statistics, not activations: the
statistics do not depend on how the samples are split, and the layer-by-layer runner gives
the model's own values (issue 13.6)."""

import keras
import numpy as np
import pytest
from keras import ops

from fixedq import QuantizationParams, quantize
from fixedq.models import calibrate as cal
from fixedq.models import layerwise
from fixedq.models import weight_rounding as wr

QP4 = QuantizationParams(weight_bits=4, activation_bits=4)


def _stats_equal(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name].minimum, b[name].minimum)
        np.testing.assert_array_equal(a[name].maximum, b[name].maximum)
        assert len(a[name].batch_pos) == len(b[name].batch_pos)
        for x, y in zip(a[name].batch_pos + a[name].batch_neg,
                        b[name].batch_pos + b[name].batch_neg, strict=True):
            np.testing.assert_array_equal(x, y)
        for x, y in ((a[name].hist_pos, b[name].hist_pos), (a[name].hist_neg, b[name].hist_neg)):
            assert (x is None) == (y is None)
            if x is not None:
                np.testing.assert_array_equal(x, y)


def test_calibration_extremes_are_the_models_exact_min_max(trained_cnn, digits):
    x = np.asarray(digits[0][:96])
    names = ["conv1", "sep", "dw", "add", "gap", "logits"]
    stats = cal.calibrate(trained_cnn, x, names, batch_size=40, verbose=False)
    outs = keras.Model(trained_cnn.inputs, [trained_cnn.get_layer(n).output for n in names])
    values = outs.predict(x, verbose=0, batch_size=96)
    for name, v in zip(names, values, strict=True):
        axes = tuple(range(v.ndim - 1))
        np.testing.assert_array_equal(stats[name].minimum, v.min(axis=axes).astype(np.float64))
        np.testing.assert_array_equal(stats[name].maximum, v.max(axis=axes).astype(np.float64))
        assert len(stats[name].batch_pos) == 3  # one entry per batch of 40 (40, 40, 16)


def test_calibration_extremes_independent_of_batching(trained_cnn, digits):
    x = np.asarray(digits[0][:64])
    one = cal.calibrate(trained_cnn, x, ["conv1", "add", "logits"], batch_size=64,
                        verbose=False)
    many = cal.calibrate(trained_cnn, x, ["conv1", "add", "logits"], batch_size=5,
                         verbose=False)
    for name in one:
        np.testing.assert_array_equal(one[name].minimum, many[name].minimum)
        np.testing.assert_array_equal(one[name].maximum, many[name].maximum)


def _elementwise():
    """Only elementwise layers: every value is the same whatever the batch it runs in."""
    x = keras.Input((6, 4), name="x")
    a = keras.layers.Rescaling(1.7, offset=-0.4, name="a")(x)
    r = keras.layers.ReLU(max_value=1.5, name="r")(a)
    m = keras.layers.Multiply(name="m")([r, x])
    s = keras.layers.Add(name="s")([m, a])
    return keras.Model(x, keras.layers.LeakyReLU(0.1, name="lk")(s))


@pytest.mark.parametrize("histograms", [False, True])
def test_calibration_sub_batches_do_not_change_any_statistic(monkeypatch, histograms):
    """A memory budget that forces one sample per model call gives exactly the same
    statistics (per-batch maxima and histogram counts included) when the model's values do
    not depend on the batch."""
    x = np.random.default_rng(0).normal(size=(50, 6, 4)).astype("float32")
    model = _elementwise()
    names = ["a", "r", "m", "s", "lk"]
    whole = cal.calibrate(model, x, names, batch_size=16, verbose=False,
                          histograms=histograms, bins=64)
    monkeypatch.setattr(cal, "MEMORY_BUDGET", 1)
    assert cal.chunk_size(10) == 1
    split = cal.calibrate(model, x, names, batch_size=16, verbose=False,
                          histograms=histograms, bins=64)
    _stats_equal(whole, split)
    assert len(split["lk"].batch_pos) == 4  # one entry per batch of 16, not per sub-batch


def test_calibration_sub_batches_of_a_cnn_within_its_float_rounding(trained_cnn, digits,
                                                                    monkeypatch):
    """Convolutions on 1 sample vs 16 may round differently in float32 (oneDNN): the
    documented bound is the model's own float32 rounding (here <= 1e-6 relative)."""
    x = np.asarray(digits[0][:50])
    names = ["conv1", "sep", "add", "logits"]
    whole = cal.calibrate(trained_cnn, x, names, batch_size=16, verbose=False)
    monkeypatch.setattr(cal, "MEMORY_BUDGET", 1)
    split = cal.calibrate(trained_cnn, x, names, batch_size=16, verbose=False)
    for name in names:
        scale = np.max(np.abs(whole[name].maximum)) + np.max(np.abs(whole[name].minimum))
        for got, want in ((split[name].minimum, whole[name].minimum),
                          (split[name].maximum, whole[name].maximum)):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * scale)


def test_calibration_memory_budget_sizes_sub_batches():
    assert cal.chunk_size(100, budget=12 * 100 * 7) == 7
    assert cal.chunk_size(10**9, budget=1) == 1


def _branchy():
    x = keras.Input((8, 8, 1), name="img")
    a = keras.layers.Conv2D(6, 3, padding="same", name="a")(x)
    b = keras.layers.Conv2D(6, 1, name="b")(x)
    s = keras.layers.Add(name="s")([a, b])
    r = keras.layers.ReLU(name="r")(s)
    c = keras.layers.DepthwiseConv2D(3, padding="same", name="c")(r)
    m = keras.layers.Multiply(name="m")([c, r])
    g = keras.layers.GlobalAveragePooling2D(name="g")(m)
    return keras.Model(x, keras.layers.Dense(4, name="d")(g))


@pytest.mark.parametrize("chunk", [None, 7])
def test_layerwise_run_gives_the_models_values(digits, chunk):
    keras.utils.set_random_seed(1)
    model = _branchy()
    x = np.asarray(digits[0][:30])
    run = layerwise.LayerwiseRun(model, x, chunk)
    for name in ("s", "c", "m", "d"):  # in model order, as quantize's passes ask
        want = keras.Model(model.inputs, model.get_layer(name).input)(x)
        want = [want] if not isinstance(want, list) else want
        tensors = model.get_layer(name).input
        tensors = tensors if isinstance(tensors, list) else [tensors]
        for t, w in zip(tensors, want, strict=True):
            got = np.concatenate([ops.convert_to_numpy(p) for p in run.value(t)])
            if chunk is None:
                np.testing.assert_array_equal(got, ops.convert_to_numpy(w))
            else:  # float convolutions on sub-batches: the same up to float32 rounding
                np.testing.assert_allclose(got, ops.convert_to_numpy(w), rtol=1e-5,
                                           atol=1e-6)
    assert len(run.value(model.get_layer("d").input)[0]) == (30 if chunk is None else 7)


def test_layerwise_run_releases_tensors_after_their_last_use(digits):
    model = _branchy()
    run = layerwise.LayerwiseRun(model, np.asarray(digits[0][:4]))
    run.value(model.get_layer("d").input)
    assert run.held == 1  # only the requested input of "d"; x, a, b, s, r, c, m are gone
    with pytest.raises(ValueError, match="not computed by model"):
        run.value(keras.Input((3,)))


def test_layerwise_run_uses_weights_as_they_are_when_asked(digits):
    model = _branchy()
    x = np.asarray(digits[0][:5])
    run = layerwise.LayerwiseRun(model, x)
    for t in model.get_layer("s").input:  # a and b run now
        run.value(t)
    model.get_layer("c").set_weights([w * 0 for w in model.get_layer("c").get_weights()])
    got = ops.convert_to_numpy(run.value(model.get_layer("m").input[0])[0])
    assert np.all(got == 0)  # c ran after the change


def test_live_elements_and_frame_cap_keep_every_bench_frame():
    """The bench-size models (28x28 digits) keep all 256 default frames; a 224x224 one is capped."""
    x = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(32, 3, padding="same")(x)
    h = keras.layers.DepthwiseConv2D(3, padding="same")(h)
    small = keras.Model(x, keras.layers.Conv2D(64, 1)(h))
    assert layerwise.live_elements(small) == 28 * 28 * (32 + 64)  # dw output + pw output
    assert wr.frame_cap([small, small]) >= 256
    big = keras.applications.MobileNetV2(input_shape=(224, 224, 3), weights=None)
    assert 8 <= wr.frame_cap([big, big]) < 64


def test_moments_are_the_same_for_any_split_of_the_samples(trained_cnn, digits):
    q = quantize(trained_cnn, QP4, samples=np.asarray(digits[0][:128]), verbose=False,
                 bias_correction=False, weight_rounding=False)
    x = np.asarray(digits[0][:45])
    for name in ("conv1", "dw", "pw", "logits"):
        layer = q.get_layer(name)
        xin = ops.convert_to_numpy(keras.Model(q.inputs[0], layer.input)(x))
        whole_h = wr.input_moments(layer, xin)
        whole_hc = wr.input_moments(layer, xin, center=True, x_float=xin * 1.01)
        acc, acc_c = wr.Moments(layer, len(x)), wr.Moments(layer, len(x), True, True)
        for lo, hi in ((0, 3), (3, 20), (20, 21), (21, 45)):
            acc.add(xin[lo:hi])
            acc_c.add(xin[lo:hi], xin[lo:hi] * 1.01)
        np.testing.assert_array_equal(acc.result(), whole_h)
        with pytest.raises(ValueError, match="already read"):
            acc.result()  # computed in place, once
        for got, want in zip(acc_c.result(), whole_hc, strict=True):
            np.testing.assert_array_equal(got, want)


def test_moments_pieces_follow_the_patch_budget(trained_cnn, digits, monkeypatch):
    """Large patches are processed a few samples at a time; without row subsampling the
    moments are the same sums (up to float64 summation order)."""
    q = quantize(trained_cnn, QP4, samples=np.asarray(digits[0][:128]), verbose=False,
                 bias_correction=False, weight_rounding=False)
    layer = q.get_layer("conv1")
    xin = ops.convert_to_numpy(keras.Model(q.inputs[0], layer.input)(np.asarray(digits[0][:40])))
    want = wr.input_moments(layer, xin)
    monkeypatch.setattr(wr, "PATCH_BUDGET", 1)
    acc = wr.Moments(layer, len(xin))
    acc.add(xin)
    assert acc.chunk == 1
    np.testing.assert_allclose(acc.result(), want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("method", ["gptq", "local"])
@pytest.mark.parametrize("with_target", [False, True])
def test_depthwise_groups_at_once_equal_group_by_group(method, with_target):
    """The vectorized per-channel optimization of depthwise layers gives the integers of
    optimize_rows run channel by channel (dead inputs and fixed maxima included)."""
    rng = np.random.default_rng(3)
    groups, m, d, qmax = 40, 2, 9, 7
    x = rng.normal(size=(groups, 300, d)) @ rng.normal(size=(groups, d, d))
    x[5, :, 2] = 0.0  # a dead input
    h = x.transpose(0, 2, 1) @ x / 300
    c = h * rng.uniform(0.9, 1.1, size=h.shape) if with_target else None
    w = rng.uniform(-qmax, qmax, size=(groups, m, d))
    w[:, :, 0] = qmax  # the scale's elements
    fixed = np.abs(w) >= qmax - 1e-9
    options = wr.WeightRounding(method=method)
    got = wr._optimize_groups(w, h, c, qmax, options, fixed)
    for g in range(groups):
        target = None if c is None else wr._ls_target(w[g], h[g], c[g], options.damp)
        want, _ = wr.optimize_rows(w[g], h[g], qmax, options, fixed[g], target)
        np.testing.assert_array_equal(got[g], want)
