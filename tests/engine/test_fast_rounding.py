"""The compiled dense path takes the rounding rule as a parameter (eq. 5b, 7b, 7c): for every
rule, programs of every compiled requantizing kernel (conv2d / dense GEMM epilogues with one
and two byte planes and the float GEMM, depthwise, gap, shift, affine, add) equal the NumPy
reference kernels on every element, with many exact ties, worst-case magnitudes and the input
and output offsets of imported programs (eq. 37) folded into the kernels."""

from __future__ import annotations

import numpy as np
import pytest

from fixedq.engine import kernels
from fixedq.engine.fast import int_gemm, jit
from fixedq.engine.fast import plan as plan_module
from fixedq.engine.fast.plan import DIRECT_MACS, _Elementwise, _NeuralStep
from fixedq.engine.model import Model
from fixedq.engine.ops import Op
from fixedq.tensors.rounding import ROUNDINGS, float32_multiplier_shift

INT32 = (-(2**31), 2**31 - 1)


def _scales(rng, rule, c, tie_rich):
    """``(multiplier, shift)`` of the rule's kind: Q31 for tflite (half of the channels
    ``M = 2^30``: every odd product is a first-stage tie), float32 significands for fp32
    (``M = 1``: exact halves), small multipliers and shifts elsewhere (ties every 2^S)."""
    if rule == "tflite":
        m = rng.integers(2**30, 2**31, c)
        s = rng.integers(28, 40, c)
        if tie_rich:
            m[::2] = 2**30
        return m, s
    if rule == "fp32":
        f = rng.uniform(2.0**-12, 4.0, c).astype(np.float32)
        if tie_rich:
            f[::2] = np.float32(2.0) ** -rng.integers(1, 4, f[::2].size).astype(np.float32)
        return float32_multiplier_shift(f)
    m = rng.integers(1, 8, c)
    s = rng.integers(1, 4, c) if tie_rich else rng.integers(-2, 20, c)
    return m, s


def _program(rng, rule, signed, offsets, tie_rich, c=6, hw=(7, 6)):
    """input -> conv2d 3x3 -> depthwise -> dense-like 1x1 conv -> add(skip) -> affine ->
    shift -> gap -> dense, each requantizing op with ``rule``."""
    lo, hi = (-128, 127) if signed else (0, 255)
    ops = [Op("in", "input", [], {}, {"frac": np.zeros(c, np.int64), "lo": np.full(c, lo),
                                      "hi": np.full(c, hi)})]
    prev, prev_c = "in", c

    def neural(name, kind, src, cin, cout, k=3, wmax=127):
        shape = {"dense": (cin, cout), "depthwise": (k, k, cin, 1)}.get(kind, (k, k, cin, cout))
        kernel = rng.integers(-wmax - 1, wmax + 1, shape)
        if rng.random() < 0.3:
            kernel[...] = -wmax - 1  # worst case
        cout = cin if kind == "depthwise" else cout
        m, s = _scales(rng, rule, cout, tie_rich)
        arrays = {"kernel": kernel, "bias": rng.integers(-3000, 3000, cout), "multiplier": m,
                  "shift": s, "out_lo": np.full(cout, lo), "out_hi": np.full(cout, hi)}
        mag = 255 + (128 if offsets else 0)
        bound = kernels.linear_bound(kernel, kind, np.full(cin, mag))
        attrs = {"type": kind, "accum_dtype": kernels.exact_dtype(bound),
                 "accum_bound": int(bound), "acc_lo": INT32[0], "acc_hi": INT32[1],
                 "rounding": rule}
        if kind != "dense":
            attrs.update(strides=[1, 1], padding="same", dilation_rate=[1, 1])
        if offsets:  # eq. 37 as the TFLite importer writes it: -zp in, -zp out
            zin, zout = (int(v) for v in rng.integers(-100, 100, 2))
            arrays["in_offset0"] = np.array([-zin])
            arrays["out_offset"] = np.array([-zout])
            arrays["out_lo"] = np.full(cout, lo - zout)
            arrays["out_hi"] = np.full(cout, hi - zout)
        ops.append(Op(name, "neural", [src], attrs, arrays))
        return name, cout

    a, ca = neural("conv", "conv2d", prev, prev_c, 5)
    b, cb = neural("dw", "depthwise", a, ca, ca)
    d, cd = neural("pw", "conv2d", b, cb, 5, k=1)
    m, s = _scales(rng, "half_up", cd, tie_rich)
    el_rule = rule
    lims = {"out_lo": np.full(cd, -(2**20)), "out_hi": np.full(cd, 2**20)}
    ops.append(Op("sum", "add", [d, a], {"rounding": el_rule},
                  {"align0": rng.integers(0, 3, cd), "align1": rng.integers(0, 3, cd),
                   "shift": rng.integers(1, 4, cd), **lims}))
    ops.append(Op("aff", "affine", ["sum"], {"rounding": el_rule},
                  {"multiplier": rng.integers(-300, 300, cd), "offset": rng.integers(-999, 999, cd),
                   "shift": rng.integers(1, 12, cd), **lims}))
    ops.append(Op("sh", "shift", ["aff"], {"rounding": el_rule},
                  {"shift": rng.integers(1, 6, cd), "out_lo": np.full(cd, lo),
                   "out_hi": np.full(cd, hi)}))
    gm, gs = _scales(rng, rule, cd, tie_rich)
    ops.append(Op("gap", "gap", ["sh"], {"rounding": rule},
                  {"multiplier": gm, "shift": gs if rule in ("tflite", "fp32") else gs + 5,
                   "out_lo": np.full(cd, lo), "out_hi": np.full(cd, hi)}))
    f, _ = neural("fc", "dense", "gap", cd, 4)
    outs = [{"tensor": t, "frac": [0] * n, "name": t} for t, n in ((f, 4), ("sh", cd),
                                                                      (b, cb))]
    return Model(ops, outs, (None, *hw, c))


