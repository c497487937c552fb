"""Eqs. 1-7 (fixedq.tensors.rounding): the PI table, exhaustive small widths, exact references."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixedq.tensors import rounding

HALF = Fraction(1, 2)


def floor_frac(q: Fraction) -> int:
    return q.numerator // q.denominator


def ref_round_half_up(q: Fraction) -> int:
    """Eq. 2 in exact arithmetic."""
    return floor_frac(q + HALF)


# ---------------------------------------------------------------- seed 004 PI table
@pytest.mark.parametrize(
    "frac_bits, x_int, value", [(1, 6, 3.0), (3, 25, 3.125), (6, 201, 3.140625)]
)
def test_pi_table_unsigned_8bit(frac_bits, x_int, value):
    """Seed 004: PI in an 8-bit FixedPoint. Unsigned 8 bits (value_bits=8, range [0, 255]):
    201 does not fit a signed 8-bit quantity (value_bits=7, [-128, 127])."""
    v, n = rounding.quantize_float(np.pi, frac_bits, value_bits=8, signed=False)
    assert (int(v), float(np.ldexp(float(v), -frac_bits)), n) == (x_int, value, 0)


def test_pi_signed_8bit_saturates_at_frac_bits_6():
    """Signed 8 bits agrees with the table for frac_bits <= 5 and clips (reported) at 6."""
    for f, want in [(1, 6), (3, 25)]:
        v, n = rounding.quantize_float(np.pi, f, value_bits=7, signed=True)
        assert (int(v), n) == (want, 0)
    v, n = rounding.quantize_float(np.pi, 6, value_bits=7, signed=True)
    assert (int(v), n) == (127, 1)


# ---------------------------------------------------------------- eq. 1
@pytest.mark.parametrize("b", range(1, 32))
def test_int_range(b):
    assert rounding.int_range(b, True) == (-(2**b), 2**b - 1)
    assert rounding.int_range(b, False) == (0, 2**b - 1)


@pytest.mark.parametrize("bad", [0, 32, -1])
def test_int_range_rejects_value_bits(bad):
    with pytest.raises(ValueError, match=rf"\[1, 31\], got {bad}"):
        rounding.int_range(bad)


# ---------------------------------------------------------------- eqs. 2-4 exhaustively
def test_round_half_up_on_all_quarter_steps():
    xs = [Fraction(k, 4) for k in range(-64, 65)]
    got = rounding.round_half_up(np.array([float(q) for q in xs]))
    assert got.tolist() == [ref_round_half_up(q) for q in xs]


@pytest.mark.parametrize("b", range(1, 9))
@pytest.mark.parametrize("signed", [True, False])
def test_saturate_exhaustive(b, signed):
    lo, hi = rounding.int_range(b, signed)
    v = np.arange(-(2**9) - 3, 2**9 + 3)
    out, n = rounding.saturate(v, lo, hi)
    assert out.tolist() == [min(max(int(x), lo), hi) for x in v]
    assert n == int(np.sum((v < lo) | (v > hi)))


@pytest.mark.parametrize("b", range(1, 9))
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("f", [0, 2, 5])
def test_quantize_float_exhaustive_on_fine_grid(b, signed, f):
    """Every float on a grid 4x finer than the target (so every tie occurs), across the range."""
    lo, hi = rounding.int_range(b, signed)
    ks = range((lo - 2) * 4, (hi + 2) * 4 + 1)
    xs = [Fraction(k, 4) / 2**f for k in ks]
    v, n = rounding.quantize_float(np.array([float(q) for q in xs]), f, b, signed)
    exact = [ref_round_half_up(q * 2**f) for q in xs]
    assert v.tolist() == [min(max(e, lo), hi) for e in exact]
    assert n == sum(e < lo or e > hi for e in exact)
    inside = [
        abs(Fraction(int(g)) / 2**f - q)
        for g, q, e in zip(v, xs, exact, strict=True)
        if lo <= e <= hi
    ]
    assert max(inside) <= HALF / 2**f  # rounding error <= 1/2 LSB


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_quantize_float_rejects_non_finite(bad):
    with pytest.raises(ValueError, match="non-finite value"):
        rounding.quantize_float(np.array([1.0, bad]), 2, 7)


# ---------------------------------------------------------------- eq. 5
def test_shift_round_exhaustive_small():
    v = np.arange(-256, 256)
    for s in range(-4, 10):
        got = rounding.shift_round(v, s)
        want = [ref_round_half_up(Fraction(int(x)) / Fraction(2) ** s) for x in v]
        assert got.tolist() == want, s


@settings(max_examples=200, deadline=None)
@given(st.integers(-(2**40), 2**40), st.integers(-20, 40))
def test_shift_round_matches_fraction(v, s):
    got = int(rounding.shift_round(np.array([v]), s)[0])
    assert got == ref_round_half_up(Fraction(v) / Fraction(2) ** s)


# ---------------------------------------------------------------- eqs. 6-7
@settings(max_examples=200, deadline=None)
@given(
    st.floats(min_value=1e-12, max_value=1e12, allow_nan=False, allow_infinity=False),
    st.integers(1, 24),
)
def test_to_multiplier_shift_bits_and_error(scale, n):
    m, s = rounding.to_multiplier_shift(np.array([scale]), scale_bits=n)
    m, s = int(m[0]), int(s[0])
    approx = Fraction(m) / Fraction(2) ** s
    if m >= 2 ** (n - 1):  # M has exactly n bits
        assert m < 2**n
        assert abs(approx - Fraction(scale)) <= Fraction(scale) / 2**n
    else:  # eq. 13b: the shift would exceed 62; it is capped and M carries the scale on 2^-62
        assert s == 62
        assert abs(approx - Fraction(scale)) <= Fraction(scale) / 2**n + Fraction(1, 2**63)


def test_to_multiplier_shift_zero_and_bad():
    m, s = rounding.to_multiplier_shift(np.array([0.0]))
    assert (m.tolist(), s.tolist()) == ([0], [0])
    with pytest.raises(ValueError, match="scales must be finite"):
        rounding.to_multiplier_shift(np.array([-1.0]))
    with pytest.raises(ValueError, match="scale_bits must be in"):
        rounding.to_multiplier_shift(np.array([1.0]), scale_bits=0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=8),
    st.integers(1, 2**8 - 1),
    st.integers(-4, 40),
    st.integers(1, 15),
)
def test_requantize_matches_fraction(acc, m, s, b):
    lo, hi = rounding.int_range(b, True)
    got = rounding.requantize(np.array(acc), m, s, lo, hi).tolist()
    want = [min(max(ref_round_half_up(Fraction(a * m) / Fraction(2) ** s), lo), hi) for a in acc]
    assert got == want
