"""Event-driven conv kernels: the compiled (numba) and scipy element-event kernels and the NumPy
pixel-event fallback give exactly the reference ops' integers (fixedq.engine.ops: int64 conv +
neural_output) on random sparse inputs and worst-case magnitudes, for every geometry and fused
pool."""

from __future__ import annotations

import numpy as np
import pytest
from test_kernels import _reference  # the exact int64 reference ops

from fixedq.engine import compiled_events, events, kernels
from fixedq.engine.ops import Op

sp = pytest.importorskip("scipy.sparse")

POOLS = [None, {"pool_size": [2, 2], "strides": [2, 2], "padding": "valid"},
         {"pool_size": [2, 2], "strides": [2, 2], "padding": "same"},
         {"pool_size": [3, 3], "strides": [2, 2], "padding": "same"},
         {"pool_size": [2, 3], "strides": [2, 3], "padding": "valid"}]
GEOMS = [((1, 1), "same", (1, 1)), ((2, 2), "same", (1, 1)), ((1, 1), "valid", (2, 2)),
         ((1, 2), "valid", (1, 1)), ((2, 1), "same", (1, 2)), ((3, 3), "valid", (1, 1))]


def _op(kernel, rng, align=None, pool=None, strides=(1, 1), padding="same", dilation=(1, 1),
        in_max=255, bias=None, mult=None):
    cout = kernel.shape[-1]
    arrays = {"kernel": kernel,
              "bias": rng.integers(-1000, 1001, cout) if bias is None else bias,
              "multiplier": rng.integers(128, 256, cout) if mult is None else mult,
              "shift": rng.integers(8, 21, cout),
              "out_lo": np.full(cout, -128), "out_hi": np.full(cout, 127)}
    if align is not None:
        arrays["in_align"] = np.asarray(align)
    mags = np.full(kernel.shape[2], in_max, dtype=np.int64)
    if align is not None:
        mags = mags << np.asarray(align)
    bound = kernels.linear_bound(kernel, "conv2d", mags)
    attrs = {"type": "conv2d", "accum_dtype": kernels.exact_dtype(bound), "accum_bound": bound,
             "acc_lo": -(1 << 31), "acc_hi": (1 << 31) - 1, "strides": list(strides),
             "padding": padding, "dilation_rate": list(dilation)}
    if pool:
        attrs["pool"] = pool
    return Op("op", "neural", ["x"], attrs, arrays)




def _sparse(rng, shape, zero_frac, lo=1, hi=255, pixel=False):
    x = rng.integers(lo, hi + 1, size=shape)
    x[rng.random(shape[:-1] if pixel else shape) < zero_frac] = 0
    return x


KERNEL = {"compiled": "compiled", "compiled-threads": "compiled", "scipy": "sparse",
          "scipy-groups": "sparse", "numpy": "pixel"}


def _run(op, x, backend):
    """Event path of ``backend`` (the fixture below); checks that its kernel ran."""
    stats = {"op": {}}
    y = events.run_neural_events(op, x, stats)
    assert stats["op"]["event_driven"], backend
    assert stats["op"]["event_kernel"] in (KERNEL[backend], "element"), stats
    return y


