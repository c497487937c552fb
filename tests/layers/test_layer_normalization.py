"""QuantizedLayerNormalization (docs/numerics.md eq. 47): the integer reciprocal square root
and normalized values against exact integer arithmetic (hypothesis), Keras == engine at worst
case magnitudes (constant rows, epsilon 0, huge and tiny ranges, ties), the error against the
float LayerNormalization, and what is not supported (other axes, rms_scaling, int64 bound)."""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from keras import ops

import fixedq
import fixedq.engine as fe
from fixedq.engine import layernorm as eng
from fixedq.engine.ops import Op, run_op
from fixedq.layers.layer_normalization import (
    QuantizedLayerNormalization,
    floor_log2,
    isqrt_newton,
)
from fixedq.layers.spec import QSpec
from fixedq.ops import by_name
from fixedq.ops.common import i64

L = keras.layers
R = 12


def _exact_z(v: list[int], eps_int: int, norm_frac: int = R) -> list[int]:
    """Eq. 47 with Python integers (``math.isqrt``) and exact floor division."""
    d = len(v)
    s = sum(v)
    c = [d * x - s for x in v]
    w = max(d * sum(t * t for t in c) + eps_int, 1)
    a = (61 - (w.bit_length() - 1)) // 2
    r = math.isqrt(w << (2 * a))
    return [(2 * t * d * (1 << (a + norm_frac)) + r) // (2 * r) for t in c]


def _layer(dim: int, bits: int = 7, frac: int = 0, epsilon: float = 1e-3, out_frac: int = 8,
           gamma=None, beta=None) -> QuantizedLayerNormalization:
    layer = QuantizedLayerNormalization(epsilon, input_specs=[QSpec(bits, True, (frac,))],
                                        output_spec=QSpec(15, True, (out_frac,)))
    layer.build((None, dim))
    if gamma is not None:
        layer.set_weights([np.asarray(gamma, "float32"), np.asarray(beta, "float32")])
    return layer


def _engine_op(layer) -> Op:
    p = layer.integer_params()
    return Op("ln", "layernorm", ["x"], {"eps_int": int(p["eps_int"]),
                                          "norm_frac": int(p["norm_frac"])},
              {k: i64(p[k]) for k in ("in_align", "multiplier", "shift", "offset", "out_lo",
                                      "out_hi")})


@settings(max_examples=60, deadline=None)
@given(st.integers(2**60, 2**62 - 1))
@example(2**60)
@example(2**62 - 1)
@example((2**31 - 1) ** 2)
@example((2**30 + 5) ** 2 - 1)
def test_isqrt_is_the_exact_floor_in_both_executors(n):
    want = math.isqrt(n)
    assert int(eng.isqrt_newton(np.array([n]))[0]) == want
    got = ops.convert_to_numpy(isqrt_newton(ops.convert_to_tensor([n], "int64")))
    assert int(got[0]) == want


def test_floor_log2_is_exact_next_to_every_power_of_two():
    """The Keras twin reads a float64 exponent (which rounds 2^k - 1 up for k > 53) and
    corrects it; the engine counts comparisons: both give floor(log2 w) exactly."""
    w = sorted({v for k in range(0, 62) for v in (2**k - 1, 2**k, 2**k + 1)
                if 1 <= v < 2**62} | {2**62 - 1})
    want = [v.bit_length() - 1 for v in w]
    assert eng.floor_log2(np.array(w, np.int64)).tolist() == want
    got = ops.convert_to_numpy(floor_log2(ops.convert_to_tensor(w, "int64")))
    assert got.tolist() == want


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 48).flatmap(lambda d: st.tuples(
    st.lists(st.integers(-(2**15), 2**15 - 1), min_size=d, max_size=d),
    st.integers(0, 2**40))))
