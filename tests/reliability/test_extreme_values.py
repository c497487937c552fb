"""Extreme inputs (issue 17): huge, infinite and NaN values saturate or fail cleanly.

The input quantizer clips ``x * 2^f`` to the integer range *in float* before converting
(docs/numerics.md, eq. 4): every finite value, however large, and ``±inf`` give the ends of the
range, with no float -> int overflow and no RuntimeWarning, in Keras and in the engine alike,
bit for bit. NaN: the engine raises ``ValueError``; the Keras layer quantizes it as 0.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

import fixedq
import fixedq.engine as fe
from fixedq.layers.params import QuantizationParams
from fixedq.tensors import kops
from fixedq.tensors.rounding import quantize_float, quantize_input, round_half_up

L = keras.layers
F32_MAX = float(np.finfo(np.float32).max)
HUGE = [1e30, -1e30, 7e16, -7e16, np.inf, -np.inf, F32_MAX, -F32_MAX, 1e17, -3e18]


@pytest.fixture(scope="module")
def models():
    """A small conv net (signed input, per-axis frac_bits), its quantized twin and engine."""
    x = keras.Input((6, 6, 3))
    y = L.Conv2D(4, 3, padding="same")(x)
    y = L.ReLU()(y)
    y = L.Conv2D(4, 3)(y)
    y = L.Flatten()(y)
    y = L.Dense(3)(y)
    model = keras.Model(x, y)
    samples = np.random.default_rng(0).normal(size=(32, 6, 6, 3)).astype("float32")
    qmodel = fixedq.quantize(model, QuantizationParams(), samples=samples, verbose=False)
    return samples, qmodel, fe.convert(qmodel)


def _input_quantizer(qmodel):
    return next(ly for ly in qmodel.layers if type(ly).__name__ == "InputQuantizer")


def _extreme_batch(samples):
    """Normal samples with extreme values planted at several positions and channels."""
    x = samples[:len(HUGE)].copy()
    for i, v in enumerate(HUGE):
        x[i, i % 6, (2 * i) % 6, i % 3] = v
        x[i, 5 - i % 6, 3, (i + 1) % 3] = -v if np.isfinite(v) else v
    x[-1, :, :, :] = np.inf  # a whole sample at +inf
    return x


def _top_value_input(qmodel, sign):
    """The input whose every element is the largest (sign=+1) / smallest representable one."""
    iq = _input_quantizer(qmodel)
    bound = iq.integer_params()["hi" if sign > 0 else "lo"]
    return np.ldexp(np.asarray(bound, np.float64), -np.asarray(iq.integer_params()["frac"]))


def test_keras_and_engine_agree_bit_for_bit(models):
    samples, qmodel, engine = models
    x = _extreme_batch(samples)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning (cast overflow) anywhere
        want = qmodel.predict(x, verbose=0)
        got = engine.predict(x, batch_size=4)
        ev = engine.predict(x, batch_size=5, mode="event")
        ints = engine.quantize_inputs(x)
    assert np.array_equal(want, got) and np.array_equal(want, ev)
    keras_ints = np.asarray(kops.quantize_float(x, *[_input_quantizer(qmodel).integer_params()[k]
                                                     for k in ("frac", "lo", "hi")]))
    assert np.array_equal(keras_ints, ints)


def test_huge_values_saturate_at_the_range_ends(models):
    samples, qmodel, engine = models
    params = _input_quantizer(qmodel).integer_params()
    lo, hi = params["lo"], params["hi"]
    x = _extreme_batch(samples)
    ints = engine.quantize_inputs(x)
    big = np.isinf(x) | (np.abs(x) >= 7e16)
    assert big.sum() > 2 * len(HUGE) - 2
    top = np.broadcast_to(hi, x.shape)[big & (x > 0)]
    bottom = np.broadcast_to(lo, x.shape)[big & (x < 0)]
    assert np.array_equal(ints[big & (x > 0)], top)
    assert np.array_equal(ints[big & (x < 0)], bottom)
    # the normal values are untouched: same integers as before the planting
    normal = engine.quantize_inputs(samples[:len(HUGE)])
    assert np.array_equal(ints[~big], normal[~big])


@pytest.mark.parametrize("sign", [1, -1])
def test_saturated_sample_equals_the_largest_representable_input(models, sign):
    _, qmodel, engine = models
    edge = _top_value_input(qmodel, sign)
    x = np.stack([np.broadcast_to(edge, (6, 6, 3)).astype("float32"),
                  np.full((6, 6, 3), sign * np.inf, "float32"),
                  np.full((6, 6, 3), sign * 1e30, "float32"),
                  np.full((6, 6, 3), sign * 7e16, "float32"),
                  np.full((6, 6, 3), sign * F32_MAX, "float32")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        want = qmodel.predict(x, verbose=0)
        got = engine.predict(x)
    assert np.array_equal(want, got)
    for row in want[1:]:
        assert np.array_equal(row, want[0])


def test_float64_inputs_beyond_float32_saturate(models):
    """float64 inputs beyond float32's range become ±inf in the input cast, then saturate."""
    samples, qmodel, engine = models
    x = samples[:3].astype(np.float64)
    x[0, 0, 0, 0], x[1, 1, 1, 1], x[2, 2, 2, 2] = 1e300, -1e300, 1e39
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = engine.predict(x)
    with np.errstate(over="ignore"):
        as_f32 = x.astype("float32")
    assert np.isinf(as_f32).sum() == 3
    assert np.array_equal(qmodel.predict(as_f32, verbose=0), got)


def test_nan_engine_raises_keras_maps_to_zero(models):
    samples, qmodel, engine = models
    x = samples[:3].copy()
    x[0, 0, 0, 0] = x[2, 1, 1, 1] = np.nan
    for run in (lambda: engine.predict(x, batch_size=1), lambda: engine.quantize_inputs(x),
                lambda: engine.predict(x, mode="event")):
        with pytest.raises(ValueError, match="input contains 2 NaN values"):
            run()
    with pytest.raises(ValueError, match="input contains 1 NaN value;"):
        engine.predict(x[:1])
    # Keras (a layer inside a graph cannot raise per value): NaN is quantized as 0, exactly
    # what the engine computes on the same input with NaN replaced by 0.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        want = qmodel.predict(x, verbose=0)
    assert np.array_equal(want, engine.predict(np.nan_to_num(x, nan=0.0)))


def test_calibration_rejects_nan_samples():
    model = keras.Sequential([keras.Input((4,)), L.Dense(2)])
    bad = np.ones((8, 4), "float32")
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fixedq.quantize(model, samples=bad, verbose=False)


def test_numpy_and_keras_primitives_saturate_without_warnings():
    x = np.array([0.3, -0.3, 1e30, -1e30, 7e16, np.inf, -np.inf, F32_MAX, 1e308])
    lo, hi = np.array(-128), np.array(127)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v = quantize_input(x, 5, lo, hi)
        k = np.asarray(kops.quantize_float(x, 5, lo, hi))
        r = round_half_up(np.array([1e300, -1e300, np.inf, -np.inf, 2.5]))
        kr = np.asarray(kops.round_half_up(np.array([1e300, -1e300, np.inf, -np.inf, 2.5])))
        q, n = quantize_float(np.array([1e300, -1e300, 1.0]), 10, 7)
    assert v.tolist() == [10, -10, 127, -128, 127, 127, -128, 127, 127]
    assert np.array_equal(v, k)
    assert r.tolist() == kr.tolist() == [2**62, -2**62, 2**62, -2**62, 3]
    assert q.tolist() == [127, -128, 127] and n == 3