@pytest.fixture(params=["compiled", "compiled-threads", "scipy", "scipy-groups", "numpy"])
def backend(request, monkeypatch):
    """The event kernel always runs; "scipy-groups" keeps every float32 channel group (the
    cost model would otherwise merge small ones into one float64 group). "compiled" needs
    numba (the ``events``/``dev`` extras); the others hide it. "compiled-threads" splits even
    the smallest work into 3 threads' parts (the bench-size default splits only large work)."""
    if request.param.startswith("compiled"):
        pytest.importorskip("numba")
        if request.param == "compiled-threads":
            monkeypatch.setattr(compiled_events, "THREADS", 3)
            monkeypatch.setattr(compiled_events, "MIN_SPLIT", 1)
    else:
        monkeypatch.setattr(compiled_events, "backend", lambda: None)
    monkeypatch.setattr(events, "EVENT_MAX_DENSITY", 1.0)
    monkeypatch.setattr(events, "EVENT_MAX_ACTIVE", 1.0)
    cost = {**events.COST_NS, "event_value": 0.0, "sparse_mac": 0.0, "sparse_mac64": 0.0,
            "compiled_mac": 0.0}
    if request.param == "scipy-groups":
        cost.update(group=0.0)
    monkeypatch.setattr(events, "COST_NS", cost)
    if request.param == "numpy":
        monkeypatch.setattr(events, "sparse_backend", lambda: None)
    return request.param


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("geom", GEOMS)
def test_random_sparse_equals_reference(backend, pool, geom):
    rng = np.random.default_rng(11)
    strides, padding, dil = geom
    for cin, align, zf, pixel in ((1, None, 0.9, False), (6, [0, 5, 0, 2, 6, 3], 0.8, False),
                                  (5, None, 0.95, True), (4, None, 1.0, False)):
        k = rng.integers(-128, 128, size=(3, 3, cin, 5))
        x = _sparse(rng, (3, 11, 12, cin), zf, pixel=pixel)
        op = _op(k, rng, align, pool, strides, padding, dil)
        np.testing.assert_array_equal(_run(op, x, backend), _reference(op, x))


@pytest.mark.parametrize("pool", POOLS[:2])
def test_signed_inputs_and_2x2_kernel(backend, pool):
    rng = np.random.default_rng(12)
    k = rng.integers(-8, 8, size=(2, 2, 3, 7))
    x = _sparse(rng, (2, 9, 8, 3), 0.85, lo=-128, hi=127)
    op = _op(k, rng, None, pool, in_max=128)
    np.testing.assert_array_equal(_run(op, x, backend), _reference(op, x))


@pytest.mark.parametrize("align", [None, "two_groups", "int64"])
def test_worst_case_magnitudes(backend, align):
    """3x3x512 fan-in, every weight at -128 or 127 and every event at 255: the bound passes
    2^24 (float64, or float32/float64 channel groups with a 9-bit alignment), and with a
    30-bit alignment 2^53 (int64 products and int64 requantization)."""
    rng = np.random.default_rng(13)
    cin = 512
    k = np.where(rng.random((3, 3, cin, 4)) < 0.5, -128, 127)
    k[..., 0] = 127  # one output channel with every term of the same sign
    al = {None: None, "two_groups": np.where(np.arange(cin) % 2, 9, 0),
          "int64": np.where(np.arange(cin) % 3 == 0, 30, 0)}[align]
    x = np.full((2, 6, 5, cin), 255)
    x[rng.random(x.shape) < 0.5] = 0
    x[0, 2:5, 1:4, :] = 255  # one 3x3 window with every event present: the full bound
    op = _op(k, rng, al, None, in_max=255, mult=np.full(4, 1), bias=np.zeros(4, np.int64))
    op.arrays["shift"] = np.full(4, 0 if align is None else 30)
    op.arrays["out_lo"], op.arrays["out_hi"] = np.full(4, -(2**62)), np.full(4, 2**62)
    op.attrs["acc_lo"], op.attrs["acc_hi"] = -(2**62), 2**62
    want = _reference(op, x)
    if align is None:
        assert np.abs(want).max() > 2**24 and want.max() == 9 * cin * 255 * 127
    np.testing.assert_array_equal(_run(op, x, backend), want)


