"""The compiled event path (fixedq/engine/fast/events.py) equals the NumPy reference path on
every element: random conv/dense programs on sparse inputs at worst-case magnitudes, all-zero
frames, single events, fully dense frames, int32 / int64 accumulators and the fallback past
2^62; the quantized Keras model on a sparse CNN."""

from __future__ import annotations

import numpy as np
import pytest
from test_fast_path import GEOMS, POOLS, RANGES, Builder

from fixedq.engine.fast import events, jit

pytestmark = pytest.mark.skipif(events.backend() is None, reason="numba not installed")


@pytest.fixture
def always_events(monkeypatch):
    """The cost model always picks the scatter event kernel (so that it runs on every input;
    a dense-type step whose input has no event at all takes the "active" path: const)."""
    monkeypatch.setitem(events.COST_NS, "dense_value", 1e9)
    monkeypatch.setitem(events.COST_NS, "gather", 1e12)


def _reference(model, x, monkeypatch):
    monkeypatch.setenv(jit.ENV, "0")
    want = model.run_batch(x)
    monkeypatch.setenv(jit.ENV, "1")
    return want


def _event_steps(model):
    return [s for s in model.fast_plan("event").steps if isinstance(s, events.EventStep)]


def _check(model, x, monkeypatch, ran="events"):
    want = _reference(model, x, monkeypatch)
    got = model.run_batch(x, mode="event")
    for w, g in zip(want, got, strict=True):
        assert g.dtype == np.int64
        np.testing.assert_array_equal(g, w)
    if ran is not None:
        kinds = {s.last for s in _event_steps(model)}
        assert ran in kinds and kinds <= {ran, "active"}


def _lanes(x):
    """The per-channel ``max |x|`` callback of ``EventStep._weights``."""
    return lambda: np.abs(x.reshape(-1, x.shape[-1]).astype(np.int64)).max(axis=0)


def _sparse(rng, shape, lo, hi, zero_frac):
    x = rng.integers(lo, hi + 1, shape).astype(np.float32)
    x[rng.random(shape) < zero_frac] = 0.0
    return x


def _cnn(seed, c_in=None):
    rng = np.random.default_rng(seed)
    c = c_in or int(rng.integers(1, 6))
    h, w = int(rng.integers(5, 12)), int(rng.integers(4, 11))
    b = Builder(rng, c, RANGES[seed % len(RANGES)])
    strides, padding, dil = GEOMS[seed % len(GEOMS)]
    t = b.neural("in", "conv2d", cout=int(rng.integers(1, 9)), k=int(rng.integers(1, 4)),
                 strides=strides, padding=padding, dilation=dil, pool=POOLS[seed % 3],
                 acc_bits=31 if seed % 2 else "tight", huge=seed % 3 == 0)
    u = b.neural(t, "conv2d", cout=4, k=3, acc_bits=31)
    g = b.elementwise("gap", [u])
    y = b.neural(g, "dense", cout=int(rng.integers(1, 12)), huge=True)
    return b.model([t, u, y], (h, w, c)), rng, (h, w, c), RANGES[seed % len(RANGES)]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("zero_frac", [0.0, 0.9, 0.99, 1.0])
def test_random_programs_equal_reference(seed, zero_frac, always_events, monkeypatch):
    """Dense frames (no zeros), >= 90 % zeros, single events and all-zero frames; every
    geometry, fused pool, tight accumulator clip and huge shift of the builder."""
    model, rng, shape, (lo, hi) = _cnn(seed)
    for n in (1, 3):
        x = _sparse(rng, (n, *shape), lo, hi, zero_frac)
        x[x == 0] = 0.0
        _check(model, x, monkeypatch)


