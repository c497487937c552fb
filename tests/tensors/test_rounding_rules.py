"""Eq. 5b and 7b: the requantization rounding rules, against exact rational arithmetic.

``shift_round(v, s, rule)`` and ``requantize(..., rule)`` are compared with
``fractions.Fraction`` over the whole shift range (``s`` from -8 to 130), on arbitrary values
and on exact ties; ``requantize_tflite`` (eq. 7b) with a literal transcription of gemmlowp's
``SaturatingRoundingDoublingHighMul`` / ``RoundingDivideByPOT`` in C semantics (int32 values,
truncating division) and with its two-step rational definition.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fixedq.tensors import rounding

SETTINGS = settings(max_examples=150, deadline=None)
HALF = Fraction(1, 2)


def floor_q(q: Fraction) -> int:
    return q.numerator // q.denominator


def exact_round(q: Fraction, rule: str) -> int:
    """The rounding rules by definition: nearest integer, ties by ``rule``."""
    lo = floor_q(q)
    frac = q - lo
    if frac != HALF:
        return lo + (frac > HALF)
    if rule == "half_up":
        return lo + 1
    if rule == "half_even":
        return lo if lo % 2 == 0 else lo + 1
    return lo if q < 0 else lo + 1  # half_away (and tflite's RoundingDivideByPOT)


RULES = ("half_up", "half_even", "half_away")
SHIFTS = st.integers(-8, 130)


def value_for(shift: int):
    bound = 2**62 if shift >= 0 else 2 ** (62 + shift)  # left shifts stay inside int64
    return st.integers(-bound, bound)


@st.composite
def value_and_shift(draw):
    s = draw(SHIFTS)
    return draw(value_for(s)), s


@st.composite
def tie_and_shift(draw):
    """``v = (2k + 1) · 2^(s-1)``: an exact tie of ``v / 2^s``."""
    s = draw(st.integers(1, 63))
    k = draw(st.integers(-(2 ** max(62 - s, 0)), 2 ** max(62 - s, 0) - 1))
    return (2 * k + 1) * 2 ** (s - 1), s


def _check_shift(v: int, s: int) -> None:
    for rule in RULES:
        got = int(rounding.shift_round(np.array([v]), s, rule)[0])
        assert got == exact_round(Fraction(v) / Fraction(2) ** s, rule), (v, s, rule)
    # tflite on a pure shift is RoundingDivideByPOT: half away from zero
    assert int(rounding.shift_round(np.array([v]), s, "tflite")[0]) == \
        exact_round(Fraction(v) / Fraction(2) ** s, "half_away")


@SETTINGS
@given(value_and_shift())
@example((5, 1)).via("2.5")
@example((-5, 1)).via("-2.5")
@example((2**62, 63)).via("1/2 at s = 63")
@example((-(2**62), 63)).via("-1/2 at s = 63")
@example((2**62 - 1, 130)).via("s >= 64")
def test_shift_round_rules_are_exact(vs):
    _check_shift(*vs)


@SETTINGS
@given(tie_and_shift())
def test_shift_round_rules_on_ties(vs):
    v, s = vs
    _check_shift(v, s)
    _check_shift(-v, s)


@SETTINGS
@given(st.lists(value_and_shift(), min_size=1, max_size=16), st.sampled_from(RULES))
def test_shift_round_broadcasts_per_element_shifts(pairs, rule):
    v = np.array([p[0] for p in pairs], dtype=np.int64)
    s = np.array([p[1] for p in pairs], dtype=np.int64)
    got = rounding.shift_round(v, s, rule).tolist()
    assert got == [exact_round(Fraction(int(a)) / Fraction(2) ** int(b), rule)
                   for a, b in zip(v, s, strict=True)]


@SETTINGS
@given(st.integers(-(2**31), 2**31 - 1), st.integers(0, 2**31 - 1), st.integers(0, 62),
       st.sampled_from(RULES), st.integers(-128, 0), st.integers(0, 127))
def test_requantize_rules_are_exact(acc, m, s, rule, lo, hi):
    got = int(rounding.requantize(np.array([acc]), m, s, lo, hi, rule)[0])
    want = min(max(exact_round(Fraction(acc * m, 2**s), rule), lo), hi)
    assert got == want


# ------------------------------------------------------------------ eq. 7b (TFLite)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def c_div(a: int, b: int) -> int:
    """C's integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def srdhm(a: int, b: int) -> int:
    """gemmlowp's SaturatingRoundingDoublingHighMul, transcribed in C semantics."""
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    return c_div(ab + nudge, 1 << 31)