def test_sparse_kernel_keeps_only_reached_rows():
    """Work scales with the events: one event in a 3x3 'same' conv keeps 9 output rows (or
    the 4 pool windows around it, 16 rows), whatever the image size."""
    rng = np.random.default_rng(14)
    k = rng.integers(-128, 128, size=(3, 3, 2, 3))
    x = np.zeros((4, 40, 40, 2), dtype=np.int64)
    x[1, 20, 21, 1] = 77
    for pool, rows in ((None, 9), (POOLS[1], 16)):
        plan = kernels.NeuralPlan(_op(k, rng, None, pool))
        racc = events.sparse_conv_events(plan, x, sp)
        assert racc.acc.shape == (rows, 3)
        np.testing.assert_array_equal(events.rows_finish(plan, racc), _reference(plan.op, x))
        if compiled_events.backend() is not None:
            racc = events.compiled_conv_events(plan, x)
            assert racc.acc.shape == (rows, 3) and racc.acc.dtype == np.int32
            np.testing.assert_array_equal(events.rows_finish(plan, racc),
                                          _reference(plan.op, x))


def test_compiled_kernel_int64_and_fallback_past_2_62():
    """The compiled kernel sums in int32 below 2^31, in int64 below 2^62; past 2^62 (still an
    exact int64 reference) it declines and the scipy kernel's int64 path runs."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(18)
    k = np.where(rng.random((3, 3, 512, 2)) < 0.5, -128, 127)
    k[..., 0] = 127
    x = np.zeros((1, 12, 12, 512), dtype=np.int64)
    x[0, 4:7, 5:8, :] = 255  # one full 3x3 window: the bound 9*512*255*127 * 2^align
    for shift, dtype, kernel in ((0, np.int32, "compiled"), (20, np.int64, "compiled"),
                                 (35, None, "sparse")):
        op = _op(k, rng, np.full(512, shift), None, mult=np.ones(2, np.int64),
                 bias=np.zeros(2, np.int64))
        op.arrays["shift"] = np.full(2, shift)
        op.arrays["out_lo"], op.arrays["out_hi"] = np.full(2, -(2**62)), np.full(2, 2**62)
        op.attrs["acc_lo"], op.attrs["acc_hi"] = -(2**63), 2**63 - 1
        plan = kernels.NeuralPlan(op)
        racc = compiled_events.conv_events(plan, x)
        assert (racc is None) == (dtype is None)
        if dtype is not None:
            assert racc.acc.dtype == dtype and racc.acc[:, 0].max() == 9 * 512 * 255 * 127 << shift
        stats = {"op": {}}
        np.testing.assert_array_equal(events.run_neural_events(op, x, stats, plan),
                                      _reference(op, x))
        assert stats["op"]["event_kernel"] == kernel


def test_no_events_and_requant_shortcuts(backend):
    """All-zero input: every output is requant(0) (per-channel bias); negative multipliers
    (no pool-first) and int64 requantization fall back to the dense finish."""
    rng = np.random.default_rng(15)
    k = rng.integers(-128, 128, size=(3, 3, 2, 3))
    x = np.zeros((2, 8, 8, 2), dtype=np.int64)
    for pool in POOLS[:3]:
        op = _op(k, rng, None, pool)
        np.testing.assert_array_equal(_run(op, x, backend), _reference(op, x))
    x = _sparse(rng, (2, 8, 8, 2), 0.9)
    op = _op(k, rng, None, POOLS[1], mult=np.array([200, -3, 7]))
    np.testing.assert_array_equal(_run(op, x, backend), _reference(op, x))
    op = _op(k, rng, None, POOLS[1], mult=np.full(3, 2**40))
    assert not kernels.NeuralPlan(op).float_requant
    np.testing.assert_array_equal(_run(op, x, backend), _reference(op, x))


@pytest.mark.parametrize("pool", POOLS[:2])
def test_acc_clip_and_negative_multiplier(backend, pool):
    """A saturating accumulator clip (the compiled finish must decline: requant of the clipped
    sum) and a negative multiplier (no pool-first, int64 tail) on the event path."""
    rng = np.random.default_rng(21)
    k = rng.integers(-128, 128, size=(3, 3, 4, 6))
    x = _sparse(rng, (2, 9, 10, 4), 0.7, lo=-128, hi=127)
    op = _op(k, rng, [0, 2, 0, 1], pool, in_max=128)
    op.attrs["acc_lo"], op.attrs["acc_hi"] = -(1 << 14), (1 << 14) - 1
    assert kernels.NeuralPlan(op).acc_clip
    want = _reference(op, x)
    np.testing.assert_array_equal(_run(op, x, backend), want)
    op = _op(k, rng, None, pool, in_max=128)
    op.arrays["multiplier"][1] = -op.arrays["multiplier"][1]
    np.testing.assert_array_equal(_run(op, x, backend), _reference(op, x))


@pytest.mark.parametrize("pool", POOLS[:3])
def test_spatial_bias_map_uses_dense_finish(backend, pool):
    """A (Ho, Wo, Cout) bias map: unreached outputs are not one constant per channel, so the
    event path must requantize every output (rows_finish falls back to the dense finish)."""
    rng = np.random.default_rng(16)
    k = rng.integers(-128, 128, size=(3, 3, 2, 3))
    x = _sparse(rng, (2, 8, 6, 2), 0.9)
    op = _op(k, rng, None, pool, bias=rng.integers(-5000, 5001, (8, 6, 3)))
    np.testing.assert_array_equal(_run(op, x, backend), _reference(op, x))


def test_auto_selection_by_density_and_cost():
    """Few events: the sparse kernel; dense input: the dense kernel; iid-sparse events in one
    channel that reach most outputs: the dense kernel too (estimated cheaper)."""
    rng = np.random.default_rng(17)
    event_kernel = "compiled" if compiled_events.backend() is not None else "sparse"
    cases = ((4, 0.95, True, event_kernel), (4, 0.2, False, "dense"), (1, 0.85, False, "dense"))
    for cin, zf, driven, kernel in cases:
        op = _op(rng.integers(-128, 128, size=(3, 3, cin, 32)), rng, None, POOLS[1])
        x = _sparse(rng, (4, 28, 28, cin), zf)
        if cin == 4:  # clustered events: a few active 4x4 patches
            x[:] = 0
            x[:, 8:12, 8:12] = rng.integers(1, 256, size=(4, 4, 4, cin))
            if not driven:
                x = _sparse(rng, x.shape, zf)
        stats = {"op": {}}
        np.testing.assert_array_equal(events.run_neural_events(op, x, stats),
                                      _reference(op, x))
        assert (stats["op"]["event_driven"], stats["op"]["event_kernel"]) == (driven, kernel)


def test_compiled_module_docstring_example():
    """The module's example (one event reaching 9 outputs) runs as written."""
    pytest.importorskip("numba")
    import doctest

    assert doctest.testmod(compiled_events).failed == 0


