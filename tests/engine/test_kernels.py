"""Fast engine kernels: float64 requantization identity, grouped float32 GEMMs, pool-first
requantization and the event kernels, each checked against the int64 reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fixedq.engine import events, kernels
from fixedq.engine.ops import Op, neural_output
from fixedq.tensors.rounding import requantize

TWO53 = 2**53


def _ref_requant(acc, m, s, lo=-(2**62), hi=2**62):
    return requantize(np.asarray(acc, dtype=np.int64), m, s, lo, hi)


def _float_requant(acc, m, s, lo=-(2**62), hi=2**62):
    scale = np.float64(m) * np.ldexp(1.0, -np.int64(s))
    return kernels.requantize_float(np.asarray(acc, dtype=np.float64), scale, float(lo),
                                    float(hi))


def _amax(m, s):
    """Largest |acc| that float_requant_ok accepts for (m, s)."""
    if s > 0:
        return (TWO53 - (1 << (s - 1))) // m
    return (TWO53 - 1) // (m << (1 - s))


@pytest.mark.parametrize("s", [-3, 0, 1, 2, 7, 16, 24, 31, 40])
def test_float_requant_identity_at_the_bound(s):
    """floor(acc*M*2^-S + 1/2) in float64 == int64 shift_round(acc*M, S) up to the bound,
    including exact ties (acc*M = k*2^S + 2^(S-1)) at the largest magnitudes."""
    for bits in (1, 2, 8, 16, 24):
        for m in {1, (1 << bits) - 1, 1 << (bits - 1), (1 << bits) - 3 if bits > 2 else 1}:
            amax = _amax(m, s)
            assert kernels.float_requant_ok(amax, m, s)
            assert not kernels.float_requant_ok(amax + 1, m, s)
            acc = [amax - k for k in range(64)] + [-amax + k for k in range(64)]
            if s > 0:  # exact ties near the bound: acc*M = odd multiple of 2^(S-1)
                g = int(np.gcd(m, 1 << s))
                if g <= 1 << (s - 1):
                    mod = (1 << s) // g
                    a0 = ((1 << (s - 1)) // g) * pow(m // g, -1, mod) % mod if mod > 1 else 0
                    top = amax - (amax - a0) % mod
                    bot = -amax + (a0 + amax) % mod
                    acc += [top - j * mod for j in range(8)] + [bot + j * mod for j in range(8)]
                    assert (top * m) % (1 << s) == 1 << (s - 1)
            acc = [a for a in acc if abs(a) <= amax] + [0, 1, -1]
            np.testing.assert_array_equal(_float_requant(acc, m, s), _ref_requant(acc, m, s))


def test_float_requant_exhaustive_small():
    """Every acc in [-4096, 4096] for every 6-bit multiplier and shift in [0, 14]."""
    acc = np.arange(-4096, 4097)
    for m, s in itertools.product(range(32, 64), range(0, 15)):
        np.testing.assert_array_equal(_float_requant(acc, m, s, -128, 127),
                                      _ref_requant(acc, m, s, -128, 127))


def test_float_requant_bound_is_needed():
    """Past 2^53 float64 loses the integer: the bound is not just conservative."""
    acc = 2**53 + 1
    assert not kernels.float_requant_ok(acc, 1, 1)
    assert _float_requant([acc], 1, 1)[0] != _ref_requant([acc], 1, 1)[0]


# ------------------------------------------------------------------------------------- ops

def _op(kind, kernel, rng, align=None, pool=None, strides=(1, 1), padding="same",
        dilation=(1, 1), mult_bits=8, shift=(8, 20), acc_bits=31, bias_mag=1000):
    cout = kernel.shape[-1] if kind != "depthwise" else kernel.shape[2] * kernel.shape[3]
    if kind == "transpose":
        cout = kernel.shape[2]
    arrays = {"kernel": kernel, "bias": rng.integers(-bias_mag, bias_mag + 1, cout),
              "multiplier": rng.integers(1 << (mult_bits - 1), 1 << mult_bits, cout),
              "shift": rng.integers(shift[0], shift[1] + 1, cout),
              "out_lo": np.full(cout, -128), "out_hi": np.full(cout, 127)}
    if align is not None:
        arrays["in_align"] = np.asarray(align)
    cin = {"dense": 0, "conv2d": 2, "depthwise": 2, "transpose": 3}[kind]
    mags = np.full(kernel.shape[cin], 255) << (0 if align is None else np.asarray(align))
    bound = kernels.linear_bound(kernel, kind, mags)
    attrs = {"type": kind, "accum_dtype": kernels.exact_dtype(bound), "accum_bound": bound,
             "acc_lo": -(1 << acc_bits), "acc_hi": (1 << acc_bits) - 1}
    if kind != "dense":
        attrs.update(strides=list(strides), padding=padding, dilation_rate=list(dilation))
    if pool:
        attrs["pool"] = pool
    return Op("op", "neural", ["x"], attrs, arrays)


def _reference(op, x):
    a = op.attrs
    align = op.arrays.get("in_align")
    xa = np.left_shift(x, align) if align is not None else x
    k = op.arrays["kernel"]
    if a["type"] == "dense":
        lin = kernels.dense(xa, k, "int64")
    else:
        args = (tuple(a["strides"]), a["padding"], tuple(a["dilation_rate"]), "int64")
        fn = {"conv2d": kernels.conv2d, "depthwise": kernels.depthwise_conv2d,
              "transpose": kernels.conv2d_transpose}[a["type"]]
        lin = fn(xa, k, *args)
    return neural_output(op, lin)


def _fast(op, x):
    plan = kernels.NeuralPlan(op)
    return plan.finish(plan.linear(x), lambda acc: neural_output(op, acc))


POOLS = [None, {"pool_size": [2, 2], "strides": [2, 2], "padding": "valid"},
         {"pool_size": [2, 2], "strides": [2, 2], "padding": "same"},
         {"pool_size": [3, 3], "strides": [2, 2], "padding": "same"}]


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("geom", [((1, 1), "same", (1, 1)), ((2, 2), "same", (1, 1)),
                                  ((1, 1), "valid", (2, 2)), ((2, 1), "valid", (1, 1))])
def test_plan_conv_matches_reference(pool, geom):
    rng = np.random.default_rng(0)
    strides, padding, dil = geom
    x = rng.integers(0, 256, size=(3, 11, 10, 6))
    k = rng.integers(-128, 128, size=(3, 3, 6, 5))
    for align in (None, [0, 5, 0, 2, 6, 3], [4] * 6):
        op = _op("conv2d", k, rng, align, pool, strides, padding, dil)
        np.testing.assert_array_equal(_fast(op, x), _reference(op, x))


def test_plan_groups_split_only_when_needed():
    rng = np.random.default_rng(1)
    k = rng.integers(-128, 128, size=(3, 3, 64, 8))
    op = _op("conv2d", k, rng, align=np.r_[np.zeros(32, int), np.full(32, 6)])
    plan = kernels.NeuralPlan(op)
    x = rng.integers(0, 256, size=(2, 5, 5, 64))
    groups, total = plan._groups(np.abs(x.reshape(-1, 64)).max(0)[plan.perm].astype(float))
    assert total >= kernels.FLOAT32_EXACT and len(groups) == 2
    assert all(g[3] == "float32" for g in groups)
    np.testing.assert_array_equal(_fast(op, x), _reference(op, x))
    small = rng.integers(0, 2, size=(2, 5, 5, 64))  # tiny batch maxima: one float32 group
    groups, _ = plan._groups(np.abs(small.reshape(-1, 64)).max(0)[plan.perm].astype(float))
    assert len(groups) == 1
    np.testing.assert_array_equal(_fast(op, small), _reference(op, small))


def test_plan_int64_and_fallback_paths():
    rng = np.random.default_rng(2)
    # |x| ~ 2^40: the float64 GEMM is not exact -> int64 linear; M*acc past 2^53 -> int64 tail
    x = rng.integers(-(2**40), 2**40, size=(2, 4, 4, 3))
    k = rng.integers(-(2**11), 2**11, size=(3, 3, 3, 4))
    op = _op("conv2d", k, rng, acc_bits=62, mult_bits=16, shift=(30, 40),
             pool=POOLS[1])
    op.attrs["accum_bound"] = 2**61
    plan = kernels.NeuralPlan(op)
    assert not plan.float_requant
    np.testing.assert_array_equal(_fast(op, x), _reference(op, x))


def test_plan_negative_shift_and_active_accumulator_clip():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, size=(2, 6, 6, 4))
    k = rng.integers(-128, 128, size=(3, 3, 4, 3))
    op = _op("conv2d", k, rng, shift=(-2, 3), acc_bits=12, mult_bits=4)
    op.arrays["out_lo"], op.arrays["out_hi"] = np.full(3, -(2**20)), np.full(3, 2**20)
    assert kernels.NeuralPlan(op).acc_clip
    np.testing.assert_array_equal(_fast(op, x), _reference(op, x))


@pytest.mark.parametrize("kind", ["dense", "depthwise", "transpose"])
def test_plan_dense_depthwise_transpose(kind):
    rng = np.random.default_rng(4)
    if kind == "dense":
        k = rng.integers(-128, 128, size=(12, 7))
        xs = [rng.integers(0, 256, size=(5, 12)), rng.integers(0, 256, size=(2, 3, 12))]
        aligns = (None, rng.integers(0, 7, 12))
    elif kind == "depthwise":
        k = rng.integers(-128, 128, size=(3, 3, 4, 2))
        xs = [rng.integers(0, 256, size=(2, 7, 7, 4))]
        aligns = (None, [0, 3, 6, 1])
    else:
        k = rng.integers(-128, 128, size=(3, 3, 5, 4))
        xs = [rng.integers(0, 256, size=(2, 4, 4, 4))]
        aligns = (None, [0, 3, 6, 1])
    for x, align in itertools.product(xs, aligns):
        op = _op(kind, k, rng, align, strides=(2, 2) if kind == "transpose" else (1, 1))
        np.testing.assert_array_equal(_fast(op, x), _reference(op, x))


# ------------------------------------------------------------------------------ events

def _sparse(rng, shape, zero_frac, pixel=True):
    x = rng.integers(1, 256, size=shape)
    mask = rng.random(shape[:-1] if pixel else shape) < zero_frac
    x[mask] = 0
    return x


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("geom", [((1, 1), "same", (1, 1)), ((2, 2), "same", (1, 1)),
                                  ((1, 1), "valid", (2, 2)), ((1, 2), "valid", (1, 1)),
                                  ((1, 1), "same", (1, 2))])
def test_event_conv_equals_dense(monkeypatch, pool, geom):
    monkeypatch.setattr(events, "EVENT_MAX_ACTIVE", 1.0)
    monkeypatch.setattr(events, "EVENT_MAX_DENSITY", 1.0)
    monkeypatch.setattr(events, "COST_NS", {**events.COST_NS, "event_value": 0.0})
    rng = np.random.default_rng(5)
    strides, padding, dil = geom
    for cin, align, zf in ((1, None, 0.9), (6, [0, 5, 0, 2, 6, 3], 0.8), (6, None, 1.0)):
        k = rng.integers(-128, 128, size=(3, 3, cin, 5))
        x = _sparse(rng, (3, 10, 12, cin), zf)
        op = _op("conv2d", k, rng, align, pool, strides, padding, dil)
        stats = {"op": {}}
        got = events.run_neural_events(op, x, stats)
        assert stats["op"]["event_driven"]
        np.testing.assert_array_equal(got, _reference(op, x))


def test_event_dense_equals_dense(monkeypatch):
    monkeypatch.setattr(events, "EVENT_MAX_ACTIVE", 1.0)
    rng = np.random.default_rng(6)
    k = rng.integers(-128, 128, size=(40, 9))
    x = _sparse(rng, (8, 40), 0.9, pixel=False)
    x[:, :30] = 0
    for align in (None, rng.integers(0, 7, 40)):
        op = _op("dense", k, rng, align)
        np.testing.assert_array_equal(events.run_neural_events(op, x), _reference(op, x))


def test_event_auto_selects_dense_kernel_on_dense_input():
    rng = np.random.default_rng(7)
    op = _op("conv2d", rng.integers(-128, 128, size=(3, 3, 2, 3)), rng)
    x = rng.integers(1, 256, size=(2, 6, 6, 2))
    stats = {"op": {}}
    np.testing.assert_array_equal(events.run_neural_events(op, x, stats), _reference(op, x))
    assert stats["op"]["event_driven"] is False
