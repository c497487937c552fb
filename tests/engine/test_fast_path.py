"""The compiled dense path (fixedq/engine/fast/) equals the NumPy reference path on every
element: random programs of every fast kernel at worst-case magnitudes, huge and negative
shifts, ties, dead channels, active accumulator clips, batch 1 and odd shapes, run three ways
(reference with ``FIXEDQ_ENGINE_COMPILED=0``, compiled with the integer GEMM, compiled with the
float BLAS GEMM)."""

from __future__ import annotations

import numpy as np
import pytest

from fixedq.engine import kernels
from fixedq.engine.fast import int_gemm, jit
from fixedq.engine.fast import plan as plan_module
from fixedq.engine.fast.plan import DIRECT_MACS, FastPlan, _passthrough, narrow_dtype
from fixedq.engine.model import Model
from fixedq.engine.ops import Op

RANGES = [(0, 255), (-128, 127), (-(2**15), 2**15 - 1), (0, 15), (-(2**20), 2**20)]


def _ints(rng, lo, hi, shape):
    return rng.integers(lo, hi + 1, shape).astype(np.int64)


def _requant_arrays(rng, c, out, huge=False):
    lo, hi = out
    shift = rng.integers(-3, 62 if huge else 24, c)
    mult = rng.integers(1, 1 << int(rng.integers(1, 17)), c)
    return {"multiplier": mult, "shift": shift, "out_lo": np.full(c, lo), "out_hi": np.full(c, hi)}