@example(([5] * 16, 0))           # constant row, epsilon 0: W = 0 -> z = 0
@example(([5] * 16, 1))           # constant row, variance 0: epsilon alone
@example(([-(2**15)] * 63 + [2**15 - 1], 0))  # the largest deviation
@example(([0, 1], 0))              # one LSB of difference
@example(([1, 0, 0, 0], 0))        # ties
def test_normalized_integers_are_exact_and_within_the_bound(case):
    v, eps_int = case
    d = len(v)
    want = _exact_z(v, eps_int)
    got = eng.normalized(np.array([v], np.int64), eps_int, R)[0].tolist()
    assert got == want
    # the Keras twin on the same integers (frac_bits 0: the floats are the integers)
    layer = _layer(d, bits=15)
    keras_z = ops.convert_to_numpy(layer.normalized(ops.convert_to_tensor([v], "int64")))
    eps_k = layer.integer_params()["eps_int"]
    assert keras_z[0].tolist() == _exact_z(v, eps_k)
    # eq. 47e: |z - t| <= 1/2 + sqrt(D) 2^(R-30), t the exact normalized value * 2^R
    mean = sum(v) / d
    var = sum((x - mean) ** 2 for x in v) / d + eps_int / d**4
    if var > 0:
        t = np.array([(x - mean) / math.sqrt(var) * 2**R for x in v])
        assert np.max(np.abs(np.array(want) - t)) <= 0.5 + math.sqrt(d) * 2.0 ** (R - 30) + 1e-6
    else:
        assert want == [0] * d


