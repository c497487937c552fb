"""Integer tables of elementwise functions (docs/numerics.md eq. 38): entries against an
independent float64 reference (TensorFlow's kernels via keras.activations) over every 8-bit
input, exact ties against Fraction, the Keras gather against the tables, PReLU's on-the-fly
entries, and bad input."""

from __future__ import annotations

import math
from fractions import Fraction

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from fixedq.layers.spec import QSpec
from fixedq.layers.table import (
    QuantizedActivation,
    QuantizedPReLU,
    integer_tables,
    table_input_size,
)
from fixedq.layers.table_functions import FUNCTIONS, check_params, for_activation

PARAMS = {"leaky_relu": {"negative_slope": 0.3}, "elu": {"alpha": 0.7},
          "celu": {"alpha": 1.3}, "gelu": {"approximate": False}}


def _reference(name: str, params: dict, x: np.ndarray) -> np.ndarray:
    """The Keras definition evaluated by TensorFlow in float64 (an implementation independent
    of the NumPy one the tables use); parameters rounded to float32 as the layers do."""
    t = tf.constant(x, tf.float64)
    p = {k: (v if isinstance(v, bool) else float(np.float32(v))) for k, v in params.items()}
    if name == "tf_keras_hard_sigmoid":  # tf-keras' own definition (clip(0.2 x + 0.5, 0, 1))
        return np.asarray(tf_keras.activations.hard_sigmoid(t), dtype=np.float64)
    fn = keras.activations.get(name)
    return np.asarray(fn(t, **p), dtype=np.float64)


def _table_error(name: str, params: dict, in_spec: QSpec, out_spec: QSpec) -> float:
    """Largest |T - phi(x) 2^g| in output LSBs over the entries that do not saturate."""
    fn = FUNCTIONS[name]
    table, base = integer_tables(lambda x, c: fn.numpy(x, **params), in_spec, out_spec, 1)
    lo, hi = in_spec.int_bounds()
    v = np.arange(lo, hi + 1)
    f, g = in_spec.frac_bits[0], out_spec.frac_bits[0]
    ref = _reference(name, params, np.ldexp(v.astype(np.float64), -f)) * 2.0**g
    got = table[v + base[0]]
    o_lo, o_hi = out_spec.int_bounds()
    inside = (ref > o_lo - 0.5) & (ref < o_hi + 0.5)
    assert np.all(got[ref <= o_lo - 0.5] == o_lo) and np.all(got[ref >= o_hi + 0.5] == o_hi)
    return float(np.abs(got[inside] - ref[inside]).max())


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("in_frac", [3, 5])
def test_every_8bit_entry_within_half_an_lsb(name, in_frac):
    """Exhaustive over the 256 signed 8-bit inputs: every entry inside the output range is
    within 1/2 LSB (+ float64 noise) of the float64 reference; outside it, saturated."""
    params = PARAMS.get(name, {})
    signed = FUNCTIONS[name].signed
    out = QSpec(7, True, (5,)) if signed else QSpec(8, False, (8,))
    err = _table_error(name, params, QSpec(7, True, (in_frac,)), out)
    assert err <= 0.5 + 1e-9, f"{name}: {err} LSB"


def test_gelu_tanh_approximation_and_16bit_inputs():
    """The tanh-approximate GELU, and 16-bit inputs (65,536 entries) with 16-bit outputs."""
    err = _table_error("gelu", {"approximate": True}, QSpec(7, True, (4,)), QSpec(7, True, (5,)))
    assert err <= 0.5 + 1e-9
    for name in ("sigmoid", "silu", "tanh"):
        out = QSpec(15, True, (12,)) if FUNCTIONS[name].signed else QSpec(16, False, (16,))
        assert _table_error(name, {}, QSpec(15, True, (11,)), out) <= 0.5 + 1e-6, name


def _exact_entry(value: Fraction, g: int) -> int:
    return math.floor(value * 2**g + Fraction(1, 2))


@pytest.mark.parametrize("name, exact", [
    ("hard_sigmoid", lambda x: min(max(x + 3, Fraction(0)), Fraction(6)) / 6),
    ("hard_silu", lambda x: x * min(max(x + 3, Fraction(0)), Fraction(6)) / 6),
    ("leaky_relu", lambda x: x if x >= 0 else Fraction(1, 2) * x),
])
def test_piecewise_rational_entries_are_exactly_rounded(name, exact):
    """Ties (value * 2^g = k + 1/2) round up exactly as eq. 2 says: every 8-bit entry equals
    round_half_up of the exact rational value (Fraction), at several grids."""
    params = {"negative_slope": 0.5} if name == "leaky_relu" else {}
    fn = FUNCTIONS[name]
    ties = 0
    for f, g in ((0, 0), (2, 1), (4, 3), (5, 7)):
        in_spec, out_spec = QSpec(7, True, (f,)), QSpec(15, True, (g,))
        table, base = integer_tables(lambda x, c: fn.numpy(x, **params), in_spec, out_spec, 1)
        for v in range(-128, 128):
            want = exact(Fraction(v, 2**f))
            ties += (want * 2**g).denominator == 2
            assert table[v + base[0]] == _exact_entry(want, g), (name, f, g, v)
    assert ties > 10  # the grids really contain ties