def rdbp(x: int, exponent: int) -> int:
    """gemmlowp's RoundingDivideByPOT, transcribed (two's complement ``&`` and ``>>``)."""
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def mbqm(x: int, m: int, e: int) -> int:
    """TFLite's MultiplyByQuantizedMultiplier (double rounding)."""
    left, right = max(e, 0), max(-e, 0)
    return rdbp(srdhm(x * (1 << left), m), right)


@st.composite
def tflite_case(draw):
    m = draw(st.one_of(st.integers(2**30, 2**31 - 1), st.just(0), st.just(2**30)))
    e = draw(st.integers(-31, 8))
    bound = INT32_MAX >> max(e, 0)  # TFLite's acc * 2^l stays in int32
    acc = draw(st.integers(-bound, bound))
    return acc, m, e


@SETTINGS
@given(tflite_case())
@example((3, 1 << 30, -1)).via("0.75 -> 1")
@example((-2, 1 << 30, -1)).via("-0.5 -> -1 (RoundingDivideByPOT away from 0)")
@example((-1, 1 << 30, 0)).via("-0.5 in the high mul -> 0 (half up)")
def test_requantize_tflite_matches_gemmlowp(case):
    acc, m, e = case
    got = int(rounding.requantize_tflite(np.array([acc]), m, 31 - e)[0])
    assert got == mbqm(acc, m, e)
    # eq. 7b by its rational definition: half up by 2^31, then half away by 2^r
    high = floor_q(Fraction(acc * 2 ** max(e, 0) * m, 2**31) + HALF)
    assert got == exact_round(Fraction(high, 2 ** max(-e, 0)), "half_away")
    lo, hi = -128, 127
    assert int(rounding.requantize(np.array([acc]), m, 31 - e, lo, hi, "tflite")[0]) == \
        min(max(got, lo), hi)


def test_high_mul_ties_round_up_and_the_shift_ties_away():
    # (M = 2^30: the high mul halves) -1 * 2^30 / 2^31 = -0.5 -> 0 (toward +inf) ...
    assert srdhm(-1, 1 << 30) == 0 == int(rounding.requantize_tflite(np.array([-1]), 1 << 30,
                                                                         31)[0])
    # ... while RoundingDivideByPOT takes -1/2 away from zero
    assert rdbp(-1, 1) == -1 == int(rounding.shift_round(np.array([-1]), 1, "half_away")[0])


def test_double_rounding_differs_from_a_single_rounding():
    # acc * M * 2^-S = 1.4999... rounds to 1 once; TFLite's high mul first gives 3 (of 2.99..)
    # then 3/2 = 1.5 -> 2
    m, e = 2**31 - 1, -1
    acc = 3
    single = exact_round(Fraction(acc * m, 2 ** (31 - e)), "half_away")
    assert (single, mbqm(acc, m, e)) == (1, 2)
    assert int(rounding.requantize_tflite(np.array([acc]), m, 31 - e)[0]) == 2


@pytest.mark.parametrize("bad", ["nearest", None, "HALF_UP", 1])
def test_unknown_rounding_is_refused(bad):
    with pytest.raises(ValueError, match="rounding must be one of"):
        rounding.shift_round(np.array([3]), 1, bad)


