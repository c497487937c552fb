"""The keras.ops executor agrees bit for bit with the NumPy reference (eqs. 2-7, 13b).

This is the only tensors test module that imports Keras/TensorFlow (slow to import).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

keras = pytest.importorskip("keras")
from keras import ops  # noqa: E402

from fixedq.tensors import kops, rounding  # noqa: E402

SETTINGS = settings(max_examples=30, deadline=None)
INTS = arrays(np.int64, (3, 4), elements=st.integers(-(2**30), 2**30))
FLOATS = arrays(
    np.float64,
    (3, 4),
    elements=st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, allow_subnormal=False),
)


def np_(x):
    return np.asarray(ops.convert_to_numpy(x))


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


# ---------------------------------------------------------------- graph mode
def test_graph_mode_requantization():
    """The layers' in-graph path (eqs. 4, 6, 13b, 7) traced by tf.function equals the NumPy one."""
    import tensorflow as tf

    scales = np.array([0.75, 1e-25, 0.0, 3e5])

    @tf.function
    def layer(x):
        v = kops.quantize_float(x, 3, -128, 127)
        m, s = kops.to_multiplier_shift(tf.constant(scales), 8)
        return kops.requantize_dynamic(v, m, s, -128, 127)

    x = np.array([[0.5, -1.0, 2.0, 0.25], [1.25, 100.0, -3.0, -0.125]])
    m, s = rounding.to_multiplier_shift(scales, 8)
    want = rounding.requantize(rounding.quantize_input(x, 3, -128, 127), m, s, -128, 127)
    assert np.array_equal(layer(tf.constant(x)).numpy(), want)
