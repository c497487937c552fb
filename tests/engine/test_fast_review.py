"""Review of 604f2f4..fcec990 (event-mode back-off / dense-plan bypass, jit.pinned): tests
that fail on fcec990, each naming the defect it demonstrates."""

from __future__ import annotations

import numpy as np
import pytest
from test_fast_events import _check, _cnn, _event_steps, _sparse
from test_fast_path import Builder, _inputs

from fixedq.engine.fast import events, int_gemm, jit

pytestmark = pytest.mark.skipif(events.backend() is None, reason="numba not installed")


def test_small_shape_decision_follows_the_dense_cost_constants(monkeypatch):
    """EventStep._small_ns keeps a shape's dense estimate computed with the ``dense_value``
    and ``dense_mac`` of its first call and only compares it with ``event_call`` again
    (the docstring says the estimate "is compared with COST_NS again at every call";
    FastPlan._all_small even keys its bypass by these constants). After raising
    ``dense_value`` (the ``always_events`` fixture's way of forcing the scatter) a shape
    seen before keeps running dense, and the plan records the new constants as
    "all small" too; a fresh plan of the same program runs the event kernels."""
    model, rng, shape, (lo, hi) = _cnn(2)
    x = _sparse(rng, (1, *shape), lo, hi, 0.99)
    _check(model, x, monkeypatch, ran="dense")  # default costs: a batch-1 frame is small
    monkeypatch.setitem(events.COST_NS, "dense_value", 1e9)  # (event_call unchanged)
    monkeypatch.setitem(events.COST_NS, "gather", 1e12)
    fresh, *_ = _cnn(2)
    _check(fresh, x, monkeypatch)  # the decision a plan makes under these constants
    _check(model, x, monkeypatch)  # fails: every step still "too small to scan" -> dense
    assert {s.last for s in _event_steps(model)} == {s.last for s in _event_steps(fresh)}


def test_pin_released_when_a_run_fails_before_its_first_step(monkeypatch):
    """FastPlan._run enters ``jit.pinned()`` before its ``try``: an exception in
    ``jit.backend()`` / ``int_gemm.available()`` (first-use numba / onnxruntime self-test,
    or a KeyboardInterrupt there) leaves the switch pinned on the thread for good:
    ``FIXEDQ_ENGINE_COMPILED=0`` is then ignored (model.fast_plan() still returns a plan)."""
    monkeypatch.setenv(jit.ENV, "1")
    rng = np.random.default_rng(12)
    b = Builder(rng, 2, (0, 255))
    model = b.model([b.neural("in", "conv2d", cout=3, k=3)], (6, 6, 2))
    x = _inputs(rng, (6, 6, 2), 2, "random")

    def boom():
        raise RuntimeError("boom")

    with monkeypatch.context() as m:
        m.setattr(int_gemm, "available", boom)
        with pytest.raises(RuntimeError, match="boom"):
            model.run_batch(x)
    try:
        assert jit.pinned.current() is None
        monkeypatch.setenv(jit.ENV, "0")
        assert model.fast_plan() is None  # the switch is read again
    finally:
        jit._PIN.value = None  # (do not leak into other tests)


def test_all_small_decision_of_one_thread_not_taken_from_another(monkeypatch):
    """``EventStep.ran_small`` is one attribute shared by every thread running the plan
    (the data-parallel workers, now on by default: ``FIXEDQ_ENGINE_THREADS=auto``, or
    callers on several threads), and FastPlan._run reads it after its last step: a batch-1
    run on another thread in between (here while the big batch's last event step runs,
    as in a nogil kernel) makes the big batch's shape "too small for every event step", and
    from then on it bypasses the event steps (the dense plan) for good. The integers stay
    the same; the event kernels are lost for that shape."""
    import threading

    model, rng, shape, (lo, hi) = _cnn(2)
    monkeypatch.setitem(events.COST_NS, "event_call", 2000.0)  # batch 1 small, 256 not
    plan = model.fast_plan("event")
    x1 = _sparse(rng, (1, *shape), lo, hi, 0.99)
    xb = _sparse(rng, (256, *shape), lo, hi, 0.99)
    plan._run(x1, None)  # (the batch-1 shapes are remembered as small)
    plan._run(xb, None)
    assert not any(k[0] == xb.shape for k in plan._all_small)
    last = plan._event_steps[-1]
    real = last.window
    done = []

    def window(win):
        out = real(win)
        if win.shape[2] == 256 and not done:  # the other thread runs a batch-1 frame now
            t = threading.Thread(target=lambda: done.append(plan._run(x1, None)))
            t.start()
            t.join()
        return out

    monkeypatch.setattr(last, "window", window)
    plan._run(xb, None)
    assert done
    assert not any(k[0] == xb.shape for k in plan._all_small)


def test_bypass_with_compiled_kernels_switched_off(monkeypatch):
    """FastPlan._run's bypass builds the dense plan with ``model.fast_plan("dense")``, which
    is ``None`` when ``FIXEDQ_ENGINE_COMPILED=0``: an event plan held by its caller (benches
    keep ``model.fast_plan("event")``) or whose switch flips between the model's check and
    the bypass (another thread) fails with ``'NoneType' object has no attribute '_run'``;
    before the bypass the plan ran every step's reference kernel."""
    model, rng, shape, (lo, hi) = _cnn(2)
    x = _sparse(rng, (1, *shape), lo, hi, 0.99)
    want = model.run_batch(x)
    plan = model.fast_plan("event")
    plan.run(x)
    plan.run(x)  # the shape is recorded as too small for every event step
    assert any(k[0] == x.shape for k in plan._all_small)
    monkeypatch.setenv(jit.ENV, "0")
    for w, g in zip(want, plan.run(x), strict=True):
        np.testing.assert_array_equal(g, w)


def test_one_pinned_object_shared_by_two_threads(monkeypatch):
    """``jit.pinned`` keeps the stack of outer values on the object (bcc52a1) while the pin
    itself is per thread: one object entered on two threads pops the other thread's outer
    value. Thread A (unpinned) enters ``pin``; thread B, inside its own ``pinned()``, enters
    ``pin`` too; A leaves first and gets B's outer value (its thread stays pinned for good:
    ``FIXEDQ_ENGINE_COMPILED`` is no longer read there), and B, leaving, gets A's ``None``
    (its own outer context is lost while still inside it)."""
    import threading

    monkeypatch.setenv(jit.ENV, "1")
    pin = jit.pinned()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def thread_a():
        with pin:
            a_in.set()
            b_in.wait(5)
        seen["a_after"] = jit.pinned.current()
        jit._PIN.value = None  # (a worker thread: nothing leaks into other tests)
        a_out.set()

    def thread_b():
        with jit.pinned():
            a_in.wait(5)
            with pin:
                b_in.set()
                a_out.wait(5)
            seen["b_inside_own"] = jit.pinned.current()
        seen["b_after"] = jit.pinned.current()

    ts = [threading.Thread(target=f) for f in (thread_a, thread_b)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert seen == {"a_after": None, "b_inside_own": True, "b_after": None}, seen
