"""int64 edge cases of the compiled path's bounds (fixedq/engine/fast/): crafted programs with
int64 activations and weights (``quantize`` never builds them) give the exact integers of the
op reference kernels (:func:`fixedq.engine.ops.run_op`, int64 accumulators) on the compiled
dense path, the compiled event path and the NumPy path, or run an exact fallback; never a
bound that wrapped in int64 choosing a kernel that cannot hold the result."""

from __future__ import annotations

import numpy as np
import pytest

from fixedq.engine import kernels as ref
from fixedq.engine.fast import events, jit
from fixedq.engine.fast import kernels as fast_kernels
from fixedq.engine.model import Model
from fixedq.engine.ops import Op, run_op

pytestmark = pytest.mark.skipif(not jit.enabled(), reason="numba (the engine extra) missing")

I64_MIN, I64_MAX = -(2**63), 2**63 - 1


def _neural(name, src, typ, kernel, cin, bound=None, align=None):
    """A neural op with int64 accumulators, multiplier 1, shift 0 and the whole int64 output
    range (the output is the accumulator itself)."""
    cout = cin if typ == "depthwise" else kernel.shape[-1]
    arrays = {"kernel": kernel, "bias": np.zeros(cout, np.int64),
              "multiplier": np.ones(cout, np.int64), "shift": np.zeros(cout, np.int64),
              "out_lo": np.full(cout, I64_MIN), "out_hi": np.full(cout, I64_MAX)}
    if align is not None:
        arrays["in_align"] = np.asarray(align, np.int64)
    attrs = {"type": typ, "accum_dtype": "int64", "acc_lo": I64_MIN, "acc_hi": I64_MAX,
             "accum_bound": I64_MAX if bound is None else bound}
    if typ != "dense":
        attrs.update(strides=[1, 1], padding="valid", dilation_rate=[1, 1])
    return Op(name, "neural", [src], attrs, arrays)


def _input(c):
    """The input quantizer over the whole range it can produce (``±2^62``, eq. 2)."""
    return Op("in", "input", [], {}, {"frac": np.zeros(c, np.int64),
                                      "lo": np.full(c, -(2**62)), "hi": np.full(c, 2**62)})


def _double(src, c, shift=-1):
    """``shift`` by -1 (``v << 1``) into the int64 range: ``-2^62`` becomes ``-2^63``."""
    return Op("x2", "shift", [src], {}, {"shift": np.broadcast_to(shift, (c,)),
                                         "out_lo": np.full(c, I64_MIN),
                                         "out_hi": np.full(c, I64_MAX)})


def _model(ops, outs, shape):
    outputs = [{"tensor": t, "frac": [0] * n, "name": t} for t, n in outs]
    return Model(ops, outputs, (None, *shape))


def _exact(model, x):
    """The op reference kernels one after the other (int64 accumulators: exact here)."""
    t = {model.ops[0].name: model.quantize_inputs(x)}
    for op in model.ops[1:]:
        t[op.name] = run_op(op, [t[s] for s in op.inputs])
    return [t[o["tensor"]] for o in model.outputs]


@pytest.fixture
def always_events(monkeypatch):
    """The event path's cost model always prefers the scatter kernel."""
    monkeypatch.setitem(events.COST_NS, "dense_value", 1e9)
    monkeypatch.setitem(events.COST_NS, "gather", 1e12)


def _all_paths(model, x, monkeypatch):
    """The NumPy path, the compiled dense path and the compiled event path all give the exact
    integers."""
    want = _exact(model, x)
    monkeypatch.setenv(jit.ENV, "0")
    got = {"numpy": model.run_batch(x)}
    monkeypatch.setenv(jit.ENV, "1")
    got["dense"] = model.run_batch(x)
    got["event"] = model.run_batch(x, mode="event")
    wrong = [(path, o["tensor"], g.ravel().tolist()) for path, outs in got.items()
             for o, w, g in zip(model.outputs, want, outs, strict=True)
             if g.tolist() != w.tolist()]
    assert not wrong, f"exact {[w.ravel().tolist() for w in want]}, got {wrong}"


# --------------------------------------------------------------- 1. |x| of x = -2^63