def test_single_event_at_every_position(always_events, monkeypatch):
    model, rng, shape, _ = _cnn(4, c_in=2)
    h, w, c = shape
    x = np.zeros((h * w, h, w, c), np.float32)
    for p in range(h * w):
        x[p, p // w, p % w, p % c] = 100.0
    _check(model, x, monkeypatch)


@pytest.mark.parametrize("rng_in", RANGES[:3])
@pytest.mark.parametrize("align", [False, True])
def test_worst_case_magnitudes(rng_in, align, always_events, monkeypatch):
    """Every weight at -128, every event at the range's end, 3x3x64 and 1-channel inputs:
    int32 when the bound allows, int64 past 2^31 (aligned 16-bit inputs)."""
    rng = np.random.default_rng(3)
    for c in (1, 64):
        b = Builder(rng, c, rng_in)
        t = b.neural("in", "conv2d", cout=3, k=3, worst=True, align=align, acc_bits=40)
        model = b.model([t], (5, 6, c))
        x = np.where(rng.random((2, 5, 6, c)) < 0.5, 1e30, -1e30).astype(np.float32)
        x[rng.random(x.shape) < 0.9] = 0.0
        _check(model, x, monkeypatch)
        if not align and rng_in[1] <= 255:  # 8-bit inputs, |w| = 128: 16-bit products
            step = _event_steps(model)[0]
            xq = model.fast_plan("event").steps[0]([x])
            assert step._weights(xq, _lanes(xq)).dtype == np.int16


def test_accumulator_dtype_choice(monkeypatch):
    """int32 weights below 2^31, int64 below 2^62, none (the dense step) beyond."""
    rng = np.random.default_rng(0)
    b = Builder(rng, 2, (-(2**15), 2**15 - 1))
    t = b.neural("in", "dense", cout=2, align=False)
    model = b.model([t], (2,))
    step = _event_steps(model)[0]
    x = np.array([[1, 1]], np.int16)
    step._bounds.clear()
    assert step._weights(x, _lanes(x)).dtype == np.int32
    step.abs_w = np.full_like(step.abs_w, 2**20)
    step._bounds.clear()
    assert step._weights(x, _lanes(x)).dtype == np.int32          # by the batch (max |x| = 1)
    big = np.array([[2**15 - 1, 0]], np.int16)
    assert step._weights(big, _lanes(big)).dtype == np.int64
    step.abs_w = np.full_like(step.abs_w, 2**50)
    step._bounds.clear()
    assert step._weights(big, _lanes(big)) is None


def test_cost_model_choice(monkeypatch):
    model, rng, shape, (lo, hi) = _cnn(1)
    monkeypatch.setitem(events.COST_NS, "dense_value", 1e9)
    x = _sparse(rng, (5, *shape), lo, hi, 0.9)
    _check(model, x, monkeypatch)
    monkeypatch.setitem(events.COST_NS, "dense_value", 0.0)
    monkeypatch.setitem(events.COST_NS, "dense_mac", 0.0)
    _check(model, x, monkeypatch, ran="dense")     # the cost model picks the dense step


def test_disabled_compiled_kernels_run_reference(monkeypatch):
    model, rng, shape, (lo, hi) = _cnn(2)
    x = _sparse(rng, (2, *shape), lo, hi, 0.9)
    want = model.run_batch(x)
    monkeypatch.setenv(jit.ENV, "0")
    assert events.backend() is None and model.fast_plan("event") is None
    for w, g in zip(want, model.run_batch(x, mode="event"), strict=True):
        np.testing.assert_array_equal(g, w)


def test_quantized_keras_parity_on_sparse_cnn():
    """A thresholded 8-bit CNN on stroke-like images (every layer >= 80 % zeros): the event
    path equals quantized Keras, and its conv layers ran on events."""
    import keras

    import fixedq
    import fixedq.engine as fe

    rng = np.random.default_rng(0)
    x_in = keras.Input((16, 16, 1))
    y = keras.layers.Conv2D(8, 3, padding="same", activation="relu",
                            bias_initializer=keras.initializers.Constant(-0.3))(x_in)
    y = keras.layers.MaxPooling2D()(y)
    y = keras.layers.Conv2D(8, 3, padding="same", activation="relu",
                            bias_initializer=keras.initializers.Constant(-0.3))(y)
    y = keras.layers.Dense(5)(keras.layers.Flatten()(y))
    model = keras.Model(x_in, y)
    x = np.zeros((40, 16, 16, 1), np.float32)
    for i in range(40):
        r = rng.integers(2, 14, 6)
        x[i, r[:3], r[3:], 0] = rng.uniform(0.5, 1, 3)
    q = fixedq.quantize(model, samples=x, verbose=False)
    e = fe.convert(q)
    want = q.predict(x, verbose=0)
    np.testing.assert_array_equal(e.predict(x, batch_size=40, mode="event"), want)
    ran = [s.last for s in _event_steps(e)]
    assert ran[:2] == ["events", "events"], ran


@pytest.mark.parametrize("offsets", ["per_channel_in", "scalar_in", "out"])
def test_offsets_of_imported_programs(offsets, always_events, monkeypatch):
    """Asymmetric inputs/outputs (eq. 37: ``in_offset0``, ``out_offset``): the event step runs
    when the dense step leaves the offsets to the plan, else the dense step folds them; the
    integers are the reference's either way."""
    model, rng, shape, (lo, hi) = _cnn(6)
    op = model.ops[2]  # the second conv (its input: the first conv's output)
    c_in, c_out = op.arrays["kernel"].shape[2], op.arrays["kernel"].shape[3]
    if offsets == "per_channel_in":
        op.arrays["in_offset0"] = rng.integers(-3, 4, c_in)
    elif offsets == "scalar_in":
        op.arrays["in_offset0"] = np.full(c_in, 2)
    else:
        op.arrays["out_offset"] = rng.integers(-3, 4, c_out)
    model = type(model)(model.ops, model.outputs, model.input_shape)  # a fresh plan
    x = _sparse(rng, (3, *shape), lo, hi, 0.9)
    _check(model, x, monkeypatch, ran=None)
    step = model.fast_plan("event").steps[2]
    assert isinstance(step, events.EventStep) == (offsets == "per_channel_in")


@pytest.mark.parametrize("seed", range(5))
def test_word_rows_skip_zero_words(seed, always_events, monkeypatch):
    """Input rows whose bytes are a multiple of 8 are scanned as 64-bit words (all-zero
    words skipped): 8 channels of 8-bit, 4 of 16-bit and 2 of 32-bit values; every range,
    geometry and pool of the builder; >= 90 % zeros, all-zero frames, one event at every
    position, every event at the range's ends."""
    from fixedq.engine.fast import event_kernels

    rng_in = RANGES[seed]
    c = {1: 8, 2: 4}.get(np.dtype(_dtype_of(rng_in)).itemsize, 2)
    model, rng, shape, (lo, hi) = _cnn(seed, c_in=c)
    h, w, _ = shape
    xq = model.fast_plan("event").steps[0]([np.zeros((1, *shape), np.float32)])
    assert event_kernels.word_view(xq.reshape(1, h, -1), 1).shape[-1] == w * c * \
        xq.itemsize // 8
    for zero_frac in (0.9, 0.99, 1.0):
        _check(model, _sparse(rng, (3, *shape), lo, hi, zero_frac), monkeypatch)
    single = np.zeros((h * w * c, *shape), np.float32)
    for p in range(h * w * c):  # one event at every position and channel
        single[p, p // (w * c), (p // c) % w, p % c] = hi if p % 2 else max(lo, -hi)
    _check(model, single, monkeypatch)
    ends = np.where(rng.random((2, *shape)) < 0.5, float(lo), float(hi)).astype(np.float32)
    ends[rng.random(ends.shape) < 0.9] = 0.0
    _check(model, ends, monkeypatch)


def _dtype_of(rng_in):
    from fixedq.engine.fast.plan import narrow_dtype

    return narrow_dtype(np.array([rng_in[0]]), np.array([rng_in[1]]))


def test_nonzero_positions_with_and_without_words():
    """The word scan finds exactly the non-zero positions the element scan finds, in order;
    rows that are not a multiple of 8 bytes get no word view."""
    from fixedq.engine.fast import event_kernels as ek

    rng = np.random.default_rng(0)
    for dtype, size in ((np.uint8, 64), (np.int8, 24), (np.int16, 12), (np.int32, 6)):
        for frac in (0.0, 0.5, 0.95, 1.0):
            row = rng.integers(1, 100, size).astype(dtype)
            row[rng.random(size) < frac] = 0
            row[-1] = 0 if frac == 1.0 else 7  # an event in the last word's last element
            words = ek.word_view(row[None], 1)[0]
            assert words.size == size * row.itemsize // 8
            got, plain = np.empty(size, np.int64), np.empty(size, np.int64)
            gs = ek.word_shift(size, words.size)
            assert 2**gs * row.itemsize == 8
            n = ek.nonzero_positions(row, 0, size, words, gs, got)
            m = ek.nonzero_positions(row, 0, size, words, -1, plain)
            assert n == m and got[:n].tolist() == plain[:m].tolist() == \
                np.flatnonzero(row).tolist()
    assert ek.word_view(np.zeros((2, 3, 5), np.uint8), 2).shape == (2, 0)
    assert ek.word_view(np.zeros((2, 3, 5), np.uint8)[:, :, :4], 1).shape == (2, 3, 0)


@pytest.mark.parametrize("seed", range(4))
def test_dense_on_active_rows(seed, monkeypatch):
    """A pointwise dense layer over pixels: the "active" kernel runs the dense step on the
    rows holding an event only (gathered) and gives every other row requant(0); all-zero
    batches, single events, rows at the range's ends."""
    monkeypatch.setitem(events.COST_NS, "dense_value", 1e9)  # the active rows, not scatter
    rng = np.random.default_rng(seed)
    rng_in = RANGES[seed]
    b = Builder(rng, 8, rng_in)
    t = b.neural("in", "dense", cout=int(rng.integers(1, 9)), huge=seed == 1)
    model = b.model([t], (4, 5, 8))
    lo, hi = rng_in
    x = _sparse(rng, (3, 4, 5, 8), lo, hi, 0.0)
    x[rng.random((3, 4, 5)) < 0.8] = 0.0  # 80 % of the pixels without any event
    x[0, 0, 0] = lo
    x[0, 0, 1] = hi
    single = np.zeros((2, 4, 5, 8), np.float32)
    single[1, 3, 4, 7] = hi
    for xs in (x, single, np.zeros_like(single)):
        _check(model, xs, monkeypatch, ran=None)
        assert _event_steps(model)[0].last == "active"


def test_small_steps_run_dense_without_scanning(monkeypatch):
    """A step whose dense estimate is below the event path's fixed cost per call (a small
    batch-1 frame) runs dense without counting its events; with no fixed cost it scans."""
    model, rng, shape, (lo, hi) = _cnn(2)
    x = _sparse(rng, (1, *shape), lo, hi, 0.99)
    scans = _scan_spy(monkeypatch)
    monkeypatch.setitem(events.COST_NS, "event_call", 1e12)
    _check(model, x, monkeypatch, ran="dense")
    assert scans == []
    monkeypatch.setitem(events.COST_NS, "event_call", 0.0)
    monkeypatch.setitem(events.COST_NS, "dense_value", 1e9)
    _check(model, x, monkeypatch)
    assert "count_nonzero" in scans


def _scan_spy(monkeypatch):
    """The event kernels with ``count_nonzero`` and ``active_windows`` counted (the scans)."""
    from types import SimpleNamespace

    nb = events.backend()
    scans = []

    def counted(name):
        def run(*args):
            scans.append(name)
            return getattr(nb, name)(*args)
        return run

    spy = SimpleNamespace(**{**vars(nb), "count_nonzero": counted("count_nonzero"),
                             "active_windows": counted("active_windows")})
    monkeypatch.setattr(events, "backend", lambda: spy)
    return scans


def test_scan_backoff_after_dense_choices(monkeypatch):
    """Scans that keep choosing the dense step are skipped more and more often (at most
    1 in MAX_SKIP + 1 calls then scans), the integers stay the reference's at every call,
    and a batch that makes the event kernel pay is picked up again within MAX_SKIP + 1
    calls."""
    rng = np.random.default_rng(7)
    lo, hi = RANGES[0]
    b = Builder(rng, 3, (lo, hi))
    shape = (9, 8, 3)
    model = b.model([b.neural("in", "conv2d", cout=5, k=3, acc_bits=31)], shape)
    scans = _scan_spy(monkeypatch)
    monkeypatch.setitem(events.COST_NS, "event_call", 0.0)
    monkeypatch.setitem(events.COST_NS, "event_mac", 1e9)  # events never pay
    x = _sparse(rng, (4, *shape), lo, hi, 0.5)
    x[0, 0, 0, 0] = hi  # (at least one event)
    calls = 3 * events.ScanBackoff.MAX_SKIP
    for _ in range(calls):
        _check(model, x, monkeypatch, ran="dense")
    # scans at calls 1, 2, 4, 8, 16, 32, then one in MAX_SKIP + 1
    assert 0 < len(scans) <= 6 + calls // events.ScanBackoff.MAX_SKIP, len(scans)
    monkeypatch.setitem(events.COST_NS, "event_mac", 0.0)  # now the events always pay
    monkeypatch.setitem(events.COST_NS, "dense_value", 1e9)
    sparse = _sparse(rng, (4, *shape), lo, hi, 0.95)
    kinds = []
    for _ in range(events.ScanBackoff.MAX_SKIP + 1):
        want = _reference(model, sparse, monkeypatch)
        got = model.run_batch(sparse, mode="event")
        for w, g in zip(want, got, strict=True):
            np.testing.assert_array_equal(g, w)
        kinds.append(_event_steps(model)[0].last)
    assert kinds[-1] == "events" and "dense" in kinds[:1] + kinds, kinds


def test_batch_too_small_for_every_event_step_runs_the_dense_plan(monkeypatch):
    """A batch shape on which every event step found its input too small to scan runs the
    dense plan from then on (the same integers, no per-step checks); a change of the cost
    model's constants is a new decision (the steps are asked again)."""
    model, rng, shape, (lo, hi) = _cnn(2)
    monkeypatch.setitem(events.COST_NS, "event_call", 1e12)
    x = _sparse(rng, (1, *shape), lo, hi, 0.99)
    plan = model.fast_plan("event")
    for _ in range(2):  # the first call finds the shapes small, the second records it
        _check(model, x, monkeypatch, ran="dense")
    assert any(k[0] == x.shape for k in plan._all_small)
    steps = _event_steps(model)
    for st in steps:
        st.counts.clear()
    _check(model, x, monkeypatch, ran=None)
    assert all(not st.counts for st in steps)  # the event steps did not run
    scans = _scan_spy(monkeypatch)
    monkeypatch.setitem(events.COST_NS, "event_call", 0.0)
    monkeypatch.setitem(events.COST_NS, "dense_value", 1e9)
    _check(model, x, monkeypatch)
    assert "count_nonzero" in scans


def test_scan_backoff_when_events_pay_now_and_then():
    """A shape whose batches pay for events one call in 8 (a buffer conv's first frame of a
    clip) is scanned rarely, not 4 times in 8 (an event choice used to start the back-off
    over); a shape whose batches always pay is scanned on every call."""
    periodic = events.ScanBackoff()
    scans = 0
    for t in range(256):
        if not periodic.skip("s"):
            scans += 1
            periodic.scanned("s", dense=t % 8 != 0)
    assert scans <= 32, scans  # (starting over at each event choice: 128)
    always = events.ScanBackoff()
    for _ in range(3):
        always.scanned("s", dense=True)
    taken = []
    for _ in range(40):
        if not always.skip("s"):
            taken.append(True)
            always.scanned("s", dense=False)
    assert len(taken) >= 36  # an event choice makes the next call scan