def _worst_rows(rng, d: int, lo: int, hi: int) -> np.ndarray:
    rows = [np.full(d, hi), np.full(d, lo), np.zeros(d), np.r_[hi, np.full(d - 1, lo)],
            np.r_[np.full(d - 1, hi), lo], np.r_[1, np.zeros(d - 1)], np.r_[-1, np.zeros(d - 1)],
            np.tile([lo, hi], d // 2 + 1)[:d], np.tile([0, 1], d // 2 + 1)[:d]]
    rows += list(rng.integers(lo, hi + 1, size=(24, d)))
    rows += list(rng.integers(-2, 3, size=(8, d)))
    return np.array(rows, dtype=np.int64)


@pytest.mark.parametrize("d,bits,frac,epsilon", [(16, 7, 4, 1e-6), (64, 7, 0, 1e-3),
                                                 (8, 15, 10, 0.0), (5, 3, 2, 1e-5),
                                                 (256, 7, 6, 1e-6)])
def test_keras_equals_engine_at_worst_case_magnitudes(d, bits, frac, epsilon):
    rng = np.random.default_rng(d + bits)
    gamma = rng.normal(size=d) * 2
    gamma[0], gamma[-1] = 0.0, -3.0
    layer = _layer(d, bits, frac, epsilon, out_frac=5, gamma=gamma, beta=rng.normal(size=d))
    v = _worst_rows(rng, d, -(2**bits), 2**bits - 1)
    x = (v * 2.0**-frac).astype("float32")
    keras_int = np.asarray(layer(x)) * 2.0**5
    np.testing.assert_array_equal(keras_int, run_op(_engine_op(layer), [v]))


def test_error_against_float_layer_normalization_is_within_one_lsb():
    """8-bit inputs on a per-channel grid, 16 channels: |integer - float| <= 1 output LSB on
    every element that does not saturate (eq. 47e + eq. 28: 1/2 LSB output rounding, the 8-bit
    gamma multiplier and the 2^-R normalized value)."""
    rng = np.random.default_rng(3)
    d, f_out = 16, 5
    gamma, beta = rng.uniform(0.5, 1.5, d), rng.normal(size=d) * 0.5
    layer = QuantizedLayerNormalization(1e-5, input_specs=[QSpec(7, True, tuple(
        int(f) for f in rng.integers(3, 7, d)))], output_spec=QSpec(7, True, (f_out,)))
    layer.build((None, d))
    layer.set_weights([gamma.astype("float32"), beta.astype("float32")])
    f_in = np.asarray(layer.input_spec0.frac_array(d))
    x = np.round(rng.normal(size=(500, d)) * 4 * 2.0**f_in) * 2.0**-f_in
    x = np.clip(x, -(2**7) * 2.0**-f_in, (2**7 - 1) * 2.0**-f_in).astype("float32")
    got = np.asarray(layer(x), np.float64)
    xd = x.astype(np.float64)
    z = (xd - xd.mean(-1, keepdims=True)) / np.sqrt(xd.var(-1, keepdims=True) + 1e-5)
    want = z * gamma + beta
    inside = np.abs(want) < 2**7 * 2.0**-f_out - 2.0**-f_out
    assert inside.mean() > 0.95
    assert np.max(np.abs(got - want)[inside]) <= 2.0**-f_out


def _tokens_model(ln, d=8):
    x = keras.Input((4, d))
    return keras.Model(x, L.Dense(3, name="head")(ln(L.Dense(d, name="fc")(x))))


@pytest.mark.parametrize("ln,why", [
    (L.LayerNormalization(axis=1, name="ln"), "axis [1] (only the last axis, axis=-1)"),
    (L.LayerNormalization(axis=[1, 2], name="ln"), "axis [1, 2] (only the last axis"),
])
def test_other_axes_fall_back_with_one_warning_naming_the_axis(ln, why):
    model = _tokens_model(ln)
    x = np.random.default_rng(0).normal(size=(32, 4, 8)).astype("float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = fixedq.quantize(model, fixedq.QuantizationParams(), x)
    stops = [str(w.message) for w in caught if "quantization stops" in str(w.message)]
    assert len(stops) == 1 and "'ln' (LayerNormalization)" in stops[0] and why in stops[0]
    np.testing.assert_allclose(q.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=0.15 * np.abs(model.predict(x, verbose=0)).max())


def test_rms_scaling_is_not_accepted():
    from fixedq.transforms.graph import read_graph

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras' own deprecation warning
        model = _tokens_model(L.LayerNormalization(rms_scaling=True, name="ln"))
    node = read_graph(model).node("ln")
    assert "rms_scaling=True" in by_name("layer_normalization").accepts(node)


def test_int64_bound_falls_back_with_the_reason():
    """16-bit activations over 512 channels: D^4 max|v|^2 passes 2^62 -> float, named."""
    model = _tokens_model(L.LayerNormalization(name="ln"), d=512)
    x = np.random.default_rng(1).normal(size=(16, 4, 512)).astype("float32")
    qp = fixedq.QuantizationParams(activation_bits=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fixedq.quantize(model, qp, x)
    stops = [str(w.message) for w in caught if "quantization stops" in str(w.message)]
    assert len(stops) == 1 and "'ln'" in stops[0] and "overflow int64" in stops[0]


def test_quantized_model_is_engine_exact_and_round_trips(tmp_path):
    model = _tokens_model(L.LayerNormalization(epsilon=1e-6, name="ln"), d=16)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 4, 16)).astype("float32") * 3
    for qp in (fixedq.QuantizationParams(),
               fixedq.QuantizationParams(weight_bits=4, activation_bits=4)):
        q = fixedq.quantize(model, qp, x)
        assert any(isinstance(ly, QuantizedLayerNormalization) for ly in q.layers)
        engine = fe.convert(q)
        probe = np.concatenate([x[:8], np.zeros_like(x[:2]), np.full_like(x[:2], 1e4),
                                np.full_like(x[:2], -1e4)])
        np.testing.assert_array_equal(engine.predict(probe), q.predict(probe, verbose=0))
        engine.save(tmp_path / "ln.fqe")
        np.testing.assert_array_equal(fe.load(tmp_path / "ln.fqe").predict(probe),
                                      engine.predict(probe))


def test_crafted_program_beyond_the_int64_bound_is_an_error():
    """quantize never builds a layer past D^4·max|v|^2 + eps < 2^62 (it stays float); a crafted
    program with such inputs fails naming the bound instead of wrapping int64."""
    with pytest.raises(ValueError, match="leave the exact int64 range"):
        eng.normalized(np.array([[0, 0, 0, 2**40]], np.int64), 0, 12)
    with pytest.raises(ValueError, match="leave the exact int64 range"):
        eng.normalized(np.array([[0, 1, 2, 3]], np.int64), 2**62, 12)
    ok = eng.normalized(np.array([[0, 0, 0, 16]], np.int64), 0, 12)
    assert ok.tolist() == [[-2365, -2365, -2365, 7094]]