@pytest.mark.parametrize("compiled", [True, False])
def test_absmax_channels_of_int64_min(compiled):
    """``|-2^63|`` is not an int64: the channel maximum saturates at ``2^63 - 1`` (past every
    bound the kernels are chosen by) instead of wrapping to ``-2^63`` (which left the column's
    maximum at the largest other value)."""
    x = np.array([[I64_MIN, 3, I64_MIN, 0], [5, -4, I64_MAX, 0]], np.int64)
    out = np.empty(4, np.int64)
    (jit.backend() if compiled else fast_kernels).absmax_channels(x, out)
    assert out.tolist() == [I64_MAX, 4, I64_MAX, 0]
    assert ref.channel_absmax(x).tolist() == [I64_MAX, 4, I64_MAX, 0]
    for dt in (np.int8, np.uint8, np.int16, np.int32):
        small = np.array([[np.iinfo(dt).min, 1], [np.iinfo(dt).max, 0]], dt)
        out = np.empty(2, np.int64)
        (jit.backend() if compiled else fast_kernels).absmax_channels(small, out)
        want = [max(-int(np.iinfo(dt).min), int(np.iinfo(dt).max)), 1]
        assert out.tolist() == want == ref.channel_absmax(small).tolist()
    assert ref.channel_absmax(np.zeros((0, 3), np.int64)).tolist() == [0, 0, 0]


def test_int64_min_activations_take_the_exact_path(always_events, monkeypatch):
    """A crafted program doubles the input quantizer's ``-2^62`` into ``-2^63`` and feeds it
    to a depthwise conv, a dense and a conv2d layer whose exact sums (``-2^63 + 10``, ...)
    are no floats: every path gives them (a wrapped channel maximum chose int32 accumulators
    or a float GEMM: 0, 6, 2, -2^63 instead)."""
    c = 2
    ops = [_input(c), _double("in", c),
           _neural("dw", "x2", "depthwise", np.ones((1, 1, c, 1), np.int64), c),
           _neural("fc", "x2", "dense", np.array([[1], [1]], np.int64), c),
           _neural("cv", "x2", "conv2d", np.ones((2, 1, c, 1), np.int64), c)]
    model = _model(ops, [("dw", c), ("fc", 1), ("cv", 1)], (None, None, c))
    x = np.array([[[[-np.inf, 3.0]], [[5.0, -7.0]]]])
    want = _exact(model, x)
    assert [w.ravel().tolist() for w in want] == [
        [I64_MIN, 6, 10, -14], [I64_MIN + 6, -4], [I64_MIN + 2]]
    _all_paths(model, x, monkeypatch)


# --------------------------------------------------- 2. the depthwise step's batch bound


def test_depthwise_bound_of_huge_activations(always_events, monkeypatch):
    """``sum_taps |w| * max|x_c|`` past 2^63 (two unit taps over ``2^62`` and ``-2^63``) is
    no small bound: the exact sums ``2^61`` and ``-2^63 + 10`` need int64 (the int64 product
    of the bound wrapped below 2^31: int32 accumulators gave 0 and 10; the NumPy path's own
    bound wrapped into a float32 sum: ``-2^63``)."""
    c = 2
    ops = [_input(c), _double("in", c, [0, -1]),  # (channel 1 doubled)
           _neural("dw", "x2", "depthwise", np.ones((2, 1, c, 1), np.int64), c)]
    model = _model(ops, [("dw", c)], (None, None, c))
    x = np.array([[[[np.inf, -np.inf]], [[-(2.0**61), 5.0]]]])
    want = _exact(model, x)
    assert want[0].ravel().tolist() == [2**61, I64_MIN + 10]
    _all_paths(model, x, monkeypatch)


@pytest.mark.parametrize("kernel, align", [
    ([2**62, 2**62], 0),          # per-channel sum 2^63: wrapped to -2^63 in int64
    ([1, 1], 62),                 # the same sum from the alignment
    ([2**40 + 1, 0], 24),         # w * 2^a = 2^64 + 2^24: wrapped to the int32 weight 2^24
])
def test_depthwise_weights_past_int64(kernel, align, always_events, monkeypatch):
    """Aligned depthwise weights whose per-channel ``sum |w * 2^a|`` reaches 2^62 leave the
    compiled kernel (its int64 weights or bound would wrap) for the exact reference; the
    inputs keep every exact sum in int64."""
    k = np.array(kernel, np.int64).reshape(2, 1, 1, 1)
    ops = [Op("in", "input", [], {}, {"frac": np.zeros(1, np.int64),
                                      "lo": np.full(1, -1), "hi": np.full(1, 1)}),
           _neural("dw", "in", "depthwise", k, 1, align=[align])]
    model = _model(ops, [("dw", 1)], (None, None, 1))
    x = np.zeros((1, 2, 1, 1))
    if align == 0:  # 2^62 - 2^62
        x[0, :, 0, 0] = [1.0, -1.0]
    _all_paths(model, x, monkeypatch)
    step = model.fast_plan().steps[1]
    assert not step.fast  # the reference kernel (exact) for every batch