# ---------------------------------------------------------------------------- eq. 7c: fp32
def fp32_by_definition(acc: int, scale32: np.float32) -> int:
    """Eq. 7c without NumPy float32 arithmetic: ``float32(acc)`` and the float32 product each
    as one correct rounding of the exact value (a float64 holds ``acc`` below 2^53 and the
    product of two 24-bit significands exactly, and float64 -> float32 rounds once, ties to
    even), then the exact rational rounded half to even."""
    a32 = float(np.float64(acc).astype(np.float32))  # |acc| < 2^53: float64(acc) is exact
    prod = Fraction(a32) * Fraction(float(scale32))  # exact
    assert Fraction(float(np.float64(a32) * np.float64(scale32))) == prod  # 48 bits: exact
    p32 = float(np.float64(float(prod)).astype(np.float32))
    return exact_round(Fraction(p32), "half_even")


FP32_SCALES = st.floats(2.0**-40, 2.0**8, width=32, allow_subnormal=False)


@SETTINGS
@given(st.integers(-(2**40), 2**40), FP32_SCALES)
@example(1, np.float32(0.5)).via("1/2: tie to 0")
@example(3, np.float32(0.5)).via("3/2: tie to 2")
@example(-5, np.float32(0.5)).via("-5/2: tie to -2")
@example(2**24 + 1, np.float32(1.0)).via("float32(2^24 + 1) = 2^24")
@example(2**31 - 1, np.float32(2.0**-8)).via("int32 max accumulator")
def test_requantize_fp32_is_float32_arithmetic_by_definition(acc, scale):
    m, s = rounding.float32_multiplier_shift(np.float32(scale))
    assert int(m) < 2**24 and (int(m) % 2 == 1)  # the odd significand: exact, unique
    assert Fraction(int(m)) / Fraction(2) ** int(s) == Fraction(float(np.float32(scale)))
    want = fp32_by_definition(acc, np.float32(scale))
    assert int(rounding.requantize_fp32(np.array([acc]), m, s)[0]) == want
    assert int(rounding.requantize(np.array([acc]), m, s, -(2**40), 2**40, "fp32")[0]) == \
        max(-(2**40), min(2**40, want))


@SETTINGS
@given(st.integers(-(2**23), 2**23), st.integers(0, 30))
def test_fp32_equals_half_even_where_float32_is_exact(v, s):
    """``|v| < 2^24`` and a power-of-two scale: every float32 step is exact, so eq. 7c is the
    integer rule half-even (the float arithmetic adds no error of its own there)."""
    assert int(rounding.shift_round(np.array([v]), s, "fp32")[0]) == \
        int(rounding.shift_round(np.array([v]), s, "half_even")[0])


def test_fp32_differs_from_the_exact_rules_where_float32_rounds():
    # 2^24 + 1 is not a float32: XNNPACK's float32(acc) drops the 1 before scaling
    assert rounding.requantize_fp32(np.array([2**24 + 1]), 1, 0).tolist() == [2**24]
    assert rounding.requantize(np.array([2**24 + 1]), 1, 0, -(2**40), 2**40,
                               "half_even").tolist() == [2**24 + 1]
    # the float32 product rounds: 0.1f * 5 is exactly 0.5 in float32, a tie rounded to 0,
    # though the exact 0.1f · 5 = 0.50000000745... is above one half
    m, s = rounding.float32_multiplier_shift(np.float32(0.1))
    assert rounding.requantize_fp32(np.array([5]), m, s).tolist() == [0]
    assert rounding.requantize(np.array([5]), m, s, -9, 9, "half_even").tolist() == [1]


def test_fp32_saturates_without_overflow():
    m, s = rounding.float32_multiplier_shift(np.float32(255.0))
    got = rounding.requantize(np.array([2**62, -(2**62), 0]), m, s, -128, 127, "fp32")
    assert got.tolist() == [127, -128, 0]
    assert rounding.requantize_fp32(np.array([2**62]), m, s).tolist() == [2**62]


def test_float32_multiplier_shift_refuses_bad_scales():
    with pytest.raises(ValueError, match="finite and >= 0"):
        rounding.float32_multiplier_shift(np.array([-1.0]))
    with pytest.raises(ValueError, match="finite and >= 0"):
        rounding.float32_multiplier_shift(np.array([np.inf]))
