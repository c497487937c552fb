"""QFloat (NumPy backend): weight quantization, multiplier/shift folding, requantization."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fixedq.tensors import FixedPoint, QFloat
from fixedq.tensors.rounding import int_range

HALF = Fraction(1, 2)
SETTINGS = settings(max_examples=200, deadline=None)
FLOATS = st.floats(-100, 100, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def round_half_up(q: Fraction) -> int:
    q = q + HALF
    return q.numerator // q.denominator


@SETTINGS
@given(arrays(np.float64, (4, 3), elements=FLOATS), st.integers(1, 15))
def test_weight_quantization_eq14(w, b):
    q = QFloat.from_float(w, value_bits=b)
    hi = 2**b - 1
    for c in range(3):
        m = max(abs(Fraction(x)) for x in w[:, c])
        tiny = m < Fraction(2) ** -100  # counts as an all-zero channel
        s = 0.0 if tiny else float(np.max(np.abs(w[:, c]))) / hi
        assert q.scales[c] == s
        if s:
            assert abs(Fraction(s) - m / hi) <= m / hi * Fraction(1, 2**52)
        for r in range(4):
            v = int(q.fp.values[r, c])
            assert -hi <= v <= hi
            if s:
                assert abs(Fraction(v) - Fraction(w[r, c]) / Fraction(s)) <= HALF
            else:
                assert v == 0
    assert np.max(np.abs(q.to_float() - w)) <= max(np.max(q.scales) / 2 * (1 + 1e-9), 2**-100)


def test_zero_channel_and_per_tensor():
    q = QFloat.from_float(np.array([[0.0, 1.0], [0.0, -0.5]]), value_bits=7)
    assert q.scales.tolist() == [0.0, 1.0 / 127]
    assert q.fp.values[:, 0].tolist() == [0, 0]
    qt = QFloat.from_float(np.array([[1.0, -2.0]]), value_bits=7, per_axis=False)
    assert qt.scales.ndim == 0 and qt.fp.values.tolist() == [[64, -127]]


@SETTINGS
@given(
    arrays(np.int64, (5, 2), elements=st.integers(-(2**20), 2**20)),
    arrays(np.float64, (2,), elements=st.floats(1e-6, 1e3, allow_nan=False, allow_infinity=False)),
    st.integers(-4, 8),
    st.integers(-2, 10),
    st.integers(2, 16),
    st.integers(1, 12),
)
def test_to_fixed_point_within_scale_error(acc, scales, f_in, f_out, scale_bits, b):
    q = QFloat(FixedPoint(acc, f_in, 21), scales)
    y, n = q.to_fixed_point(f_out, b, signed=True, scale_bits=scale_bits)
    m, s = q.multiplier_shift(f_out, scale_bits)
    lo, hi = int_range(b, True)
    clipped = 0
    for (r, c), v in np.ndenumerate(acc):
        ideal = Fraction(int(v)) / Fraction(2) ** f_in * Fraction(scales[c]) * Fraction(2) ** f_out
        folded = round_half_up(Fraction(int(v) * int(m[c])) / Fraction(2) ** int(s[c]))
        assert abs(Fraction(int(m[c])) / Fraction(2) ** int(s[c]) - ideal / v if v else 0) <= (
            abs(ideal / v) / 2**scale_bits if v else 0
        )
        want = min(max(folded, lo), hi)
        clipped += want != folded
        assert int(y.values[r, c]) == want
        if lo <= folded <= hi:  # |error| <= 1/2 LSB + relative multiplier error
            assert abs(Fraction(want) - ideal) <= HALF + abs(ideal) / 2**scale_bits
    assert n == clipped
    assert y.frac_bits.tolist() == f_out


def test_dense_flow_with_bias():
    """x @ w + b, requantized: the layer arithmetic of eqs. 14-21 on a tiny example."""
    x, _ = FixedPoint.from_float(np.array([[0.5, -1.25, 2.0]]), 2, 7)
    w = QFloat.from_float(np.array([[0.5, 1.0], [-0.25, 0.5], [1.0, -1.0]]), value_bits=7)
    acc = x @ w
    bias, n = acc.quantize_onto(np.array([0.1, -0.2]))
    assert n == 0
    total = acc + bias
    y, n = total.to_fixed_point(frac_bits=4, value_bits=7)
    ref = np.array([[0.5, -1.25, 2.0]]) @ w.to_float() + np.array([0.1, -0.2])
    assert n == 0
    assert np.all(np.abs(y.to_float() - ref) <= 2**-4)


def test_qfloat_bad_input():
    fp = FixedPoint([1, 2], 0, 7)
    with pytest.raises(ValueError, match=r"length 2 .*got scales of shape \(3,\)"):
        QFloat(fp, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="finite and >= 0, got -1.0"):
        QFloat(fp, [1.0, -1.0])
    with pytest.raises(ValueError, match="non-finite value nan"):
        QFloat.from_float([1.0, np.nan], value_bits=7)
    with pytest.raises(ValueError, match="identical scales"):
        QFloat(fp, [1.0, 2.0]) + QFloat(fp, [1.0, 3.0])
    with pytest.raises(TypeError, match="needs a FixedPoint"):
        QFloat([1, 2], 1.0)
