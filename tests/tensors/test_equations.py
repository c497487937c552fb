"""One property test per numbered equation of docs/numerics.md, against exact rationals.

Each test draws with hypothesis, computes the equation with the NumPy reference
(:mod:`fixedq.tensors.rounding`, the engine's) and with its ``keras.ops`` twin
(:mod:`fixedq.tensors.kops`, the layers') on the same draw, and checks both against
``fractions.Fraction`` arithmetic. Draws cover the whole shift range (``S`` up to 130, i.e.
``S >= 63``), dead channels (zero and sub-``2^-100`` scales), huge values and exact ties.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

keras = pytest.importorskip("keras")
from keras import ops  # noqa: E402

from fixedq.engine import transformer_ops  # noqa: E402
from fixedq.layers.spec import frac_bits_for_range, window_for_range  # noqa: E402
from fixedq.layers.transformers import intops  # noqa: E402
from fixedq.tensors import kops, rounding  # noqa: E402

SETTINGS = settings(max_examples=40, deadline=None)
HALF = Fraction(1, 2)
I64 = st.integers(-(2**62), 2**62)


def np_(x) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x))


def floor_q(q: Fraction) -> int:
    return q.numerator // q.denominator


def rhu(q: Fraction) -> int:
    """Eq. 2 exactly: floor(q + 1/2)."""
    return floor_q(q + HALF)


def pow2(e: int) -> Fraction:
    return Fraction(2) ** e


def ties(draw_ints):
    """Integers and half-integers: every value is a tie of eq. 2 or an integer."""
    return st.lists(draw_ints, min_size=1, max_size=12).map(
        lambda xs: np.array([x / 2 for x in xs], dtype=np.float64))


def multiplier_shift_ref(scale: float, n: int) -> tuple[int, int]:
    """Eqs. 6 and 13b in exact arithmetic."""
    if scale < 2.0**-100:
        return 0, 0
    e = math.frexp(scale)[1]
    s = n - e
    m = rhu(Fraction(scale) * pow2(s))
    if m == 2**n:
        m, s = m // 2, s - 1
    if s > 62:
        m = rhu(Fraction(m) / pow2(min(s - 62, n + 1)))
        s = 62
    return m, s


# ---------------------------------------------------------------- eq. 1
@given(st.integers(1, 31), st.booleans())
def test_eq1_int_range(b, signed):
    lo, hi = rounding.int_range(b, signed)
    assert (lo, hi) == ((-(2**b) if signed else 0), 2**b - 1)
    assert (np.int64(lo), np.int64(hi)) == (lo, hi)  # int64-representable


# ---------------------------------------------------------------- eq. 2
@SETTINGS
@given(ties(st.integers(-(2**40), 2**40)),
       arrays(np.float64, 6, elements=st.floats(-1e300, 1e300, allow_nan=False)))
def test_eq2_round_half_up(half_ints, floats):
    x = np.concatenate([half_ints, floats, [np.inf, -np.inf, 2.0**62, -(2.0**63)]])
    want = [max(min(rhu(Fraction(v)), 2**62), -(2**62)) if np.isfinite(v)
            else int(np.sign(v)) * 2**62 for v in x]
    assert rounding.round_half_up(x).tolist() == want
    assert np_(kops.round_half_up(x)).tolist() == want


# ---------------------------------------------------------------- eq. 3
@SETTINGS
@given(arrays(np.int64, 10, elements=I64), st.integers(1, 31), st.booleans())
def test_eq3_saturate(v, b, signed):
    lo, hi = rounding.int_range(b, signed)
    want = [min(max(int(x), lo), hi) for x in v]
    got, n = rounding.saturate(v, lo, hi)
    assert got.tolist() == want and n == sum(w != int(x) for w, x in zip(want, v, strict=True))
    assert np_(kops.saturate(v, lo, hi)).tolist() == want


# ---------------------------------------------------------------- eq. 4 (seed 004's PI table)
@pytest.mark.parametrize("f, v", [(1, 6), (3, 25), (6, 201)])
def test_eq4_pi_table(f, v):
    got, n = rounding.quantize_float(np.pi, f, 8, signed=False)
    assert (int(got), n) == (v, 0)
    assert int(np_(kops.quantize_float(np.array([np.pi]), f, 0, 255))[0]) == v


@SETTINGS
@given(arrays(np.float64, 8, elements=st.floats(-1e20, 1e20, allow_nan=False,
                                                 allow_infinity=False)),
       st.integers(-40, 60), st.integers(1, 31), st.booleans())
@example(np.array([2.5, -2.5, 0.5, -0.5, 1e20, -1e20, 0.0, 3.14159]), 0, 7, True)
def test_eq4_quantize(x, f, b, signed):
    lo, hi = rounding.int_range(b, signed)
    want = [min(max(rhu(Fraction(v) * pow2(f)), lo), hi) for v in x]
    got, n = rounding.quantize_float(x, f, b, signed)
    assert got.tolist() == want
    assert n == sum(min(max(rhu(Fraction(v) * pow2(f)), lo), hi) != rhu(Fraction(v) * pow2(f))
                    for v in x)
    assert rounding.quantize_input(x, f, lo, hi).tolist() == want
    assert np_(kops.quantize_float(x, f, lo, hi)).tolist() == want
    ok = [lo <= rhu(Fraction(v) * pow2(f)) <= hi for v in x]
    for v, q, fits in zip(x, want, ok, strict=True):  # half an LSB when nothing saturates
        assert not fits or abs(Fraction(q) * pow2(-f) - Fraction(v)) <= HALF * pow2(-f)


# ---------------------------------------------------------------- eq. 5 (every shift, ties)
@SETTINGS
@given(arrays(np.int64, 8, elements=st.integers(-(2**63), 2**63 - 1)),
       st.integers(0, 130), st.integers(0, 62))
def test_eq5_shift_round_right(v, s, tie_shift):
    ties_ = np.array([(2 * k + 1) << max(tie_shift - 1, 0) for k in range(-2, 2)], np.int64)
    for vals, sh in ((v, s), (ties_, tie_shift)):
        want = [rhu(Fraction(int(x)) / pow2(sh)) for x in vals]
        assert rounding.shift_round(vals, sh).tolist() == want
        assert np_(kops.shift_round(vals, sh)).tolist() == want
        dyn = kops.shift_round_dynamic(vals, np.full(vals.shape, sh, np.int64))
        assert np_(dyn).tolist() == want


@SETTINGS
@given(arrays(np.int64, 6, elements=st.integers(-(2**30), 2**30)),
       arrays(np.int64, 6, elements=st.integers(-32, 130)))
def test_eq5_shift_round_per_axis(v, shifts):
    want = [int(x) * 2 ** (-int(s)) if s <= 0 else rhu(Fraction(int(x)) / pow2(int(s)))
            for x, s in zip(v, shifts, strict=True)]
    assert rounding.shift_round(v, shifts).tolist() == want
    assert np_(kops.shift_round(v, shifts)).tolist() == want
    assert np_(kops.shift_round_dynamic(v, shifts)).tolist() == want


# ---------------------------------------------------------------- eqs. 6 and 13b
SCALES = st.one_of(st.floats(2.0**-100, 2.0**30), st.floats(1e-300, 2.0**-100),
                   st.sampled_from([0.0, 2.0**-100, 2.0**-56, 2.0**-70, 5e-324, 1e-20 / 127]),
                   st.floats(2.0**-90, 2.0**-50))


@SETTINGS
@given(st.lists(SCALES, min_size=1, max_size=10), st.integers(1, 24))
def test_eq6_13b_multiplier_shift(scales, n):
    x = np.array(scales, dtype=np.float64)
    m, s = rounding.to_multiplier_shift(x, n)
    km, ks = kops.to_multiplier_shift(x, n)
    assert np.array_equal(np_(km), m) and np.array_equal(np_(ks), s)
    for sc, mm, ss in zip(scales, m.tolist(), s.tolist(), strict=True):
        assert (mm, ss) == multiplier_shift_ref(sc, n)
        assert ss <= 62  # eq. 13b
        if sc >= 2.0**-100 and ss < 62:  # eq. 6: n bits, relative error <= 2^-n
            assert 2 ** (n - 1) <= mm < 2**n
            assert abs(Fraction(mm) / pow2(ss) - Fraction(sc)) <= Fraction(sc) / 2**n
        elif sc >= 2.0**-100:  # capped: absolute error <= 2^-62
            assert abs(Fraction(mm) / pow2(ss) - Fraction(sc)) <= pow2(-62)


# ---------------------------------------------------------------- eqs. 7, 13 and 21
@SETTINGS
@given(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=8),
       st.lists(SCALES, min_size=1, max_size=4), st.integers(1, 24), st.integers(1, 15))
def test_eq7_21_requantize(acc, scales, n, b):
    """``y = sat(shift_round(acc * M, S))`` for 32-bit accumulators and any eq. 6/13b pair; the
    result is within 1/2 LSB (plus the multiplier's error) of ``acc * scale``."""
    a = np.array(acc, dtype=np.int64)[:, None]
    m, s = rounding.to_multiplier_shift(np.array(scales), n)
    lo, hi = rounding.int_range(b, True)
    want = [[min(max(rhu(Fraction(int(x) * int(mm)) / pow2(int(ss))), lo), hi)
             for mm, ss in zip(m, s, strict=True)] for x in acc]
    assert rounding.requantize(a, m, s, lo, hi).tolist() == want
    assert np_(kops.requantize(a, m, s, lo, hi)).tolist() == want
    km, ks = kops.to_multiplier_shift(np.array(scales), n)
    assert np_(kops.requantize_dynamic(a, km, ks, lo, hi)).tolist() == want
    for x, row in zip(acc, want, strict=True):
        for sc, y in zip(scales, row, strict=True):
            ideal = Fraction(x) * Fraction(sc)
            if lo < y < hi:
                assert abs(Fraction(y) - ideal) <= HALF + abs(ideal) / 2**n + abs(x) * pow2(-62)


# ---------------------------------------------------------------- eqs. 8, 12 (align, rescale)
@SETTINGS
@given(arrays(np.int64, (3, 4), elements=st.integers(-(2**20), 2**20)),
       arrays(np.int64, 4, elements=st.integers(-8, 12)), st.integers(-8, 12),
       st.integers(1, 15))
def test_eq8_12_align_and_rescale(v, f_in, f_out, b):
    """Alignment to ``F = max f`` is exact; a rescale to ``f_out`` rounds half up and saturates."""
    big_f = int(f_in.max())
    aligned = rounding.shift_round(v, f_in - big_f)
    assert aligned.tolist() == [[int(x) * 2 ** (big_f - int(f)) for x, f in zip(row, f_in,
                                                                            strict=True)]
                                for row in v]
    lo, hi = rounding.int_range(b, True)
    want = [[min(max(rhu(Fraction(int(x)) * pow2(f_out - int(f))), lo), hi)
             for x, f in zip(row, f_in, strict=True)] for row in v]
    got, _ = rounding.saturate(rounding.shift_round(v, f_in - f_out), lo, hi)
    assert got.tolist() == want
    assert np_(kops.saturate(kops.shift_round(v, f_in - f_out), lo, hi)).tolist() == want


# ---------------------------------------------------------------- eq. 14 (weights)
@SETTINGS
@given(arrays(np.float32, (5, 3), elements=st.floats(-1e4, 1e4, width=32)),
       st.integers(2, 16), st.sampled_from([0.0, 1e-20, 1e-38, 1e4]))
def test_eq14_weight_quantization(w, bits, first_channel):
    w = w.copy()
    w[:, 0] = first_channel * np.array([1, -1, 1, -1, 1], np.float32)
    qmax = 2 ** (bits - 1) - 1
    w_q, scale = kops.quantize_weights(w, (0,), qmax)
    w_q, scale = np_(w_q), np_(scale).ravel()
    for c in range(3):
        m = max(abs(Fraction(float(x))) for x in w[:, c])
        m = m if m >= pow2(-126) else 0  # TensorFlow flushes float32 subnormals to zero
        s = m / qmax if m else Fraction(1, qmax)
        assert abs(Fraction(float(scale[c])) - s) <= s * pow2(-52)
        for r in range(5):
            want = min(max(rhu(Fraction(float(w[r, c])) / Fraction(float(scale[c]))), -qmax),
                       qmax)
            assert int(w_q[r, c]) == want
        if m:
            assert max(abs(int(x)) for x in w_q[:, c]) == qmax


# ---------------------------------------------------------------- eq. 16 (bias)
@SETTINGS
@given(arrays(np.float64, 4, elements=st.floats(-1e6, 1e6)),
       arrays(np.float64, 4, elements=st.floats(1e-30, 1e3)), st.integers(-4, 20))
def test_eq16_bias(bias, scale, big_f):
    lo, hi = -(2**31), 2**31 - 1
    got = np_(kops.quantize_bias(bias, big_f, scale, lo, hi)).tolist()
    for b, s, g in zip(bias, scale, got, strict=True):
        exact = Fraction(b) * pow2(big_f) / Fraction(s)
        # one float64 division before the rounding: within one unit of the exact rounding
        assert abs(g - min(max(rhu(exact), lo), hi)) <= 1
        assert lo <= g <= hi


# ---------------------------------------------------------------- eq. 22 (calibration)
@SETTINGS
@given(st.lists(st.floats(2.0**-60, 1e6), min_size=1, max_size=6), st.integers(1, 16))
def test_eq22_frac_bits_for_range(ranges, b):
    fracs = frac_bits_for_range(ranges, b, spread=64)
    for r, f in zip(ranges, fracs, strict=True):
        r = max(r, max(ranges) * 2.0**-64)  # eq. 23's floor
        assert rhu(Fraction(r) * pow2(f)) <= 2**b - 1  # holds r without clipping
        assert rhu(Fraction(r) * pow2(f + 1)) > 2**b - 1  # and is the largest such f


# ---------------------------------------------------------------- eq. 23 (spread floor)
@SETTINGS
@given(st.lists(st.one_of(st.just(0.0), st.floats(0.0, 1e6)), min_size=2, max_size=6),
       st.integers(1, 16))
def test_eq23_spread(ranges, b):
    fracs = frac_bits_for_range(ranges, b)
    assert max(fracs) - min(fracs) <= 9


# ---------------------------------------------------------------- eq. 29 (shiftmax)
@SETTINGS
@given(arrays(np.int64, (3, 7), elements=st.integers(-(2**14), 2**14)),
       st.integers(0, 12), st.sampled_from([8, 15]), st.sampled_from([8, 12]))
def test_eq29_shiftmax_twins(d, fs, p, bp):
    table = intops.exp2_table(fs, p)
    assert table[0] == 2**p and table.max() <= 2 ** (p + 1)  # = only when fs > P
    k_max = intops.shiftmax_k_max(d.shape[-1], p)
    want = transformer_ops.shiftmax_int(d, fs, table, p, k_max, bp, 2**bp - 1)
    got = np_(intops.shiftmax_int(d, fs, table, p, k_max, bp, 2**bp - 1))
    assert np.array_equal(got, want)
    assert np.all((want >= 0) & (want <= 2**bp - 1))


@SETTINGS
@given(st.lists(st.integers(1, 2**30 - 1), min_size=1, max_size=10))
def test_eq29d_ilog2_round(totals):
    e = np.array(totals, dtype=np.int64)
    want = []
    for t in totals:
        k = t.bit_length() - 1  # floor(log2 t)
        want.append(k + (t * t >= 2 ** (2 * k + 1)))  # round(log2 t): log2 t >= k + 1/2
    assert transformer_ops.ilog2_round(e, 31).tolist() == want
    assert np_(intops.ilog2_round(e, 31)).tolist() == want


# ---------------------------------------------------------------- eqs. 35-36 (windows)
@SETTINGS
@given(st.lists(st.tuples(st.floats(-1e3, 0.0), st.floats(0.0, 1e3)), min_size=1, max_size=4),
       st.integers(2, 12), st.booleans())
def test_eq35_36_windows(ranges, bits, per_tensor):
    low, high = [a for a, _ in ranges], [b for _, b in ranges]
    fracs, starts = window_for_range(low, high, bits, per_tensor=per_tensor)
    assert len(fracs) == (1 if per_tensor else len(ranges)) and len(starts) == len(ranges)
    limit = 2**bits - 1
    for c, lo in enumerate(starts):
        assert -limit <= lo <= 0 <= lo + limit  # the window contains 0
        f = fracs[0 if per_tensor else c]
        width = high[c] - low[c]
        if width >= (max(h - a for a, h in ranges) or 1.0) * 2.0**-8:
            a_q, b_q = rhu(Fraction(low[c]) * pow2(f)), rhu(Fraction(high[c]) * pow2(f))
            assert b_q - a_q <= limit  # the channel's range fits its window's width