def test_keras_gather_equals_the_tables_per_axis_and_asymmetric():
    """The layer's output integers are the table entries, for every input integer of every
    channel: per-axis frac_bits (shared tables), an asymmetric input window."""
    for in_spec in (QSpec(7, True, (3, 5, 3)), QSpec(7, True, (4,), lo=(-30, -200, 0))):
        out_spec = QSpec(7, True, (5, 6, 5))
        layer = QuantizedActivation("silu", input_specs=[in_spec], output_spec=out_spec)
        lo, hi = in_spec.lo_array(), in_spec.hi_array()
        lo, hi = np.broadcast_to(lo, 3), np.broadcast_to(hi, 3)
        v = np.stack([np.clip(np.arange(-256, 256), a, b) for a, b in zip(lo, hi, strict=True)],
                     axis=1)
        f = in_spec.frac_array(3)
        x = np.ldexp(v.astype(np.float64), -f).astype("float32")
        y = np.asarray(layer(x)) * 2.0 ** out_spec.frac_array(3)
        table, base = integer_tables(lambda t, c: FUNCTIONS["silu"].numpy(t), in_spec,
                                     out_spec, 3)
        assert np.array_equal(y, table[v + base])
        assert table.size == 2 * 256 if in_spec.lo is None else table.size == 3 * 256


def test_prelu_on_the_fly_entries_equal_its_tables():
    """PReLU's Keras layer computes each entry directly; it equals the per-channel tables the
    engine gets (ties included: alpha 0.5, 0.25), every 8-bit input."""
    in_spec, out_spec = QSpec(7, True, (4, 2, 3)), QSpec(7, True, (5, 3, 6))
    layer = QuantizedPReLU(input_specs=[in_spec], output_spec=out_spec)
    layer.build((None, 3))
    layer.set_weights([np.array([0.5, 0.25, -0.7], np.float32)])
    v = np.repeat(np.arange(-128, 128)[:, None], 3, axis=1)
    x = np.ldexp(v.astype(np.float64), -in_spec.frac_array(3)).astype("float32")
    got = np.asarray(layer(x)) * 2.0 ** out_spec.frac_array(3)
    p = layer.integer_params()
    assert np.array_equal(got, p["table"][v + p["base"]])
    assert p["table"].size == 3 * 256  # one table per channel


def test_straight_through_gradient_is_the_float_functions():
    spec_in, spec_out = QSpec(7, True, (5,)), QSpec(7, True, (5,))
    layer = QuantizedActivation("tanh", input_specs=[spec_in], output_spec=spec_out)
    x = tf.constant([[0.0, 0.5, -1.0]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
    g = np.asarray(tape.gradient(y, x))
    np.testing.assert_allclose(g, 1 - np.tanh([[0.0, 0.5, -1.0]]) ** 2, rtol=1e-5)


def test_activation_names_and_parameters():
    assert for_activation("swish") == ("silu", {})
    assert for_activation(keras.activations.hard_swish) == ("hard_silu", {})
    assert for_activation("gelu") == ("gelu", {"approximate": False})
    assert for_activation("relu") is None and for_activation("no_such_fn") is None
    with pytest.raises(ValueError, match="'cube' has no integer table"):
        check_params("cube", {})
    with pytest.raises(ValueError, match="takes parameters \\['alpha'\\], got \\['beta'\\]"):
        check_params("elu", {"beta": 1.0})
    with pytest.raises(ValueError, match="negative_slope must be a finite number, got nan"):
        check_params("leaky_relu", {"negative_slope": float("nan")})
    with pytest.raises(ValueError, match="approximate must be true or false, got 1"):
        check_params("gelu", {"approximate": 1})


def test_inputs_wider_than_16_bits_have_no_table():
    assert table_input_size(QSpec(15, True, (8,)), 4) == 1 << 16
    assert table_input_size(QSpec(16, False, (8,)), 4) == 1 << 16
    with pytest.raises(ValueError, match="131072 integers \\(more than 16 bits\\)"):
        table_input_size(QSpec(16, True, (8,)), 4)
