"""NeuralPlan.requant with the bias folded into the rounding offset equals the int64 reference
(requantize(acc + bias)) up to the float64 exactness bound, ties included, for signed and
unsigned output ranges."""

from __future__ import annotations

import numpy as np
import pytest

from fixedq.engine import kernels
from fixedq.engine.ops import Op
from fixedq.tensors.rounding import requantize

TWO53 = 2**53


def _amax(m, s):
    """Largest |acc + bias| that float_requant_ok accepts for (m, s)."""
    if s > 0:
        return (TWO53 - (1 << (s - 1))) // m
    return (TWO53 - 1) // (m << (1 - s))


def _plan(m, s, b, bound, lo, hi):
    op = Op("op", "neural", ["x"],
            {"type": "dense", "accum_dtype": "int64", "accum_bound": bound,
             "acc_lo": -(TWO53 - 1), "acc_hi": TWO53 - 1},
            {"kernel": np.ones((1, 1), np.int64), "bias": np.array([b]),
             "multiplier": np.array([m]), "shift": np.array([s]),
             "out_lo": np.array([lo]), "out_hi": np.array([hi])})
    return kernels.NeuralPlan(op)


@pytest.mark.parametrize("s", [-2, 0, 1, 5, 16, 31])
@pytest.mark.parametrize("lo_hi", [(-(2**62), 2**62), (0, 2**62), (-128, 127), (0, 15)])
def test_fused_requant_at_the_bound(s, lo_hi):
    lo, hi = lo_hi
    rng = np.random.default_rng(s + 100)
    for m in (1, 3, 255, (1 << 15) - 1, 1 << 14):
        amax = _amax(m, s)
        for b in (0, amax // 3, -(amax // 5), 7, -1):
            bound = amax - abs(b)
            plan = _plan(m, s, b, bound, lo, hi)
            assert plan.float_requant and not plan.acc_clip
            assert not _plan(m, s, b, bound + 1, lo, hi).float_requant
            acc = [bound - k for k in range(40)] + [-bound + k for k in range(40)]
            acc += rng.integers(-bound, bound + 1, 200).tolist() + [0, 1, -1]
            if s > 0 and m % 2:  # exact ties: (acc + b)*m = odd multiple of 2^(s-1)
                mod = 1 << s
                t = ((1 << (s - 1)) * pow(m, -1, mod) - b) % mod
                acc += [a for a in (t + j * mod for j in range(-(bound // mod), bound // mod,
                                                              max(1, bound // mod // 50)))
                        if abs(a) <= bound]
            acc = np.array(acc, dtype=np.int64)
            want = requantize(acc + b, m, s, lo, hi)
            got = plan.requant(acc.astype(np.float64)[:, None])[:, 0]
            np.testing.assert_array_equal(got, want)


def test_fused_requant_exhaustive_small():
    """Every acc in [-3000, 3000] for 6-bit multipliers, shifts 0..12 and a few biases, with
    float32 accumulators (as the one-group GEMM returns them)."""
    acc = np.arange(-3000, 3001)
    for m in range(32, 64, 3):
        for s in range(0, 13):
            for b in (-700, 0, 333):
                plan = _plan(m, s, b, 3000, -128, 127)
                np.testing.assert_array_equal(
                    plan.requant(acc.astype(np.float32)[:, None])[:, 0],
                    requantize(acc + b, m, s, -128, 127))


@pytest.mark.parametrize("s", [61, 62, 63, 64, 70, 75, 127])
def test_shifts_past_62_match_the_reference(s):
    """Files converted before eq. 13b's cap (or crafted) may hold shifts past 62: the int64
    fast path and the plan give the reference's result (0 or -0 rounding, never -1)."""
    from fixedq.engine.ops import fast_requantize

    acc = np.array([-(1 << 40), -5, -1, 0, 1, 5, 1 << 40, (1 << 47) + 3], dtype=np.int64)
    for m in (1, 3, (1 << 15) - 1):
        want = requantize(acc, m, s, -128, 127)
        np.testing.assert_array_equal(
            fast_requantize(acc.copy(), np.array([m]), np.array([s]), -128, 127), want)
        plan = _plan(m, s, 0, 1 << 48, -128, 127)
        np.testing.assert_array_equal(plan.requant(acc[:, None].copy())[:, 0], want)


@pytest.mark.parametrize("s", [1, 30, 48, 49, 55, 62])
def test_fast_requantize_near_int64_limits(s):
    """A 48-bit accumulator times a 16-bit multiplier: rounding must not wrap past 2^63
    (adding 2^(s-1) before the shift did at s >= 49)."""
    from fixedq.engine.ops import fast_requantize

    acc = np.array([(1 << 47) - 1, -(1 << 47), (1 << 46) + 12345, -1, 0, 1], dtype=np.int64)
    m = np.array([(1 << 16) - 1])
    lo, hi = -(1 << 40), 1 << 40
    want = requantize(acc, m, s, lo, hi)
    np.testing.assert_array_equal(fast_requantize(acc.copy(), m, np.array([s]), lo, hi), want)
    assert want[0] > 0 > want[1] or s < 49  # the saturated accumulators keep their signs
