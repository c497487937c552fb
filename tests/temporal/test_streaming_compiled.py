"""Streaming programs on the compiled plan (fixedq/engine/fast/stateful.py) equal the NumPy
reference path frame by frame on every element: random buffer_conv (full and depthwise, with
input alignment and offsets) and recurrent programs at worst-case magnitudes and huge shifts,
all-zero frames and single events, dense and event mode; live step() with batch changes;
per-op profiles of clips; ``fixedq run --profile`` on a streaming .fqe."""

from __future__ import annotations

import numpy as np
import pytest

from fixedq.engine import kernels
from fixedq.engine.fast import jit, stateful
from fixedq.engine.ops import Op
from fixedq.engine.streaming import StreamingModel

pytestmark = pytest.mark.skipif(not jit.enabled(), reason="numba not installed")


def _program(seed, worst=False, c=None):
    """input -> conv-free chain: buffer_conv (full) -> recurrent -> buffer_conv (depthwise)."""
    rng = np.random.default_rng(seed)
    c, f, k = c or int(rng.integers(1, 5)), int(rng.integers(1, 7)), int(rng.integers(1, 5))
    frame = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    in_lo, in_hi = [(0, 255), (-128, 127), (-(2**15), 2**15 - 1)][seed % 3]
    ops = [Op("in", "input", [], {}, {"frac": rng.integers(-2, 6, c),
                                      "lo": np.full(c, in_lo), "hi": np.full(c, in_hi)})]
    kernel = rng.integers(-128, 128, (k, c, f))
    if worst:
        kernel[...] = -128
    align = rng.integers(0, 4, c) if seed % 2 else np.zeros(c, np.int64)
    mags = np.full(c, max(abs(in_lo), in_hi)) << align
    bound = int(np.einsum("kcf,c->f", np.abs(kernel), mags).max())
    acc_bits = 31 if seed % 3 else max(4, bound.bit_length() - 2)  # a tight clip
    shift = np.clip(bound.bit_length() - 7 + rng.integers(-2, 3, f), -3, 62)
    if seed % 4 == 0:
        shift[-1] = 62
    arrays = {"kernel": kernel, "bias": rng.integers(-3000, 3000, f),
              "multiplier": rng.integers(1, 300, f), "shift": shift,
              "out_lo": np.full(f, -128), "out_hi": np.full(f, 127)}
    if np.any(align):
        arrays["in_align"] = align
    ops.append(Op("t1", "buffer_conv", ["in"], {
        "kernel_size": k, "depthwise": False, "accum_dtype": kernels.exact_dtype(bound),
        "accum_bound": bound, "acc_lo": -(1 << acc_bits), "acc_hi": (1 << acc_bits) - 1,
        "frame_shape": [*frame, c]}, arrays))
    fa = 14
    rec = {"a_re": rng.integers(-2**14, 2**14, f), "a_im": rng.integers(-2**14, 2**14, f),
           "in_shift": rng.integers(-3, 6, f), "out_shift": rng.integers(0, 9, f),
           "state_hi": np.array([2**15 - 1]), "out_lo": np.full(f, -128),
           "out_hi": np.full(f, 127)}
    if seed % 2:
        rec["in_offset0"] = rng.integers(-5, 6, f)
    ops.append(Op("r", "recurrent", ["t1"], {"coef_frac": fa, "state_bits": 16}, rec))
    kd = int(rng.integers(1, 4))
    dk = rng.integers(-128, 128, (kd, f))
    dbound = int((np.abs(dk) * 128).sum(axis=0).max())
    ops.append(Op("t2", "buffer_conv", ["r"], {
        "kernel_size": kd, "depthwise": True, "accum_dtype": kernels.exact_dtype(dbound),
        "accum_bound": dbound, "acc_lo": -(1 << 31), "acc_hi": (1 << 31) - 1},
        {"kernel": dk, "bias": rng.integers(-100, 100, f),
         "multiplier": rng.integers(1, 300, f), "shift": rng.integers(0, 14, f),
         "out_lo": np.full(f, -128), "out_hi": np.full(f, 127)}))
    outs = [{"tensor": t, "frac": [0] * f, "name": t} for t in ("t1", "r", "t2")]
    return StreamingModel(ops, outs, (None, *frame, c)), rng, (*frame, c), (in_lo, in_hi)