def _inputs(rng, shape, n, signed, tie_rich):
    lo, hi = (-128, 127) if signed else (0, 255)
    x = rng.integers(lo, hi + 1, (n, *shape)).astype(np.float32)
    if not tie_rich:  # saturating extremes
        x[rng.random(x.shape) < 0.4] = hi
        x[rng.random(x.shape) < 0.2] = lo
    return x


def _compare(model, x, monkeypatch):
    monkeypatch.setenv(jit.ENV, "0")
    assert model.fast_plan() is None
    want = model.run_batch(x)
    monkeypatch.setenv(jit.ENV, "1")
    plan = model.fast_plan()
    for step in plan.steps:  # every requantizing op has its compiled kernel
        if isinstance(step, _NeuralStep):
            assert step.fast and step.handles_offsets, step.op.name
        if isinstance(step, _Elementwise) and step.kind != "input":
            assert step._consts(step.op.arrays["shift"].size) is not None, step.op.name
    monkeypatch.setattr(plan_module, "DIRECT_MACS", 1 << 62)  # the direct kernel
    got = model.run_batch(x)
    monkeypatch.setattr(plan_module, "DIRECT_MACS", 0)  # the GEMM routes
    got_gemm = model.run_batch(x)
    monkeypatch.setenv(int_gemm.ENV, "0")
    got_float = model.run_batch(x)
    monkeypatch.delenv(int_gemm.ENV)
    monkeypatch.setattr(plan_module, "DIRECT_MACS", DIRECT_MACS)
    for w, g, i, f in zip(want, got, got_gemm, got_float, strict=True):
        np.testing.assert_array_equal(g, w)
        np.testing.assert_array_equal(i, w)
        np.testing.assert_array_equal(f, w)
    return want


@pytest.mark.parametrize("rule", ROUNDINGS)
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("offsets", [False, True])
def test_every_rule_compiled_equals_reference(rule, signed, offsets, monkeypatch):
    for seed, tie_rich in ((0, True), (1, True), (2, False)):
        rng = np.random.default_rng([seed, ROUNDINGS.index(rule), signed, offsets])
        model = _program(rng, rule, signed, offsets, tie_rich)
        x = _inputs(rng, (7, 6, 6), 5, signed, tie_rich)
        _compare(model, x, monkeypatch)