def test_compiled_threads_work_in_a_forked_child():
    """After the parent used the worker threads, a forked child (multiprocessing's default on
    Linux) runs the split kernels too instead of waiting on the parent's absent threads."""
    pytest.importorskip("numba")
    import multiprocessing as mp

    rng = np.random.default_rng(19)
    op = _op(rng.integers(-128, 128, size=(3, 3, 4, 8)), rng, None, POOLS[1])
    x = np.zeros((8, 32, 32, 4), dtype=np.int64)
    x[:, 10:14, 12:16] = _sparse(rng, (8, 4, 4, 4), 0.3)  # one active patch per image
    want = _reference(op, x)
    old = compiled_events.MIN_SPLIT, compiled_events.THREADS
    compiled_events.MIN_SPLIT, compiled_events.THREADS = 1, 2  # (also on a 1-CPU machine)
    try:
        stats = {"op": {}}
        np.testing.assert_array_equal(events.run_neural_events(op, x, stats), want)
        assert stats["op"]["event_kernel"] == "compiled"
        ctx = mp.get_context("fork")
        with ctx.Pool(1) as pool:
            got = pool.apply_async(events.run_neural_events, (op, x)).get(timeout=60)
    finally:
        compiled_events.MIN_SPLIT, compiled_events.THREADS = old
    np.testing.assert_array_equal(got, want)