class Builder:
    """Random engine programs; tracks each tensor's integer range and channel count."""

    def __init__(self, rng, c, in_range):
        self.rng, self.ops, self.n = rng, [], 0
        lo, hi = in_range
        self.ops.append(Op("in", "input", [], {}, {"frac": rng.integers(-2, 6, c),
                                                  "lo": np.full(c, lo), "hi": np.full(c, hi)}))
        self.info = {"in": (c, lo, hi)}

    def name(self):
        self.n += 1
        return f"t{self.n}"

    def out(self):
        return RANGES[int(self.rng.integers(len(RANGES)))]

    def neural(self, src, kind, cout=5, k=3, strides=(1, 1), padding="same", dilation=(1, 1),
               pool=None, align=True, acc_bits=31, huge=False, worst=False, unit_mult=False):
        rng = self.rng
        c, lo, hi = self.info[src]
        wmax = 127 if rng.random() < 0.7 else 7
        if kind == "dense":
            kernel = _ints(rng, -wmax - 1, wmax, (c, cout))
        elif kind == "depthwise":
            kernel = _ints(rng, -wmax - 1, wmax, (k, k, c, 1))
            cout = c
        else:
            kernel = _ints(rng, -wmax - 1, wmax, (k, k, c, cout))
        if worst:
            kernel[...] = -wmax - 1
        kernel[..., 0] = 0 if cout > 1 else kernel[..., 0]  # a dead output channel
        arrays = {"kernel": kernel, "bias": _ints(rng, -3000, 3000, cout)}
        out = self.out()
        arrays.update(_requant_arrays(rng, cout, out, huge))
        if unit_mult:
            arrays["multiplier"] = np.ones(cout, np.int64)
        al = None
        if isinstance(align, np.ndarray):
            al = arrays["in_align"] = align
        elif align and rng.random() < 0.7:
            # spreads up to 8 bits (two byte planes from the dtype alone) and up to 12 (the
            # batch's own range decides: one, two planes or the float GEMM)
            al = rng.integers(0, int(rng.choice([9, 13])), c) if rng.random() < 0.5 else \
                np.full(c, int(rng.integers(0, 4)))
            arrays["in_align"] = al
        mags = np.full(c, max(abs(lo), abs(hi))) << (0 if al is None else al)
        bound = kernels.linear_bound(kernel, kind, mags)
        # shifts that map the accumulators onto the output range (every LSB visible), a few
        # far beyond it (huge shifts: all outputs round to 0 or the tie)
        top = [max(1, int(bound // 4) * int(m)).bit_length() for m in arrays["multiplier"]]
        arrays["shift"] = np.clip(np.array(top) - max(1, out[1]).bit_length()
                                  + rng.integers(-2, 2, cout), -3, 62)
        if huge:
            arrays["shift"][-1] = 62
        if acc_bits == "tight":  # the accumulator clip is active
            acc_bits = max(4, bound.bit_length() - 2)
        attrs = {"type": kind, "accum_dtype": kernels.exact_dtype(bound), "accum_bound": bound,
                 "acc_lo": -(1 << acc_bits), "acc_hi": (1 << acc_bits) - 1}
        if kind != "dense":
            attrs.update(strides=list(strides), padding=padding, dilation_rate=list(dilation))
        if pool:
            attrs["pool"] = pool
        name = self.name()
        self.ops.append(Op(name, "neural", [src], attrs, arrays))
        self.info[name] = (cout, *out)
        return name

    def elementwise(self, kind, srcs):
        rng = self.rng
        c = self.info[srcs[0]][0]
        out = self.out()
        lo, hi = out
        if kind == "add":
            arrays = {"align0": rng.integers(0, 6, c), "align1": rng.integers(0, 6, c),
                      "shift": rng.integers(-2, 8, c)}
        elif kind == "affine":
            arrays = {"multiplier": rng.integers(-300, 300, c), "offset": _ints(rng, -999, 999, c),
                      "shift": rng.integers(-2, 12, c)}
        elif kind == "gap":
            arrays = {"multiplier": rng.integers(1, 5000, c), "shift": rng.integers(0, 30, c)}
        elif kind == "shift":
            arrays = {"shift": rng.integers(-3, 63, c)}
        else:  # clip
            arrays = {"lo": np.full(c, lo), "hi": np.full(c, hi)}
        if kind != "clip":
            arrays.update(out_lo=np.full(c, lo), out_hi=np.full(c, hi))
        name = self.name()
        self.ops.append(Op(name, kind, list(srcs), {}, arrays))
        self.info[name] = (c, lo, hi)
        return name

    def maxpool(self, src, size=(2, 2), strides=(2, 2), padding="valid"):
        name = self.name()
        self.ops.append(Op(name, "maxpool", [src], {"pool_size": list(size),
                                                   "strides": list(strides),
                                                   "padding": padding}))
        self.info[name] = self.info[src]
        return name

    def model(self, outs, shape):
        outputs = [{"tensor": t, "frac": [0] * self.info[t][0], "name": t} for t in outs]
        return Model(self.ops, outputs, (None, *shape))


def _inputs(rng, shape, n, mode):
    x = rng.normal(0, 40, (n, *shape))
    if mode == "extreme":  # saturating both ways, infinities
        x = np.where(rng.random(x.shape) < 0.5, -1e30, 1e30)
        x.flat[:3] = [np.inf, -np.inf, 0.0]
    elif mode == "ties":  # halves: round half up at every frac
        x = np.round(x * 8) / 8 + 1 / 16
    elif mode == "sparse":
        x[rng.random(x.shape) < 0.9] = 0.0
    return x.astype(np.float32)


def _three_ways(model, x, monkeypatch):
    monkeypatch.setenv(jit.ENV, "0")
    assert model.fast_plan() is None
    want = model.run_batch(x)
    monkeypatch.setenv(jit.ENV, "1")
    monkeypatch.setattr(plan_module, "DIRECT_MACS", 1 << 62)  # the direct kernel
    got = model.run_batch(x)
    monkeypatch.setattr(plan_module, "DIRECT_MACS", 0)  # the GEMM routes
    got_gemm = model.run_batch(x)
    monkeypatch.setenv(int_gemm.ENV, "0")
    got_float = model.run_batch(x)
    monkeypatch.delenv(int_gemm.ENV)
    monkeypatch.setattr(plan_module, "DIRECT_MACS", DIRECT_MACS)
    for w, g, i, f in zip(want, got, got_gemm, got_float, strict=True):
        assert g.dtype == np.int64
        np.testing.assert_array_equal(g, w)
        np.testing.assert_array_equal(i, w)
        np.testing.assert_array_equal(f, w)
    return want


GEOMS = [((1, 1), "same", (1, 1)), ((2, 2), "same", (1, 1)), ((1, 1), "valid", (2, 2)),
         ((2, 1), "valid", (1, 1)), ((3, 2), "same", (1, 2))]
POOLS = [None, {"pool_size": [2, 2], "strides": [2, 2], "padding": "valid"},
         {"pool_size": [3, 3], "strides": [2, 2], "padding": "same"}]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode", ["random", "extreme", "ties", "sparse"])
def test_random_cnn_programs(seed, mode, monkeypatch):
    rng = np.random.default_rng(seed)
    c = int(rng.integers(1, 6))
    h, w = int(rng.integers(5, 12)), int(rng.integers(4, 11))
    b = Builder(rng, c, RANGES[seed % 3])
    strides, padding, dil = GEOMS[seed % len(GEOMS)]
    k = int(rng.integers(1, 4))
    t = b.neural("in", "conv2d", cout=int(rng.integers(1, 9)), k=k, strides=strides,
                 padding=padding, dilation=dil, pool=POOLS[seed % 3],
                 acc_bits=31 if seed % 2 else "tight", huge=seed % 3 == 0)
    d = b.neural(t, "depthwise", k=3, strides=(1, 1) if seed % 2 else (2, 2),
                 acc_bits=31 if seed % 3 else "tight")
    e = b.neural(d, "conv2d", cout=b.info[d][0], k=1)
    s = b.elementwise("add", [d, e])
    a = b.elementwise("affine", [s])
    r = b.elementwise("clip", [b.elementwise("shift", [a])])
    g = b.elementwise("gap", [r])
    y = b.neural(g, "dense", cout=int(rng.integers(1, 12)), huge=True)
    model = b.model([t, d, e, s, a, r, g, y], (h, w, c))
    for n in (1, 3):
        _three_ways(model, _inputs(rng, (h, w, c), n, mode), monkeypatch)


@pytest.mark.parametrize("rng_in", RANGES[:3])
def test_worst_case_magnitudes_3x3x512(rng_in, monkeypatch):
    """Every weight at -128, every input at the range's end: the largest accumulators (and
    the exact int64 fallback past the float bounds when aligned)."""
    rng = np.random.default_rng(7)
    for align in (False, True):
        b = Builder(rng, 512, rng_in)
        t = b.neural("in", "conv2d", cout=3, k=3, worst=True, align=align, acc_bits=40)
        model = b.model([t], (4, 5, 512))
        _three_ways(model, _inputs(rng, (4, 5, 512), 2, "extreme"), monkeypatch)


def test_maxpool_op_and_narrow_dtypes(monkeypatch):
    rng = np.random.default_rng(3)
    b = Builder(rng, 3, (-128, 127))
    p = b.maxpool("in", (3, 3), (2, 2), "same")
    q = b.maxpool(p, (2, 2), (1, 1), "valid")
    model = b.model([q], (9, 7, 3))
    _three_ways(model, _inputs(rng, (9, 7, 3), 2, "random"), monkeypatch)
    assert narrow_dtype(0, 255) == np.uint8 and narrow_dtype(-129, 5) == np.int16


def test_steps_fall_back_to_reference_for_other_kinds(monkeypatch):
    """A kind without a compiled kernel (here 'permute', 'reshape', 'concat' with shifts and
    a three-input add) runs on its reference kernel inside the plan."""
    rng = np.random.default_rng(5)
    b = Builder(rng, 4, (-128, 127))
    t = b.neural("in", "conv2d", cout=4, k=3)
    ops = b.ops
    ops.append(Op("perm", "permute", [t], {"dims": [2, 1, 3]}))
    ops.append(Op("cat", "concat", ["perm", "perm"], {"axis": -1},
                  {"shift0": np.full(4, 1), "shift1": np.full(4, 0),
                   "out_lo": np.full(4, -100), "out_hi": np.full(4, 100)}))
    ops.append(Op("add3", "add", ["cat", "cat", "cat"], {},
                  {"align0": np.zeros(8, np.int64), "align1": np.ones(8, np.int64),
                   "align2": np.zeros(8, np.int64), "shift": np.full(8, 1),
                   "out_lo": np.full(8, -500), "out_hi": np.full(8, 500)}))
    ops.append(Op("flat", "reshape", ["add3"], {"target_shape": [-1]}))
    model = Model(ops, [{"tensor": "flat", "frac": [0], "name": "flat"}], (None, 6, 5, 4))
    plan = FastPlan(model)
    assert [type(s).__name__ for s in plan.steps][-4:] == ["partial"] * 2 + [
        "_Elementwise", "partial"]
    _three_ways(model, _inputs(rng, (6, 5, 4), 2, "random"), monkeypatch)


def test_predict_same_with_and_without_compiled_kernels(monkeypatch):
    """predict (batching, float outputs) is identical with the kernels off: the pure NumPy
    path numba-less installs run."""
    rng = np.random.default_rng(11)
    b = Builder(rng, 2, (0, 255))
    t = b.neural("in", "conv2d", cout=6, k=3, pool=POOLS[1])
    y = b.neural(b.elementwise("gap", [t]), "dense", cout=3)
    model = b.model([y], (8, 8, 2))
    x = _inputs(rng, (8, 8, 2), 7, "random")
    fast = model.predict(x, batch_size=3)
    monkeypatch.setenv(jit.ENV, "0")
    np.testing.assert_array_equal(model.predict(x, batch_size=3), fast)
    with pytest.raises(ValueError, match="NaN"):
        model.run_batch(np.full((1, 8, 8, 2), np.nan, np.float32))
    monkeypatch.setenv(jit.ENV, "1")
    with pytest.raises(ValueError, match="NaN"):
        model.run_batch(np.full((1, 8, 8, 2), np.nan, np.float32))


def test_environment_switch_read_once_per_plan_run(monkeypatch):
    """Inside a plan run the compiled-kernel switch is read once (``jit.pinned``): steps
    ask ``jit.requested()`` without reading the environment again; nested contexts keep the
    outer value; after a run, even one a step fails in, the switch is read on every call
    again (tests switch it between runs)."""
    monkeypatch.setenv(jit.ENV, "1")
    with jit.pinned():
        monkeypatch.setenv(jit.ENV, "0")
        assert jit.requested() and jit.backend() is not None
        with jit.pinned():
            assert jit.pinned.current() is True
        assert jit.pinned.current() is True
    assert jit.pinned.current() is None and not jit.requested()
    pin = jit.pinned()  # one object entered inside itself restores both levels
    with pin:
        with pin:
            assert jit.pinned.current() is False
        assert jit.pinned.current() is False
    assert jit.pinned.current() is None
    monkeypatch.setenv(jit.ENV, "1")
    rng = np.random.default_rng(12)
    b = Builder(rng, 2, (0, 255))
    model = b.model([b.neural("in", "conv2d", cout=3, k=3)], (6, 6, 2))
    x = _inputs(rng, (6, 6, 2), 2, "random")
    want = model.run_batch(x)
    plan = model.fast_plan()
    seen = []

    def spy(xs, step=plan.steps[1]):
        seen.append(jit.pinned.current())
        return step(xs)

    def patched(step):  # the plan with step 1 replaced (its schedule rebuilt)
        steps = list(plan.steps)
        steps[1] = step
        monkeypatch.setattr(plan, "steps", steps)
        plan.__dict__.pop("_sched", None)

    patched(spy)
    np.testing.assert_array_equal(model.run_batch(x)[0], want[0])
    assert seen == [True] and jit.pinned.current() is None

    def fail(xs):
        raise RuntimeError("boom")

    patched(fail)
    with pytest.raises(ValueError, match="boom"):
        model.run_batch(x)
    assert jit.pinned.current() is None
    plan.__dict__.pop("_sched", None)


def test_int_gemm_self_test_is_exact():
    assert int_gemm.available()  # onnxruntime is in the dev extra; this CPU passes
    rng = np.random.default_rng(0)
    b = rng.integers(-128, 128, (300, 7)).astype(np.int8)
    a = rng.integers(0, 256, (50, 300)).astype(np.uint8)
    g = int_gemm.IntGemm(b)
    for zp in (0, 128):
        np.testing.assert_array_equal(g(a, zp), (a.astype(np.int64) - zp) @ b.astype(np.int64))


@pytest.mark.parametrize("compiled", ["1", "0"])
def test_predict_peak_memory_independent_of_n(compiled, monkeypatch):
    """float64 inputs are checked for NaN and converted batch by batch: predict's peak memory
    (tracemalloc, NumPy buffers included) grows with N only by the output arrays."""
    import tracemalloc

    monkeypatch.setenv(jit.ENV, compiled)
    rng = np.random.default_rng(2)
    b = Builder(rng, 2, (0, 255))
    t = b.neural("in", "conv2d", cout=4, k=3)
    model = b.model([b.elementwise("gap", [t])], (16, 16, 2))
    x = rng.normal(0, 50, (600, 16, 16, 2))  # float64: 3 MiB
    peaks = {}
    for n in (60, 600):
        model.predict(x[:n], batch_size=20)
        tracemalloc.start()
        y = model.predict(x[:n], batch_size=20)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        out_bytes = y.nbytes * 3  # int64 results + float32 output
    assert peaks[600] - peaks[60] < out_bytes + 64 * 1024, peaks


@pytest.mark.parametrize("in_range", [(0, 255), (-128, 127)])
@pytest.mark.parametrize("scale", [0.05, 2.0, 300.0])
def test_wide_alignment_spreads_choose_planes_from_the_batch(in_range, scale, monkeypatch):
    """Alignment spreads of 9-12 bits: the batch's own range decides between one byte plane
    (small values), two planes and the float GEMM (full-range values)."""
    rng = np.random.default_rng(int(scale * 10))
    c = 6
    b = Builder(rng, c, in_range)
    b.ops[0].arrays["frac"] = np.zeros(c, np.int64)
    t = b.neural("in", "conv2d", cout=5, k=3, align=False, acc_bits=40)
    b.ops[-1].arrays["in_align"] = np.array([0, 12, 3, 9, 0, 11])
    b.ops[-1].attrs["accum_bound"] = kernels.linear_bound(
        b.ops[-1].arrays["kernel"], "conv2d", np.full(c, 255) << b.ops[-1].arrays["in_align"])
    model = b.model([t], (7, 6, c))
    x = (rng.normal(0, scale, (3, 7, 6, c))).astype(np.float32)
    _three_ways(model, x, monkeypatch)


def test_micro_batches_give_the_same_integers(monkeypatch):
    """A batch whose largest tensor passes MICRO_ELEMENTS runs in micro-batches (7 samples in
    3 + 3 + 1 here): same integers as in one piece and as the reference."""
    from fixedq.engine.fast import plan as fast_plan

    rng = np.random.default_rng(4)
    b = Builder(rng, 3, (0, 255))
    t = b.neural("in", "conv2d", cout=8, k=3)
    model = b.model([t, b.neural(b.elementwise("gap", [t]), "dense", cout=4)], (6, 5, 3))
    x = _inputs(rng, (6, 5, 3), 7, "random")
    whole = model.run_batch(x)
    plan = model.fast_plan()
    assert plan.per_sample == 6 * 5 * 8
    monkeypatch.setattr(fast_plan, "MICRO_ELEMENTS", 3 * 6 * 5 * 8)
    calls = []
    run_one = plan._run
    monkeypatch.setattr(plan, "_run", lambda v, times: calls.append(len(v)) or run_one(v, times))
    parts = model.run_batch(x)
    assert calls == [3, 3, 1]
    for w, p in zip(whole, parts, strict=True):
        np.testing.assert_array_equal(p, w)
    _three_ways(model, x, monkeypatch)


def test_parallel_micro_batches_give_the_same_integers(monkeypatch):
    """Batches split over the worker threads (forced here for a small batch): every
    micro-batch runs in a worker, the integers equal the reference's and one piece's."""
    import threading

    from fixedq.engine.fast import plan as fast_plan

    rng = np.random.default_rng(5)
    b = Builder(rng, 3, (0, 255))
    t = b.neural("in", "conv2d", cout=8, k=3)
    d = b.neural(b.elementwise("gap", [b.neural(t, "depthwise")]), "dense", cout=4)
    model = b.model([t, d], (6, 5, 3))
    x = _inputs(rng, (6, 5, 3), 13, "random")
    want = _three_ways(model, x, monkeypatch)
    monkeypatch.setattr(fast_plan, "PARALLEL_ELEMENTS", 0)
    monkeypatch.setattr(fast_plan, "THREADS", 2)
    plan = model.fast_plan()
    sizes, threads = [], set()
    run_one = plan._run

    def spy(v, times):
        sizes.append(len(v))
        threads.add(threading.current_thread().name)
        return run_one(v, times)

    monkeypatch.setattr(plan, "_run", spy)
    got = model.run_batch(x)
    assert sum(sizes) == 13 and len(sizes) == fast_plan.CHUNKS * fast_plan.THREADS
    assert all(name.startswith("fixedq-engine") for name in threads)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(g, w)


def test_worker_count_chosen_by_measuring(monkeypatch):
    """``THREADS = 0`` (auto, the default): a batch size runs twice on one thread and twice on
    the workers, taking turns, then on whichever was faster per sample, the other one tried
    again every ``ThreadChoice.EXPLORE`` calls; the integers are the same on every call."""
    import threading

    from fixedq.engine.fast import plan as fast_plan

    rng = np.random.default_rng(6)
    b = Builder(rng, 3, (0, 255))
    t = b.neural("in", "conv2d", cout=8, k=3)
    model = b.model([b.neural(b.elementwise("gap", [t]), "dense", cout=4)], (6, 5, 3))
    x = _inputs(rng, (6, 5, 3), 12, "random")
    want = _three_ways(model, x, monkeypatch)
    monkeypatch.setattr(fast_plan, "PARALLEL_ELEMENTS", 0)
    monkeypatch.setattr(fast_plan, "THREADS", 0)
    monkeypatch.setattr(fast_plan, "AUTO_THREADS", 2)
    plan = model.fast_plan()
    model.run_batch(x[:1])  # (the per-sample size is measured first)
    used = []
    run_one = plan._run

    def spy(v, times):
        used.append(threading.current_thread().name.startswith("fixedq-engine"))
        return run_one(v, times)

    monkeypatch.setattr(plan, "_run", spy)
    workers_per_call = []
    for _ in range(2 * fast_plan.ThreadChoice.EXPLORE + 2):
        used.clear()
        got = model.run_batch(x)
        for w, g in zip(want, got, strict=True):
            np.testing.assert_array_equal(g, w)
        workers_per_call.append(2 if all(used) else 1)
        choice = plan._thread_choice(len(x))
        if len(workers_per_call) == 4:  # from now on the workers are the faster option
            choice.samples.update({1: [1.0], 2: [0.5]})
            monkeypatch.setattr(choice, "record", lambda workers, seconds: None)
    assert workers_per_call[:4] == [1, 2, 1, 2]
    later = workers_per_call[4:]
    assert later.count(1) == 2 and later.count(2) == len(later) - 2, workers_per_call
    for raw, want_threads in (("auto", 0), ("", 0), ("two", 0), ("3", 3), ("0", 1),
                              ("999", 64)):
        monkeypatch.setenv(fast_plan.THREADS_ENV, raw)
        assert fast_plan._threads_from_env() == want_threads, raw


@pytest.mark.parametrize("seed", range(3))
def test_table_and_mul_kernels(seed, monkeypatch):
    """``table`` (eq. 38, indices clipped like np.take) and ``mul`` (eq. 46: same-shape and
    squeeze-excite (N, 1, 1, C) broadcast, unsupported broadcasts on the reference)."""
    rng = np.random.default_rng(seed)
    c = 5
    b = Builder(rng, c, RANGES[seed % 3])
    t = b.neural("in", "conv2d", cout=c, k=3)
    lo, hi = b.info[t][1:]
    span = hi - lo + 1
    table = _ints(rng, -(2**14), 2**14, span * c + 3)
    b.ops.append(Op("tab", "table", [t], {}, {"table": table,
                                             "base": -lo + span * np.arange(c) - (seed == 1)}))
    b.info["tab"] = (c, -(2**14), 2**14)
    g = b.elementwise("gap", ["tab"])
    b.ops.append(Op("se", "reshape", [g], {"target_shape": [1, 1, c]}))
    mul = {"shift": rng.integers(0, 20, c), "out_lo": np.full(c, -(2**15)),
           "out_hi": np.full(c, 2**15 - 1)}
    b.ops.append(Op("m1", "mul", ["tab", "se"], {}, dict(mul)))
    b.ops.append(Op("m2", "mul", ["m1", "tab"], {}, dict(mul)))
    b.ops.append(Op("m3", "mul", ["m2", "m2"], {}, dict(mul)))
    b.info.update({k: (c, -(2**15), 2**15 - 1) for k in ("m1", "m2", "m3")})
    model = b.model(["tab", "m1", "m2", "m3"], (7, 6, c))
    steps = FastPlan(model).steps
    assert steps.count(_passthrough) == 1  # the table fused into the conv's epilogue
    assert [type(s).__name__ for s in steps].count("_Mul") == 3
    for mode in ("random", "extreme", "ties"):
        _three_ways(model, _inputs(rng, (7, 6, c), 2, mode), monkeypatch)


def _table_op(b, rng, src, name, spread, shift_base=0):
    """A ``table`` op over ``src`` (one table per channel, entries in ``spread``); the
    bases moved by ``shift_base`` make some indices fall outside (clipped like np.take)."""
    c, lo, hi = b.info[src]
    span = hi - lo + 1
    table = _ints(rng, *spread, span * c)
    base = -lo + span * np.arange(c) + shift_base
    b.ops.append(Op(name, "table", [src], {}, {"table": table, "base": base}))
    b.info[name] = (c, *spread)
    return name


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", ["conv2d_1x1", "conv2d_3x3", "depthwise", "dense"])
def test_table_fused_into_its_producer(kind, seed, monkeypatch):
    """A ``table`` op consuming a conv2d/depthwise/dense output is computed in that step's
    epilogue (EfficientNet's swish/sigmoid): same integers as the reference on every element,
    for every rounding rule, both GEMM routes (one or two byte planes, float BLAS), dead
    channels, clipped table indices, ties and saturating inputs; not fused (and still exact)
    when the output has another consumer or a max pool is fused."""
    rng = np.random.default_rng(seed)
    c = int(rng.integers(2, 7))
    b = Builder(rng, c, RANGES[seed % 3])
    typ, k = ("conv2d", 1 if kind.endswith("1x1") else 3) if kind.startswith("conv") else \
        (kind, 3)
    rules = ["half_up", "half_even", "half_away", "tflite", "fp32"]
    spreads = [(-128, 127), (0, 255), (-(2**14), 2**14)]

    def producer(src, **kw):
        t = b.neural(src, typ, cout=c, k=k, **kw)
        b.ops[-1].attrs["rounding"] = rules[int(rng.integers(len(rules)))]
        return t

    t1 = producer("in", worst=seed == 3, acc_bits="tight" if seed % 2 else 31)
    f1 = _table_op(b, rng, t1, "tab1", spreads[seed % 3], shift_base=(-1, 0, 2, 0)[seed])
    t2 = producer(f1)  # its output is a model output (and feeds an add): not fused
    f2 = _table_op(b, rng, t2, "tab2", (-128, 127))
    s = b.elementwise("add", [t2, f2]) if typ != "dense" else f2
    outs = [f1, t2, f2, s]
    if typ != "dense":
        t3 = producer(f1, pool=POOLS[1])  # a fused max pool: not fused
        outs.append(_table_op(b, rng, t3, "tab3", (0, 255)))
    shape = (c,) if typ == "dense" else (6, 5, c)
    model = b.model(outs, shape)
    steps = FastPlan(model).steps
    assert steps.count(_passthrough) == 1 and steps[2] is _passthrough
    for mode in ("random", "extreme", "ties"):
        for n in (1, 3):
            _three_ways(model, _inputs(rng, shape, n, mode), monkeypatch)


@pytest.mark.parametrize("in_range", [(-128, 127), (-(2**20), 2**20)])
def test_fused_table_on_the_reference_fallback(in_range, monkeypatch):
    """The fused table on every route of the step: the int8 GEMM (8-bit inputs), and past
    the float64 bound (worst-case weights on 20-bit inputs with a 23-bit alignment spread:
    accumulators near 2^59) the exact int64 reference, after which the table is applied."""
    rng = np.random.default_rng(11)
    b = Builder(rng, 64, in_range)
    t = b.neural("in", "conv2d", cout=4, k=3, worst=True, acc_bits=62, unit_mult=True,
                 align=np.arange(64) % (24 if in_range[1] > 255 else 2))
    f = _table_op(b, rng, t, "tab", (-(2**14), 2**14), shift_base=-3)
    model = b.model([f], (4, 5, 64))
    assert FastPlan(model).steps.count(_passthrough) == 1
    _three_ways(model, _inputs(rng, (4, 5, 64), 2, "extreme"), monkeypatch)


def test_table_not_fused_into_a_model_output_or_an_event_step(monkeypatch):
    """docs/engine.md's list: a producer that is a model output (and read by the table only)
    keeps its table as a separate step, as does a conv2d run by an event step; the same
    program with the table as the only output fuses it in the dense plan."""
    from fixedq.engine.fast.events import EventStep

    rng = np.random.default_rng(5)
    b = Builder(rng, 3, (-128, 127))
    t = b.neural("in", "conv2d", cout=3, k=3)
    f = _table_op(b, rng, t, "tab", (-128, 127))
    fused = b.model([f], (6, 5, 3))
    assert FastPlan(fused).steps[2] is _passthrough
    event = FastPlan(fused, "event")
    assert isinstance(event.steps[1], EventStep) and event.steps[2] is not _passthrough
    both = b.model([t, f], (6, 5, 3))
    assert _passthrough not in FastPlan(both).steps
    _three_ways(both, _inputs(rng, (6, 5, 3), 2, "random"), monkeypatch)
