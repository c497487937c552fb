"""Transformer layers: float definitions, integer kernels vs exact references, quantized layers
(error in LSBs, config round trip, straight-through gradients) and bad input."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from fixedq.engine import transformer_ops as T
from fixedq.layers.spec import QSpec
from fixedq.layers.transformers import (
    AddPositionEmbs,
    Attention,
    ClassToken,
    ExtractToken,
    LayerMadNormalization,
    QuantizedAttention,
    QuantizedLayerMadNormalization,
    QuantizedShiftmax,
    Shiftmax,
    intops,
)

RNG = np.random.default_rng(0)


def _np_shiftmax(x):
    e = 2.0 ** (x - x.max(-1, keepdims=True))
    return e / 2.0 ** np.round(np.log2(e.sum(-1, keepdims=True)))


def test_shiftmax_definition_and_error_vs_softmax():
    x = RNG.normal(size=(200, 16)).astype("float32") * 3
    y = np.asarray(Shiftmax()(x))
    np.testing.assert_allclose(y, _np_shiftmax(x.astype(np.float64)), rtol=1e-5, atol=1e-7)
    sums = y.sum(-1)
    assert np.all(sums >= 2**-0.5 - 1e-6) and np.all(sums < 2**0.5 + 1e-6)
    # vs a base-2 softmax the only error is the power-of-two normalization: ratio in [0.707, 1.414)
    soft2 = 2.0 ** x / (2.0 ** x).sum(-1, keepdims=True)
    ratio = y / soft2
    assert np.all(ratio >= 2**-0.5 - 1e-5) and np.all(ratio <= 2**0.5 + 1e-5)


def test_shiftmax_gradient_is_softmax_like():
    x = keras.Variable(RNG.normal(size=(4, 6)).astype("float32"))
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = keras.ops.sum(Shiftmax()(x)[:, 0])
    g = tape.gradient(loss, x).numpy()
    assert np.all(np.isfinite(g)) and np.all(g[:, 0] > 0) and np.all(g[:, 1:] <= 0)


def test_mad_norm_definition():
    x = RNG.normal(size=(3, 5, 12)).astype("float32")
    layer = LayerMadNormalization(epsilon=1e-3)
    layer.build(x.shape)
    g, b = RNG.normal(size=12), RNG.normal(size=12)
    layer.set_weights([g, b])
    c = x - x.mean(-1, keepdims=True)
    want = c / (np.abs(c).mean(-1, keepdims=True) + 1e-3) * g + b
    np.testing.assert_allclose(np.asarray(layer(x)), want, rtol=1e-4, atol=1e-4)


def test_tokens_and_attention_shapes():
    x = RNG.normal(size=(2, 5, 8)).astype("float32")
    assert ClassToken()(x).shape == (2, 6, 8)
    assert AddPositionEmbs()(x).shape == (2, 5, 8)
    assert np.array_equal(np.asarray(ExtractToken(-1)(x)), x[:, -1])
    att = Attention(2, softmax="softmax")
    y = np.asarray(att([x, x, x]))
    # reference: per-head softmax attention in NumPy
    q = x.reshape(2, 5, 2, 4).transpose(0, 2, 1, 3)
    s = q @ q.transpose(0, 1, 3, 2) / 2.0
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = (p @ q).transpose(0, 2, 1, 3).reshape(2, 5, 8)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make, inputs, match", [
    (lambda: Attention(3), [(2, 5, 8)] * 3, "num_heads=3 does not divide"),
    (lambda: Attention(2), [(2, 5, 8)] * 2, "expects 3 inputs"),
    (lambda: Attention(2), [(2, 5, 8), (2, 4, 8), (2, 3, 8)], "same sequence length, got 4 and 3"),
    (lambda: Attention(2), [(2, 8)] * 3, "rank 3"),
    (lambda: ExtractToken(5), [(2, 5, 8)], "token index 5 is out of range"),
    (lambda: ExtractToken(-6), [(2, 5, 8)], "token index -6"),
    (lambda: ClassToken(), [(2, 8)], r"rank 3 .* got shape \(2, 8\)"),
    (lambda: AddPositionEmbs(), [(2, 3, 4, 8)], "rank 3"),
    (lambda: LayerMadNormalization(), [(8,)], "rank >= 2"),
])
def test_bad_input(make, inputs, match):
    xs = [np.zeros(s, "float32") for s in inputs]
    with pytest.raises(ValueError, match=match):
        make()(xs if len(xs) > 1 else xs[0])


@pytest.mark.parametrize("kwargs, match", [
    ({"num_heads": 0}, "positive int, got 0"), ({"num_heads": 2.0}, "got 2.0"),
    ({"softmax": "relu"}, "'relu'")])
def test_attention_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Attention(**kwargs)


def test_float_layers_config_round_trip():
    for layer in (Attention(4, softmax="softmax"), Shiftmax(), LayerMadNormalization(1e-4),
                  ClassToken(), AddPositionEmbs(), ExtractToken(3)):
        again = type(layer).from_config(layer.get_config())
        assert again.get_config() == layer.get_config()


def test_ilog2_round_exhaustive():
    e = np.arange(1, 1 << 16, dtype=np.int64)
    want = np.floor(np.log2(e.astype(np.float64)) + 0.5).astype(np.int64)
    # round(log2 e) rounds up exactly when e >= 2^(k + 1/2), never a tie for integers
    assert np.array_equal(T.ilog2_round(e, 17), want)
    assert np.array_equal(np.asarray(intops.ilog2_round(e, 17)), want)


def test_exp2_table_exact():
    for fs in (0, 3, 8, 12):
        t = intops.exp2_table(fs, 15)
        assert t[0] == 1 << 15 and t.max() < 1 << 16 and np.all(np.diff(t) >= 0)
        exact = 2.0 ** (np.arange(1 << fs) / (1 << fs) + 15)
        assert np.abs(t - exact).max() <= 0.5


@pytest.mark.parametrize("fs, out_bits", [(4, 8), (8, 8), (8, 4), (12, 8)])
def test_shiftmax_int_error_in_lsbs(fs, out_bits):
    d = RNG.integers(-12 << fs, 3 << fs, size=(64, 21))
    table, km = intops.exp2_table(fs, 15), intops.shiftmax_k_max(21, 15)
    got = T.shiftmax_int(d, fs, table, 15, km, out_bits, (1 << out_bits) - 1)
    kgot = np.asarray(intops.shiftmax_int(d, fs, table, 15, km, out_bits, (1 << out_bits) - 1))
    assert np.array_equal(got, kgot)
    x = d / 2.0**fs
    e = 2.0 ** (x - x.max(-1, keepdims=True))
    k = np.round(np.log2(e.sum(-1, keepdims=True)))
    ref = np.minimum(e / 2.0**k * 2**out_bits, (1 << out_bits) - 1)
    # exponent error (table + shift rounding) < 2^-15 relative, then one rounding: <= 1/2 LSB
    # plus ties; a row whose sum sits within rounding of 2^(k+1/2) may flip k (rare)
    lsb_err = np.abs(got - ref)
    same_k = np.all(lsb_err <= 0.5 + 2**-6, axis=-1)
    assert same_k.mean() > 0.97


def test_shiftmax_int_bad_length():
    with pytest.raises(ValueError, match="overflows int64"):
        intops.shiftmax_k_max(1 << 20, 15)


def test_quantized_shiftmax_layer_matches_float_within_lsb():
    spec = QSpec(7, True, (4,))
    x = np.round(RNG.normal(size=(32, 10)) * 40) / 16
    x = np.clip(x, -8, 127 / 16).astype("float32")
    layer = QuantizedShiftmax(input_specs=[spec], output_spec=QSpec(8, False, (8,)))
    y = np.asarray(layer(x))
    ref = np.minimum(_np_shiftmax(x.astype(np.float64)), 255 / 256)
    assert np.mean(np.abs(y - ref) <= 0.5 / 256 + 1e-6) > 0.97
    again = QuantizedShiftmax.from_config(layer.get_config())
    assert np.array_equal(np.asarray(again(x)), y)


def _grid(shape, f, bits=7, scale=1.0):
    v = np.clip(np.round(RNG.normal(size=shape) * scale * 2.0**f), -(1 << bits), (1 << bits) - 1)
    return (v / 2.0**f).astype("float32")


def test_quantized_mad_norm_error_and_round_trip():
    dim = 16
    spec_in = QSpec(7, True, tuple(int(f) for f in RNG.integers(4, 7, dim)))
    f = np.asarray(spec_in.frac_bits)
    x = np.clip(np.round(RNG.normal(size=(8, 5, dim)) * 2.0**f), -128, 127) / 2.0**f
    x = x.astype("float32")
    out = QSpec(7, True, (4,))
    layer = QuantizedLayerMadNormalization(epsilon=1e-3, input_specs=[spec_in], output_spec=out)
    layer.build(x.shape)
    g, b = RNG.uniform(0.5, 1.5, dim), RNG.normal(size=dim) * 0.3
    layer.set_weights([g, b])
    y = np.asarray(layer(x))
    c = x - x.mean(-1, keepdims=True)
    ref = np.clip(c / (np.abs(c).mean(-1, keepdims=True) + 1e-3) * g + b, -8, 127 / 16)
    # one output rounding (1/2 LSB = 1/32) plus the 8-bit multiplier's relative error 2^-8
    assert np.abs(y - ref).max() <= 1 / 32 + 2**-8 * np.abs(ref).max() + 2**-10
    again = QuantizedLayerMadNormalization.from_config(layer.get_config())
    again.build(x.shape)
    again.set_weights(layer.get_weights())
    assert np.array_equal(np.asarray(again(x)), y)


def test_quantized_attention_close_to_float_and_gradients():
    spec = QSpec(7, True, (4,))
    q, k, v = (_grid((4, 6, 8), 4, scale=1.5) for _ in range(3))
    out = QSpec(7, True, (4,))
    layer = QuantizedAttention(2, input_specs=[spec, spec, spec], output_spec=out)
    y = np.asarray(layer([q, k, v]))
    ref = np.asarray(Attention(2)([q, k, v]))
    assert np.abs(y - ref).max() < 0.1
    import tensorflow as tf

    qv = tf.Variable(q)
    with tf.GradientTape() as tape:
        z = layer([qv, k, v], training=True)
        loss = tf.reduce_sum(z * z)
    assert np.array_equal(z.numpy(), y)  # forward value is the exact integer result
    grad = tape.gradient(loss, qv).numpy()
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
    again = QuantizedAttention.from_config(layer.get_config())
    assert np.array_equal(np.asarray(again([q, k, v])), y)


def test_quantized_attention_bad_score_frac():
    with pytest.raises(ValueError, match="score_frac must be in"):
        QuantizedAttention(2, score_frac=20)


def test_shiftmax_temperature_note():
    # base 2 instead of e is a temperature of ln 2: shiftmax(x / ln 2) == softmax(x) up to the
    # power-of-two normalization
    x = RNG.normal(size=(10, 7))
    soft = np.exp(x) / np.exp(x).sum(-1, keepdims=True)
    ratio = _np_shiftmax(x / math.log(2)) / soft
    assert np.allclose(ratio, ratio[:, :1]) and np.all(ratio < 2**0.5 + 1e-9)