def _clips(rng, shape, rng_in, zero_frac, n=3, steps=6, big=False):
    lo, hi = rng_in
    x = rng.uniform(lo, hi, (n, steps, *shape)) * (1e6 if big else 1)
    x[rng.random(x.shape) < zero_frac] = 0.0
    return x.astype(np.float32)


def _reference(model, clips, monkeypatch, mode="dense"):
    monkeypatch.setenv(jit.ENV, "0")
    try:
        return model.predict(clips, batch_size=2, output="int", mode=mode)
    finally:
        monkeypatch.setenv(jit.ENV, "1")


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("zero_frac", [0.0, 0.9, 1.0])
def test_random_streaming_programs_equal_reference(seed, zero_frac, monkeypatch):
    model, rng, shape, rng_in = _program(seed, worst=seed == 5)
    assert {type(s).__name__ for s in model.fast_plan().steps[1:]} == {
        "BufferConvStep", "RecurrentStep"}
    clips = _clips(rng, shape, rng_in, zero_frac, big=seed % 4 == 1)
    want = _reference(model, clips, monkeypatch)
    for mode in ("dense", "event"):
        got = model.predict(clips, batch_size=2, output="int", mode=mode)
        for w, g in zip(want, got, strict=True):
            np.testing.assert_array_equal(g, w)


def _force(monkeypatch, kernel):
    """The event step's kernel: ``"events"`` (the scatter of every event) or ``"active"``
    (the dense step on the windows holding an event)."""
    from fixedq.engine.fast import events

    monkeypatch.setitem(events.COST_NS, "dense_value", 1e9)
    if kernel == "events":
        monkeypatch.setitem(events.COST_NS, "gather", 1e12)


@pytest.mark.parametrize("kernel", ["events", "active"])
def test_single_events_and_forced_event_kernels(kernel, monkeypatch):
    _force(monkeypatch, kernel)
    model, rng, shape, rng_in = _program(3)
    clips = np.zeros((4, 5, *shape), np.float32)
    clips[np.arange(4), np.arange(4), 0, 0, 0] = 50.0  # one event per clip, frames 0..3
    want = _reference(model, clips, monkeypatch)
    got = model.predict(clips, batch_size=4, output="int", mode="event")
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(g, w)
    counts = model.fast_plan("event").steps[1].inner.counts
    assert kernel in counts and set(counts) <= {"active", "events"}  # (all-zero: "active")


def test_live_steps_keep_state_and_batch_change_resets(monkeypatch):
    model, rng, shape, rng_in = _program(1)
    clips = _clips(rng, shape, rng_in, 0.5, n=2)
    want = model.predict(clips, output="int")
    model.reset()
    live = [model.step(clips[:, t], output="int") for t in range(clips.shape[1])]
    for j, w in enumerate(want):
        np.testing.assert_array_equal(np.stack([frame[j] for frame in live], axis=1), w)
    # the state holds the inputs before alignment, identical on both paths
    fifo = model.states["t1"]
    assert fifo.shape[:2] == (2, model.ops[1].attrs["kernel_size"] - 1)
    model.step(clips[:1, 0])  # another batch size: a new sequence from zeros
    assert model.states["r"][0].shape[0] == 1
    one = model.predict(clips[:1, :1], output="int")
    model.reset()
    np.testing.assert_array_equal(model.step(clips[:1, 0], output="int")[0], one[0][:, 0])


def test_stateful_step_other_kinds_use_the_reference():
    op = Op("c", "clip", ["x"], {}, {"lo": np.array([0]), "hi": np.array([3])})
    assert stateful.stateful_step(op, None)([np.array([[-1, 2, 9]])]).tolist() == [[0, 2, 3]]


