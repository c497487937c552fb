"""FixedPoint (NumPy backend) against exact rational arithmetic (fractions.Fraction)."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fixedq.tensors import FixedPoint, accumulator_bits
from fixedq.tensors.rounding import int_range

HALF = Fraction(1, 2)
SETTINGS = settings(max_examples=200, deadline=None)
SHAPES = st.sampled_from([(), (1,), (3,), (2, 3), (2, 1, 4)])


def pow2(e) -> Fraction:
    return Fraction(2) ** int(e)


def exact(fp: FixedPoint) -> list[Fraction]:
    """The represented numbers, elementwise, as Fractions (row-major)."""
    v = np.asarray(fp.values)
    f = np.broadcast_to(fp.frac_bits, v.shape)
    return [Fraction(int(a)) / pow2(b) for a, b in zip(v.ravel(), f.ravel(), strict=True)]


def in_declared_range(fp: FixedPoint) -> bool:
    lo, hi = fp.int_range
    v = np.asarray(fp.values)
    return bool(np.all((v >= lo) & (v <= hi)))


def round_half_up(q: Fraction) -> int:
    q = q + HALF
    return q.numerator // q.denominator


@st.composite
def fixed_points(draw, shape=None, max_bits=12, signed=None, per_axis=None):
    shape = draw(SHAPES) if shape is None else shape
    signed = draw(st.booleans()) if signed is None else signed
    b = draw(st.integers(1, max_bits))
    lo, hi = int_range(b, signed)
    values = draw(arrays(np.int64, shape, elements=st.integers(lo, hi)))
    per_axis = (len(shape) > 0 and draw(st.booleans())) if per_axis is None else per_axis
    if per_axis:
        f = draw(st.lists(st.integers(-4, 10), min_size=shape[-1], max_size=shape[-1]))
    else:
        f = draw(st.integers(-4, 10))
    return FixedPoint(values, f, b, signed)


@st.composite
def pairs(draw, max_bits=12):
    shape = draw(SHAPES)
    return draw(fixed_points(shape, max_bits)), draw(fixed_points(shape, max_bits))


# ---------------------------------------------------------------- construction
@SETTINGS
@given(
    st.lists(
        st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=64),
        min_size=1,
        max_size=6,
    ),
    st.integers(-6, 20),
    st.integers(1, 31),
    st.booleans(),
)
def test_from_float_rounds_half_up_and_flags_saturation(xs, f, b, signed):
    fp, n_clipped = FixedPoint.from_float(np.array(xs), f, b, signed)
    lo, hi = int_range(b, signed)
    clipped = 0
    for got, x in zip(exact(fp), xs, strict=True):
        ideal = round_half_up(Fraction(x) * pow2(f))
        if lo <= ideal <= hi:
            assert got * pow2(f) == ideal
            assert abs(got - Fraction(x)) <= HALF / pow2(f)  # <= 1/2 LSB
        else:
            clipped += 1
            assert got * pow2(f) == (lo if ideal < lo else hi)
    assert n_clipped == clipped
    assert in_declared_range(fp)


@SETTINGS
@given(fixed_points())
def test_raw_round_trip_through_float(fp):
    back, n = FixedPoint.from_float(fp.to_float(), fp.frac_bits, fp.value_bits, fp.signed)
    assert n == 0
    assert np.array_equal(back.values, fp.values)


@pytest.mark.parametrize("b", range(1, 9))
@pytest.mark.parametrize("signed", [True, False])
def test_exhaustive_small_widths_round_trip(b, signed):
    lo, hi = int_range(b, signed)
    v = np.arange(lo, hi + 1)
    for f in (-2, 0, 3, 8):
        fp = FixedPoint(v, f, b, signed)
        assert fp.to_float().tolist() == [float(Fraction(int(a)) / pow2(f)) for a in v]
        back, n = FixedPoint.from_float(fp.to_float(), f, b, signed)
        assert n == 0 and np.array_equal(back.values, v)
    with pytest.raises(ValueError, match=f"raw value {hi + 1} is outside"):
        FixedPoint(np.append(v, hi + 1), 0, b, signed)
    with pytest.raises(ValueError, match=f"raw value {lo - 1} is outside"):
        FixedPoint(np.append(v, lo - 1), 0, b, signed)


# ---------------------------------------------------------------- exact arithmetic
@SETTINGS
@given(pairs())
def test_add_sub_exact(pair):
    a, b = pair
    for op, ref in [(a + b, lambda x, y: x + y), (a - b, lambda x, y: x - y)]:
        assert exact(op) == [ref(x, y) for x, y in zip(exact(a), exact(b), strict=True)]
        assert in_declared_range(op)
        assert np.array_equal(
            np.broadcast_to(op.frac_bits, np.shape(op.values)),
            np.broadcast_to(np.maximum(a.frac_bits, b.frac_bits), np.shape(op.values)),
        )
    assert (a - b).signed


@SETTINGS
@given(fixed_points())
def test_neg_exact(a):
    n = -a
    assert exact(n) == [-x for x in exact(a)]
    assert in_declared_range(n)


@SETTINGS
@given(pairs(max_bits=31))
def test_mul_exact(pair):
    a, b = pair
    p = a * b
    assert exact(p) == [x * y for x, y in zip(exact(a), exact(b), strict=True)]
    assert p.value_bits == a.value_bits + b.value_bits + int(a.signed and b.signed)
    assert in_declared_range(p)


@SETTINGS
@given(fixed_points(shape=(3, 4)), st.sampled_from([None, 0, 1, -1, (0, 1)]), st.booleans())
def test_sum_exact(a, axis, keepdims):
    s = a.sum(axis=axis, keepdims=keepdims)
    full = np.array(exact(a), dtype=object).reshape(3, 4)
    want = np.sum(full, axis=axis, keepdims=keepdims)
    assert exact(s) == list(np.ravel(np.asarray(want, dtype=object)))
    assert in_declared_range(s)
    if axis in (None, -1, 1, (0, 1)):
        assert s.frac_bits.ndim == 0


@SETTINGS
@given(st.data(), st.integers(1, 9), st.integers(1, 4))
def test_matmul_exact(data, k, n):
    a = data.draw(fixed_points(shape=(2, k)))
    w = data.draw(fixed_points(shape=(k, n)))
    out = a @ w
    ea = np.array(exact(a), dtype=object).reshape(2, k)
    ew = np.array(exact(w), dtype=object).reshape(k, n)
    want = [sum(ea[i, j] * ew[j, c] for j in range(k)) for i in range(2) for c in range(n)]
    assert exact(out) == want
    assert in_declared_range(out)


def test_worst_case_accumulator_width():
    """3x3x512 conv fan-in with extreme 8-bit values: exact, and within the declared width."""
    k = 3 * 3 * 512
    x = FixedPoint(np.full((1, k), 255), 0, 8, signed=False)
    w = FixedPoint(np.full((k, 2), -128), 0, 7, signed=True)
    acc = x @ w
    assert acc.values.tolist() == [[-255 * 128 * k] * 2]
    assert acc.value_bits == accumulator_bits(8, 7, k, signed_a=False, signed_b=True) == 28
    assert in_declared_range(acc)


# ---------------------------------------------------------------- precision changes
@SETTINGS
@given(fixed_points(), st.integers(0, 8))
def test_upscale_exact(a, d):
    up = a.upscale(a.frac_bits + d)
    assert exact(up) == exact(a)
    assert in_declared_range(up)


@SETTINGS
@given(fixed_points(max_bits=20), st.integers(0, 12))
def test_downscale_rounds_half_up(a, d):
    target = a.frac_bits - d
    down = a.downscale(target)
    ft = np.broadcast_to(target, np.shape(a.values)).ravel()
    for got, x, f in zip(exact(down), exact(a), ft, strict=True):
        assert got * pow2(f) == round_half_up(x * pow2(f))
        assert abs(got - x) <= HALF / pow2(f)
    assert in_declared_range(down)


@SETTINGS
@given(fixed_points(max_bits=20), st.integers(-6, 12), st.integers(1, 12), st.booleans())
def test_rescale_flags_saturation(a, f, b, signed):
    out, n = a.rescale(f, b, signed)
    lo, hi = int_range(b, signed)
    clipped = 0
    for got, x in zip(exact(out), exact(a), strict=True):
        ideal = round_half_up(x * pow2(f))
        if lo <= ideal <= hi:
            assert got * pow2(f) == ideal
        else:
            clipped += 1
            assert got * pow2(f) == (lo if ideal < lo else hi)
    assert n == clipped
    assert (out.value_bits, out.signed) == (b, signed)


def test_align_mixed_directions_and_saturate():
    a = FixedPoint([5, 5, 5], [1, 1, 1], 4)
    assert a.align([2, 1, 0]).values.tolist() == [10, 5, 3]
    s, n = FixedPoint([-300, 5, 300], 0, 10).saturate(7)
    assert (s.values.tolist(), n) == ([-128, 5, 127], 2)


@pytest.mark.parametrize("b", range(1, 9))
def test_exhaustive_add_mul_pairs(b):
    """All pairs of a signed b-bit and an unsigned b-bit value, at mixed frac_bits."""
    va = np.arange(*(lambda r: (r[0], r[1] + 1))(int_range(b, True)))
    vb = np.arange(0, 2**b)
    a = FixedPoint(np.repeat(va, vb.size), 2, b, True)
    c = FixedPoint(np.tile(vb, va.size), 5, b, False)
    fa, fc = a.to_float(), c.to_float()
    for res, want in [(a + c, fa + fc), (a - c, fa - fc), (c - a, fc - fa), (a * c, fa * fc)]:
        assert np.array_equal(res.to_float(), want)  # float64 is exact at these widths
        assert in_declared_range(res)


# ---------------------------------------------------------------- per-axis broadcasting
def test_per_axis_broadcasting():
    a = FixedPoint(np.arange(12).reshape(4, 3), [0, 1, 2], 5)
    t = FixedPoint([1, -1, 2], 1, 3)
    p = a * t
    assert p.shape == (4, 3) and p.frac_bits.tolist() == [1, 2, 3]
    assert np.array_equal(p.to_float(), a.to_float() * t.to_float())
    col = FixedPoint(np.array([[1], [2], [3], [4]]), 3, 4)
    s = col + FixedPoint([1, 2, 3], [0, 4, 1], 4)
    assert s.shape == (4, 3) and s.frac_bits.tolist() == [3, 4, 3]
    assert np.array_equal(s.to_float(), col.to_float() + np.array([1.0, 2 / 16, 1.5]))
    assert a.sum(axis=0).frac_bits.tolist() == [0, 1, 2]
    assert a.sum(axis=-1).frac_bits.tolist() == 2


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_rejects_non_finite(bad):
    with pytest.raises(ValueError, match=f"non-finite value {bad}"):
        FixedPoint.from_float([1.0, bad], 3, 7)


@pytest.mark.parametrize("bad", [0, -3, 32, 64])
def test_rejects_value_bits(bad):
    with pytest.raises(ValueError, match=rf"value_bits must be in \[1, 31\], got {bad}"):
        FixedPoint([1], 0, bad)
    with pytest.raises(ValueError, match=rf"got {bad}"):
        FixedPoint.from_float([1.0], 0, bad)


def test_rejects_wrong_frac_bits_shape():
    with pytest.raises(ValueError, match=r"length 3 .*shape \(2, 3\).*shape \(2,\)"):
        FixedPoint(np.zeros((2, 3), dtype=int), [1, 2], 7)
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        FixedPoint(np.zeros((2, 3), dtype=int), [[1, 2, 3]], 7)
    with pytest.raises(ValueError, match="per-axis frac_bits need values with at least one axis"):
        FixedPoint(3, [1], 7)


def test_rejects_out_of_range_raw_and_bad_types():
    with pytest.raises(ValueError, match=r"raw value 128 is outside \[-128, 127\]"):
        FixedPoint([1, 128], 0, 7)
    with pytest.raises(ValueError, match=r"raw value -1 is outside \[0, 255\]"):
        FixedPoint([-1], 0, 8, signed=False)
    with pytest.raises(TypeError, match="dtype float64"):
        FixedPoint([1.5], 0, 7)
    with pytest.raises(TypeError, match="signed must be a bool"):
        FixedPoint([1], 0, 7, signed=1)
    with pytest.raises(TypeError, match="needs another FixedPoint, got int"):
        FixedPoint([1], 0, 7) + 1
    with pytest.raises(ValueError, match="upscale needs frac_bits >= the current"):
        FixedPoint([1], 3, 7).upscale(2)
    with pytest.raises(ValueError, match="downscale needs frac_bits <= the current"):
        FixedPoint([1], 3, 7).downscale(4)
    with pytest.raises(ValueError, match="more than the 63"):
        FixedPoint([1], 0, 31) * FixedPoint([1], 0, 31) * FixedPoint([1], 0, 31)