# ------------------------------------------- 3. sums of weights near 2^60 (conv2d, events)


def test_weight_sums_past_int64(always_events, monkeypatch):
    """Nine taps of ``2^60 + 1``: the per-channel weight sum ``9 * (2^60 + 1)`` passes 2^63.
    Summed in int64 it wrapped negative: the NumPy path and the compiled dense GEMM took a
    float32 GEMM (``2^60`` for ``2^60 + 1``) and the event step int64 accumulators past its
    2^62 bound; now the sums are float64 (no wrap): the exact int64 reference and the dense
    step."""
    k = np.full((3, 3, 1, 1), 2**60 + 1, np.int64)
    ops = [_input(1), _neural("cv", "in", "conv2d", k, 1, bound=2**62 - 1)]
    model = _model(ops, [("cv", 1)], (3, 3, 1))
    x = np.zeros((2, 3, 3, 1))
    x[0, 0, 0, 0] = 1.0
    x[1, 0, 0, 0], x[1, 1, 1, 0], x[1, 2, 2, 0] = 2.0, -3.0, 1.0
    assert [w.ravel().tolist() for w in _exact(model, x)] == [[2**60 + 1, 0]]
    _all_paths(model, x, monkeypatch)
    step = model.fast_plan("event").steps[1]
    assert isinstance(step, events.EventStep)
    assert step.abs_w.min() >= 9 * 2.0**60                           # (was -8.07e18)
    xq = np.zeros((1, 3, 3, 1), np.int8)
    xq[0, 0, 0, 0] = 1
    assert step._weights(xq, lambda: ref.channel_absmax(xq.reshape(-1, 1))) is None
    assert step.last == "dense"                                      # (was int64 events)


def test_int64_min_weight_runs_the_dense_step(always_events, monkeypatch):
    """A weight of ``-2^63`` is past the event step's 2^62 weight bound: the dense step,
    exact (``np.abs`` wrapped it to ``-2^63``, below every bound: the event step cast it to
    int16 weights of 0 and gave 0 for ``-2^63``)."""
    ops = [Op("in", "input", [], {}, {"frac": np.zeros(1, np.int64), "lo": np.full(1, 0),
                                      "hi": np.full(1, 1)}),
           _neural("cv", "in", "conv2d", np.full((1, 1, 1, 1), I64_MIN, np.int64), 1)]
    model = _model(ops, [("cv", 1)], (2, 2, 1))
    _all_paths(model, np.array([[[[1.0], [0.0]], [[0.0], [1.0]]]]), monkeypatch)
    assert not isinstance(model.fast_plan("event").steps[1], events.EventStep)


# ------------------------------------------------- the input quantizer past 2^62 (eq. 2)


def test_input_range_past_round_limit(monkeypatch):
    """An input op whose range reaches past ``±2^62`` saturates at ``±2^62`` as
    ``round_half_up`` does (eq. 2; the compiled kernel clipped at ``-2^63`` only, and cast
    ``float(2^63 - 1) = 2^63`` past int64)."""
    ops = [Op("in", "input", [], {}, {"frac": np.zeros(1, np.int64), "lo": np.full(1, I64_MIN),
                                      "hi": np.full(1, I64_MAX)})]
    model = _model(ops, [("in", 1)], (1,))
    x = np.array([[-np.inf], [np.inf], [1e30], [-1e30], [3.5], [-(2.0**62) - 2**11]])
    want = [[-(2**62)], [2**62], [2**62], [-(2**62)], [4], [-(2**62)]]
    assert model.quantize_inputs(x).tolist() == want
    _all_paths(model, x, monkeypatch)