@pytest.mark.parametrize("rule, other", [("half_even", "half_up"), ("half_away", "half_up"),
                                         ("tflite", "half_away"), ("fp32", "half_up")])
def test_ties_are_exercised_and_rules_differ(rule, other, monkeypatch):
    """The tie-rich programs do round ties: the same program under another rule gives other
    integers (so a kernel ignoring the rule fails the test above)."""
    rng = np.random.default_rng(7)
    model = _program(rng, rule, True, False, True)
    x = _inputs(rng, (7, 6, 6), 5, True, True)
    got = _compare(model, x, monkeypatch)
    for op in model.ops:
        if "rounding" in op.attrs:
            op.attrs["rounding"] = other
    model.__dict__.pop("_fast", None)  # the rule changed in place: a new plan
    changed = _compare(model, x, monkeypatch)
    assert any(not np.array_equal(a, b) for a, b in zip(got, changed, strict=True))


def test_imported_int8_conv_uses_one_plane_with_the_offset_in_the_zero_point(monkeypatch):
    """An int8 input with an input offset runs one uint8 GEMM whose zero point is
    ``128 - offset`` (padding included): the GEMM is called once per tile."""
    rng = np.random.default_rng(3)
    model = _program(rng, "tflite", True, True, False)
    x = _inputs(rng, (7, 6, 6), 4, True, False)
    _compare(model, x, monkeypatch)
    monkeypatch.setattr(plan_module, "DIRECT_MACS", 0)  # (small: else the direct kernel)
    calls = []
    real = int_gemm.IntGemm.__call__

    def spy(self, a, zp, threads=1):
        calls.append(zp)
        return real(self, a, zp, threads)

    monkeypatch.setattr(int_gemm.IntGemm, "__call__", spy)
    model.run_batch(x)
    conv = model.ops[1]
    assert len(calls) == 3  # conv, pw, fc: one plane each
    assert calls[0] == 128 - int(conv.arrays["in_offset0"][0])


@pytest.mark.parametrize("rule", ["tflite", "half_up", "fp32", "half_even"])
def test_rescaled_add_of_imported_programs(rule, monkeypatch):
    """``add`` with rescaled inputs (TFLite's ADD: each input ``<< 20`` then requantized by
    eq. 7b, the sum requantized; XNNPACK's: exact input products, one half-up shift; the
    one-input requantizing ``add`` of QUANTIZE), int8 inputs with zero points, compiled ==
    reference; a wider input takes the reference inside the plan."""
    rng = np.random.default_rng(ROUNDINGS.index(rule))
    base = _program(rng, "tflite", True, True, True)
    c = 5
    ops = list(base.ops[:4])  # in, conv (int8, offsets), dw, pw (int8, offsets)
    m_in, s_in = _scales(rng, "tflite" if rule == "tflite" else rule, c, True)
    m_out, s_out = _scales(rng, rule, c, True)
    if rule == "tflite":
        s_in = s_in + 20  # the inputs were shifted left by 20 first
    arrays = {"align0": np.array([20 if rule == "tflite" else 0]),
              "align1": np.array([20 if rule == "tflite" else 0]),
              "multiplier_in0": m_in, "shift_in0": s_in,
              "multiplier_in1": np.roll(m_in, 1), "shift_in1": np.roll(s_in, 1),
              "multiplier": m_out, "shift": s_out + (20 if rule == "tflite" else 0),
              "out_lo": np.full(c, -128 - 7), "out_hi": np.full(c, 127 - 7),
              "in_offset0": np.array([-int(rng.integers(-100, 100))]),
              "in_offset1": np.array([-int(rng.integers(-100, 100))]),
              "out_offset": np.array([-7])}
    ops.append(Op("add2", "add", ["pw", "conv"], {"rounding": rule}, arrays))
    one = {"align0": np.array([0]), "multiplier": m_out, "shift": s_out,
           "out_lo": np.full(c, -128 + 3), "out_hi": np.full(c, 127 + 3),
           "in_offset0": np.array([-7]), "out_offset": np.array([3])}
    ops.append(Op("add1", "add", ["add2"], {"rounding": rule}, one))
    model = Model(ops, [{"tensor": t, "frac": [0] * c, "name": t} for t in ("add2", "add1")],
                  base.input_shape)
    for tie_rich in (True, False):
        x = _inputs(rng, (7, 6, 6), 5, True, tie_rich)
        _compare(model, x, monkeypatch)
    plan = model.fast_plan()
    for step in plan.steps[-2:]:
        assert step.handles_offsets and step._consts(c) is not None
    # an int16 input: the reference inside the plan, same integers
    monkeypatch.setenv(jit.ENV, "0")
    want = model.run_batch(x)
    monkeypatch.setenv(jit.ENV, "1")
    wide = [np.full((5, 7, 6, c), 300, np.int16), np.zeros((5, 7, 6, c), np.int16)]
    np.testing.assert_array_equal(
        plan.steps[-2](wide), plan.steps[-2]._offsets_reference(wide))
    assert len(want) == 2