def test_profile_of_clips(monkeypatch):
    model, rng, shape, rng_in = _program(2)
    clips = _clips(rng, shape, rng_in, 0.5)
    rows = model.profile(clips, batch_size=2)
    assert [r["name"] for r in rows] == [op.name for op in model.ops]
    assert all(r["seconds"] > 0 for r in rows)
    assert abs(sum(r["share"] for r in rows) - 1.0) < 1e-9
    assert model.states == {}  # every batch of clips from a clean state, left clean
    with pytest.raises(ValueError, match="mode must be one of"):
        model.profile(clips, mode="fast")


def test_cli_run_profile_on_streaming_fqe(tmp_path):
    import json
    import subprocess
    import sys

    model, rng, shape, rng_in = _program(4)
    path = tmp_path / "s.fqe"
    model.save(path)
    clips = _clips(rng, shape, rng_in, 0.9, n=4)
    np.savez(tmp_path / "clips.npz", x=clips, y=np.zeros(4, np.int64))
    out = subprocess.run([sys.executable, "-m", "fixedq_cli.main", "run", "-m", str(path), "-sa",
                          str(tmp_path / "clips.npz"), "--profile", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert [r["name"] for r in report["profile"]] == [op.name for op in model.ops]
    assert report["frames"] == clips.shape[1]


@pytest.mark.parametrize("kernel", ["events", "active"])
@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_event_windows_of_word_rows(seed, kernel, monkeypatch):
    """The event step reads the buffer conv's window (N, k, pixels, C) in place, each
    pixel's channels as 64-bit words (8 channels of 8-bit inputs, 4 of 16-bit): one event
    per clip at every frame and channel, all-zero frames between them, every weight at -128
    with inputs at the range's ends (seed 5), and live ``step(mode="event")`` with a
    batch-size change; both event kernels; every output equals the reference path's."""
    from fixedq.engine.fast import event_kernels

    _force(monkeypatch, kernel)
    model, rng, shape, rng_in = _program(seed, worst=seed == 5, c=8 if seed % 3 < 2 else 4)
    step = model.fast_plan("event").steps[1]
    k, c = step.k, shape[-1]
    xq = model.fast_plan("event").steps[0]([np.zeros((1, *shape), np.float32)])
    assert event_kernels.word_view(np.zeros((1, k, 1, c), xq.dtype), 1).shape[-1] > 0
    steps = 2 * c + 2
    single = np.zeros((c, steps, *shape), np.float32)
    for i in range(c):  # clip i: one event at frame 2i, channel i; the other frames zero
        single[i, 2 * i, i % shape[0], i % shape[1], i] = rng_in[1] if i % 2 else rng_in[0] or 1
    worst = _clips(rng, shape, rng_in, 0.9, n=3, big=True)
    for clips in (np.zeros((2, 3, *shape), np.float32), single, worst):
        want = _reference(model, clips, monkeypatch)
        got = model.predict(clips, batch_size=2, output="int", mode="event")
        for w, g in zip(want, got, strict=True):
            np.testing.assert_array_equal(g, w)
    # the forced kernel ran; windows without any event take the "active" path (const only)
    assert kernel in step.inner.counts and set(step.inner.counts) <= {"active", "events"}
    model.reset()  # live: batch 3, then batch 1 (a new sequence from zeros)
    live = [model.step(worst[:, t], output="int", mode="event") for t in range(3)]
    for j, w in enumerate(_reference(model, worst[:, :3], monkeypatch)):
        np.testing.assert_array_equal(np.stack([f[j] for f in live], axis=1), w)
    one = model.step(worst[:1, 0], output="int", mode="event")
    model.reset()
    for w, g in zip(one, model.step(worst[:1, 0], output="int"), strict=True):
        np.testing.assert_array_equal(g, w)
