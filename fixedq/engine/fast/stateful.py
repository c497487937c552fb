"""Stateful steps of the compiled plan: ``buffer_conv`` and ``recurrent`` (streaming programs).

The state lives where the reference path keeps it, in the model's ``states`` dict
(:class:`fixedq.engine.streaming.StreamingModel`, DESIGN.md decision 11), in the same form:

- ``buffer_conv``: the FIFO ``(N, k - 1, *frame)`` of the op's last input frames (before the
  alignment ``in_align``; the compiled step keeps them in their narrow dtype). One frame is a
  neural ``dense`` layer over each pixel's window of ``k`` frames, ``(..., k*C) @ (k*C, F)``
  (eq. 40): the step runs the compiled plan's dense step (int8 GEMM, fused requantization)
  on a synthetic ``dense`` op with the kernel reshaped and the alignment repeated per frame.
  With ``mode="event"`` the event step reads the window ``(N, k, pixels, C)`` as it is
  (:meth:`fixedq.engine.fast.events.EventStep.window`: no stacked copy) and adds each
  frame's events into the pixel's accumulators, or runs the dense step when its cost model
  prefers it. Depthwise (kernel ``(k, C)``): int64 products summed
  over the window, then the compiled requantization.
- ``recurrent``: ``(s_re, s_im)`` int64 arrays, updated by one compiled elementwise kernel
  (:func:`recurrent_rows`, eq. 41 step by step as :func:`fixedq.engine.recurrent.
  recurrent_step` computes it).

A state of another batch or frame size reads as zeros (a new sequence), as in the reference.

Example:
    >>> import numpy as np
    >>> from fixedq.engine.ops import Op
    >>> from fixedq.engine.streaming import StreamingModel
    >>> op = Op("t", "buffer_conv", ["x"], {"kernel_size": 2, "depthwise": False,
    ...         "accum_dtype": "int64", "acc_lo": -2**31, "acc_hi": 2**31 - 1},
    ...         {"kernel": np.array([[[1]], [[10]]]), "bias": np.array([0]),
    ...          "multiplier": np.array([1]), "shift": np.array([0]),
    ...          "out_lo": np.array([-128]), "out_hi": np.array([127])})
    >>> model = StreamingModel([Op("x", "input", [], {}, {"frac": np.array([0]),
    ...     "lo": np.array([-128]), "hi": np.array([127])}), op], [{"tensor": "t",
    ...     "frac": [0], "name": "t"}], (None, 1))
    >>> type(model.fast_plan().steps[1]).__name__
    'BufferConvStep'
    >>> model.predict(np.array([[[1.0], [2.0]]])).tolist()   # one clip of two frames
    [[[10.0], [21.0]]]
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from fixedq.engine.fast import jit
from fixedq.engine.ops import Op, aligned_input, neural_output, run_op


def recurrent_rows(u, align, in_left, in_s1, in_up, s_re, s_im, a_re, a_im, fa, hi,
                   out_left, out_s1, out_up, lo, out_hi, out):
    """One frame of eq. 41 over ``(rows, C)`` arrays, updating ``s_re``/``s_im`` (int64) in
    place: ``u_s = shift_round(u << align, in_shift)``, the complex product rounded by ``fa``
    (> 0), the state saturated to ``[-hi, hi]`` and the output ``clip(shift_round(s_re,
    out_shift), lo, out_hi)``. Shifts come as ``shift_parts`` constants."""
    rows, c = u.shape
    for r in range(rows):
        for j in range(c):
            v = np.int64(u[r, j]) << align[j]
            us = ((((v << in_left[j]) >> in_s1[j]) + in_up[j]) >> in_up[j])
            sr = s_re[r, j]
            si = s_im[r, j]
            pr = (((a_re[j] * sr - a_im[j] * si) >> (fa - 1)) + 1) >> 1
            pi = (((a_re[j] * si + a_im[j] * sr) >> (fa - 1)) + 1) >> 1
            nr = min(max(pr + us, -hi), hi)
            ni = min(max(pi, -hi), hi)
            s_re[r, j] = nr
            s_im[r, j] = ni
            y = ((((nr << out_left[j]) >> out_s1[j]) + out_up[j]) >> out_up[j])
            out[r, j] = min(max(y, lo[j]), out_hi[j])


@lru_cache(maxsize=1)
def _compiled():
    try:
        import numba
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    try:
        return numba.njit(cache=True, nogil=True, error_model="numpy")(recurrent_rows)
    except RuntimeError:  # pragma: no cover - no writable cache location
        return numba.njit(cache=False, nogil=True, error_model="numpy")(recurrent_rows)


def _reset_if_stale(state, batch: int, frame: tuple):
    """``state`` unless it belongs to another batch or frame size (then ``None``: zeros)."""
    if state is None:
        return None
    first = state[0] if isinstance(state, tuple) else state
    if first.shape[0] != batch or tuple(first.shape[-len(frame):]) != frame:
        return None
    return state


class BufferConvStep:
    """A ``buffer_conv`` op on the compiled plan (see the module docstring)."""

    def __init__(self, op: Op, plan):
        from fixedq.engine.fast.plan import _NeuralStep  # (plan imports this module)
        from fixedq.engine.kernels import NeuralPlan

        self.op, self.model = op, plan.model
        a, r = op.attrs, op.arrays
        self.k = int(a["kernel_size"])
        self.depthwise = bool(a.get("depthwise"))
        self.inner = None
        if not self.depthwise:
            kernel = np.asarray(r["kernel"], np.int64)
            k, c, f = kernel.shape
            arrays = {key: r[key] for key in ("bias", "multiplier", "shift", "out_lo",
                                              "out_hi")}
            arrays["kernel"] = kernel.reshape(k * c, f)
            if r.get("in_align") is not None:
                arrays["in_align"] = np.tile(np.asarray(r["in_align"], np.int64), k)
            attrs = {key: a[key] for key in ("acc_lo", "acc_hi", "accum_dtype") if key in a}
            if "accum_bound" in a:
                attrs["accum_bound"] = a["accum_bound"]
            attrs["type"] = "dense"
            self.dense_op = Op(op.name, "neural", list(op.inputs), attrs, arrays)
            step = _NeuralStep(self.dense_op, NeuralPlan(self.dense_op))
            if plan.mode == "event":
                from fixedq.engine.fast.events import EventStep

                event = EventStep(step)
                step = event if event.ok else step
            self.inner = step

    def __call__(self, xs):
        x = xs[0]
        want = self.op.attrs.get("frame_shape")
        if want is not None and list(x.shape[1:]) != list(want):
            raise ValueError(f"op {self.op.name!r} (buffer_conv) expects frames of shape "
                             f"(N, {', '.join(map(str, want))}), got {x.shape}")
        states = self.model.states
        fifo = _reset_if_stale(states.get(self.op.name), x.shape[0], x.shape[1:])
        if fifo is None:
            fifo = np.zeros((x.shape[0], self.k - 1, *x.shape[1:]), x.dtype)
        window = np.concatenate([fifo, x[:, None]], axis=1)  # (N, k, ..., C), oldest first
        states[self.op.name] = window[:, 1:]
        if self.inner is not None:
            if hasattr(self.inner, "window"):  # event mode: the window's events, in place
                y = self.inner.window(window.reshape(x.shape[0], self.k, -1, x.shape[-1]))
                if y is not None:
                    return y.reshape(*x.shape[:-1], -1)
                step = self.inner.dense
            else:
                step = self.inner
            stacked = np.moveaxis(window, 1, -2).reshape(*x.shape[:-1], -1)  # (..., k*C)
            return step(stacked)
        win = aligned_input(self.op, window.astype(np.int64))
        kernel = self.op.arrays["kernel"]
        acc = (win * kernel.reshape((1, self.k) + (1,) * (x.ndim - 2) + (-1,))).sum(axis=1)
        return neural_output(self.op, acc)


class RecurrentStep:
    """A ``recurrent`` op on the compiled plan (see the module docstring)."""

    def __init__(self, op: Op, plan):
        from fixedq.engine.fast.plan import _vec, narrow_dtype, shift_parts

        self.op, self.model = op, plan.model
        r = op.arrays
        self.fa = int(op.attrs["coef_frac"])
        self.consts = {}
        self._parts = (_vec, shift_parts)
        self.hi = int(np.asarray(r["state_hi"]).reshape(-1)[0])
        self.dtype = narrow_dtype(r["out_lo"], r["out_hi"])
        self.ok = self.fa >= 1 and np.asarray(r["state_hi"]).size == 1

    def _build(self, c):
        vec, shift_parts = self._parts
        r = self.op.arrays
        align = vec(r.get("in_align", 0), c)
        vs = [vec(r[key], c) for key in ("a_re", "a_im", "out_lo", "out_hi")]
        ins, outs = shift_parts(r["in_shift"], c), shift_parts(r["out_shift"], c)
        if align is None or any(v is None for v in vs) or ins is None or outs is None \
                or np.any(align < 0) or np.any(align > 40):
            return None
        return align, ins, outs, vs

    def __call__(self, xs):
        x = xs[0]
        nb = _compiled() if jit.requested() else None
        c = x.shape[-1] if x.ndim > 1 else 0
        consts = self.consts.setdefault(c, self._build(c) if c and self.ok else None)
        states = self.model.states
        state = _reset_if_stale(states.get(self.op.name), x.shape[0], x.shape[1:])
        if nb is None or consts is None or x.size == 0:
            from fixedq.engine.recurrent import recurrent_step

            y, states[self.op.name] = recurrent_step(
                self.op, aligned_input(self.op, x.astype(np.int64)), state)
            return y
        if state is None:
            state = (np.zeros(x.shape, np.int64), np.zeros(x.shape, np.int64))
        s_re, s_im = (np.array(s, np.int64, copy=True) for s in state)
        align, ins, outs, (a_re, a_im, lo, hi) = consts
        out = np.empty(x.shape, self.dtype)
        nb(np.ascontiguousarray(x).reshape(-1, c), align, *ins, s_re.reshape(-1, c),
           s_im.reshape(-1, c), a_re, a_im, self.fa, self.hi, *outs, lo, hi,
           out.reshape(-1, c))
        states[self.op.name] = (s_re, s_im)
        return out


def stateful_step(op: Op, plan):
    """The compiled step of a stateful op kind, or the reference kernel for others."""
    if op.kind == "buffer_conv":
        return BufferConvStep(op, plan)
    if op.kind == "recurrent":
        return RecurrentStep(op, plan)
    return lambda xs: run_op(op, [v.astype(np.int64, copy=False) for v in xs])