@pytest.mark.parametrize("case", ["per_channel_in_offset", "product_past_int64"])
def test_offsets_of_steps_on_the_reference(case, monkeypatch):
    """A neural step that cannot fold its offsets (a per-channel input offset) or runs the
    reference (a multiplier whose product could pass 2^63): the offsets are applied once."""
    rng = np.random.default_rng(11)
    model = _program(rng, "half_even", True, True, False)
    conv = model.ops[1]
    if case == "per_channel_in_offset":
        conv.arrays["in_offset0"] = rng.integers(-50, 50, conv.arrays["kernel"].shape[2])
    else:
        conv.arrays["multiplier"] = np.full_like(conv.arrays["multiplier"], 2**45)
        conv.arrays["shift"] = np.full_like(conv.arrays["shift"], 62)
    x = _inputs(rng, (7, 6, 6), 3, True, False)
    monkeypatch.setenv(jit.ENV, "0")
    want = model.run_batch(x)
    monkeypatch.setenv(jit.ENV, "1")
    step = model.fast_plan().steps[1]
    assert not step.handles_offsets and step.xoff == 0 and step.post is None
    for w, g in zip(want, model.run_batch(x), strict=True):
        np.testing.assert_array_equal(g, w)


def test_tflite_rescaled_add_without_an_output_multiplier_runs_the_reference(monkeypatch):
    """A (hand-written) tflite ``add`` with rescaled inputs but no output ``multiplier``: the
    compiled kernel would round the inputs with the sum's one-stage rule, the reference with
    eq. 7b; the plan keeps the reference for that step and the integers are the reference's."""
    rng = np.random.default_rng(21)
    base = _program(rng, "tflite", True, True, True)
    c = 5
    m_in, s_in = _scales(rng, "tflite", c, True)
    arrays = {"align0": np.array([20]), "align1": np.array([20]),
              "multiplier_in0": m_in, "shift_in0": s_in + 20,
              "multiplier_in1": np.roll(m_in, 1), "shift_in1": np.roll(s_in, 1) + 20,
              "shift": np.full(c, 1),
              "out_lo": np.full(c, -128), "out_hi": np.full(c, 127),
              "in_offset0": np.array([5]), "in_offset1": np.array([-9])}
    ops = [*base.ops[:4], Op("add2", "add", ["pw", "conv"], {"rounding": "tflite"}, arrays)]
    model = Model(ops, [{"tensor": "add2", "frac": [0] * c, "name": "add2"}], base.input_shape)
    for tie_rich in (True, False):
        x = _inputs(rng, (7, 6, 6), 5, True, tie_rich)
        monkeypatch.setenv(jit.ENV, "0")
        want = model.run_batch(x)
        monkeypatch.setenv(jit.ENV, "1")
        np.testing.assert_array_equal(model.run_batch(x)[0], want[0])
    assert model.fast_plan().steps[-1]._consts(c) is None
