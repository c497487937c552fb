"""QuantizedSoftmax (docs/numerics.md eqs. 39, 39b): the error bound measured in LSBs against
the float64 softmax of the quantized inputs, the NumPy twin, the exp table, bad specs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fixedq.engine.table_ops import softmax_int
from fixedq.layers.softmax import EXP_BITS, QuantizedSoftmax, exp_table
from fixedq.layers.spec import QSpec


def _bound(p: np.ndarray, g: int, bits: int, classes: int, delta: float) -> np.ndarray:
    """Eq. 39b in LSBs."""
    b = 0.5 + 2.0**g * (p * math.expm1(2 * delta) + (1 + p * classes) / 2.0 ** (EXP_BITS + 1))
    return b + (p * 2.0**g > 2**bits - 1)


def _run(in_spec: QSpec, bits: int, v: np.ndarray):
    layer = QuantizedSoftmax(input_specs=[in_spec], output_spec=QSpec(bits, False, (bits,)))
    x = np.ldexp(v.astype(np.float64), -in_spec.frac_array(v.shape[-1])).astype("float32")
    got = np.asarray(layer(x), np.float64) * 2.0**bits
    p = layer.integer_params()
    twin = softmax_int(v.astype(np.int64), p["exp_table"], p["in_align"], int(p["shift"]),
                       int(p["out_frac"]), int(p["out_lo"]), int(p["out_hi"]))
    assert np.array_equal(got, twin)  # Keras == the engine's kernel, every element
    z = np.ldexp(v.astype(np.float64), -in_spec.frac_array(v.shape[-1]))
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return got, z / z.sum(axis=-1, keepdims=True), int(p["shift"])


@pytest.mark.parametrize("frac, bits, classes", [(4, 8, 10), (2, 8, 1000), (6, 16, 7),
                                                 (20, 8, 5), (4, 4, 3)])
def test_error_within_the_documented_bound(frac, bits, classes):
    """Random 8-bit logits (and 16-bit for a fine grid): |p_hat - p 2^g| <= eq. 39b in LSBs;
    the largest measured error is far below it."""
    rng = np.random.default_rng(frac * 100 + classes)
    vb = 15 if frac == 20 else 7
    in_spec = QSpec(vb, True, (frac,))
    v = rng.integers(-(2**vb), 2**vb, size=(200, classes))
    v[0] = 0  # all equal: p = 1/C exactly
    v[1] = -(2**vb)
    v[1, 0] = 2**vb - 1  # one dominant class (saturates at 1 - 2^-bits)
    got, p, shift = _run(in_spec, bits, v)
    delta = 2.0 ** -(frac - shift + 1) if shift else 0.0
    err = np.abs(got - p * 2.0**bits)
    assert np.all(err <= _bound(p, bits, bits, classes, delta) + 1e-9), float(err.max())
    assert float(err.max()) <= 1.0 + 0.01  # <= 1/2 LSB + saturation at p = 1 in practice


def test_per_axis_inputs_are_aligned():
    """Per-channel frac_bits: inputs are aligned to the largest before the max (eq. 39)."""
    in_spec = QSpec(7, True, (3, 5, 4, 3))
    v = np.random.default_rng(2).integers(-128, 128, size=(300, 4))
    got, p, _ = _run(in_spec, 8, v)
    assert np.all(np.abs(got - p * 256) <= _bound(p, 8, 8, 4, 0.0) + 1e-9)


def test_exp_table_ends_at_its_first_zero():
    t = exp_table(4)
    assert t[0] == 2**EXP_BITS and t[-1] == 0 and np.all(t[:-1] > 0)
    assert np.all(np.diff(t) <= 0)
    assert abs(t.size - 25 * math.log(2) * 16) < 3


def test_output_spec_must_be_unsigned_per_tensor():
    layer = QuantizedSoftmax(input_specs=[QSpec(7, True, (4,))],
                             output_spec=QSpec(7, True, (7,)))
    with pytest.raises(ValueError, match="must be unsigned and per-tensor"):
        layer(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match="exp_bits must be in 1..30, got 40"):
        QuantizedSoftmax(exp_bits=40)
