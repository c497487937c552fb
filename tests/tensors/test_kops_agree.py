"""The keras.ops executor agrees bit for bit with the NumPy reference (eqs. 2-7, 8-16).

This is the only tensors test module that imports Keras/TensorFlow (slow to import).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

keras = pytest.importorskip("keras")
from keras import ops  # noqa: E402

from fixedq.tensors import FixedPoint, QFloat, kops, rounding  # noqa: E402

SETTINGS = settings(max_examples=30, deadline=None)
INTS = arrays(np.int64, (3, 4), elements=st.integers(-(2**30), 2**30))
FLOATS = arrays(
    np.float64,
    (3, 4),
    elements=st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, allow_subnormal=False),
)


def np_(x):
    return np.asarray(ops.convert_to_numpy(x))


def same(fk: FixedPoint, fn: FixedPoint) -> None:
    assert fk.backend.name == "keras" and fn.backend.name == "numpy"
    assert np.array_equal(np_(fk.values), fn.values)
    assert np.array_equal(fk.frac_bits, fn.frac_bits)
    assert (fk.value_bits, fk.signed) == (fn.value_bits, fn.signed)


# ---------------------------------------------------------------- primitives
def test_primitives_on_every_tie():
    x = np.arange(-64, 65) / 4.0
    assert np.array_equal(np_(kops.round_half_up(x)), rounding.round_half_up(x))
    v = np.arange(-300, 300)
    assert np.array_equal(np_(kops.saturate(v, -128, 127)), rounding.saturate(v, -128, 127)[0])
    for s in range(-4, 12):
        assert np.array_equal(np_(kops.shift_round(v, s)), rounding.shift_round(v, s))
        shift = np.full(v.shape, s)
        assert np.array_equal(np_(kops.shift_round_dynamic(v, shift)), rounding.shift_round(v, s))


@SETTINGS
@given(FLOATS, st.integers(-4, 12), st.integers(1, 31), st.booleans())
def test_quantize_float_agrees(x, f, b, signed):
    lo, hi = rounding.int_range(b, signed)
    want, _ = rounding.quantize_float(x, f, b, signed)
    assert np.array_equal(np_(kops.quantize_float(x, f, lo, hi)), want)


@SETTINGS
@given(
    arrays(np.float64, (6,), elements=st.floats(1e-30, 1e30, allow_subnormal=False)),
    st.integers(1, 24),
    INTS,
)
def test_multiplier_shift_and_requantize_agree(scale, n, acc):
    m, s = rounding.to_multiplier_shift(scale, n)
    km, ks = kops.to_multiplier_shift(scale, n)
    assert np.array_equal(np_(km), m) and np.array_equal(np_(ks), s)
    m4, s4 = m[:4], np.clip(s[:4], -8, 60)  # keep acc * M inside int64
    m4 = np.minimum(m4, 2**24)
    want = rounding.requantize(acc, m4, s4, -(2**15), 2**15 - 1)
    assert np.array_equal(np_(kops.requantize(acc, m4, s4, -(2**15), 2**15 - 1)), want)
    got = kops.requantize_dynamic(
        acc, ops.convert_to_tensor(m4), ops.convert_to_tensor(s4), -(2**15), 2**15 - 1
    )
    assert np.array_equal(np_(got), want)


# ---------------------------------------------------------------- FixedPoint on both backends
@SETTINGS
@given(FLOATS, FLOATS, st.lists(st.integers(-3, 10), min_size=4, max_size=4), st.integers(2, 12))
def test_fixed_point_operations_agree(x, y, f_axis, f):
    an, n1 = FixedPoint.from_float(x, f_axis, 20)
    ak, k1 = FixedPoint.from_float(ops.convert_to_tensor(x), f_axis, 20)
    bn, n2 = FixedPoint.from_float(y, f, 14, signed=False)
    bk, k2 = FixedPoint.from_float(y, f, 14, signed=False, backend="keras")
    assert (int(np_(k1)), int(np_(k2))) == (n1, n2)
    same(ak, an)
    same(bk, bn)
    same(ak + bk, an + bn)
    same(ak - bk, an - bn)
    same(-ak, -an)
    same(ak * bk, an * bn)
    for axis in (None, 0, -1):
        same(ak.sum(axis=axis), an.sum(axis=axis))
    wn = FixedPoint(np.arange(-10, 10).reshape(4, 5), [0, 1, 2, 3, 4], 7)
    same(ak @ wn.to_keras(), an @ wn)
    same(ak.upscale(np.array(f_axis) + 2), an.upscale(np.array(f_axis) + 2))
    same(ak.downscale(np.array(f_axis) - 3), an.downscale(np.array(f_axis) - 3))
    rk, ck = ak.rescale(f, 7)
    rn, cn = an.rescale(f, 7)
    same(rk, rn)
    assert int(np_(ck)) == cn
    assert np.array_equal(np_(ak.to_float()), an.to_float())


@SETTINGS
@given(FLOATS, st.integers(2, 12), st.integers(-2, 8), st.integers(2, 16))
def test_qfloat_agrees(w, b, f_out, scale_bits):
    qn = QFloat.from_float(w, value_bits=b)
    qk = QFloat.from_float(w, value_bits=b, backend="keras")
    same(qk.fp, qn.fp)
    assert np.array_equal(np_(qk.scales), qn.scales)
    yn, cn = qn.to_fixed_point(f_out, 7, scale_bits=scale_bits)
    yk, ck = qk.to_fixed_point(f_out, 7, scale_bits=scale_bits)
    same(yk, yn)
    assert int(np_(ck)) == cn
    bn, _ = qn.quantize_onto(w[0])
    bk, _ = qk.quantize_onto(w[0])
    same(bk.fp, bn.fp)


def test_graph_mode_with_static_metadata():
    """FixedPoint works on symbolic tensors inside a traced function (no eager range checks)."""
    import tensorflow as tf

    @tf.function
    def layer(x):
        xq, _ = FixedPoint.from_float(x, 3, 7)
        w = FixedPoint(tf.constant([[1, -2], [3, 4]], dtype=tf.int64), [1, 2], 7)
        y, n = (xq @ w).rescale(2, 7)
        return y.values, n

    x = np.array([[0.5, -1.0], [1.25, 100.0]])
    yk, nk = layer(tf.constant(x))
    xq, _ = FixedPoint.from_float(x, 3, 7)
    y, n = (xq @ FixedPoint([[1, -2], [3, 4]], [1, 2], 7)).rescale(2, 7)
    assert np.array_equal(yk.numpy(), y.values) and int(nk) == n


def test_keras_bad_input():
    with pytest.raises(ValueError, match="raw value 200 is outside"):
        FixedPoint(ops.convert_to_tensor(np.array([1, 200])), 0, 7)
    with pytest.raises(ValueError, match="non-finite value inf"):
        FixedPoint.from_float(ops.convert_to_tensor(np.array([1.0, np.inf])), 0, 7)
    with pytest.raises(TypeError, match="dtype float32"):
        FixedPoint(ops.convert_to_tensor(np.array([1.0], dtype=np.float32)), 0, 7)
    with pytest.raises(TypeError, match="cannot combine a keras FixedPoint with a numpy"):
        FixedPoint([1], 0, 7).to_keras() + FixedPoint([1], 0, 7)
