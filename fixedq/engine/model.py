"""The engine :class:`Model`: an ordered list of integer ops with float-in / float-out helpers.

``Model.predict`` quantizes float (or integer-valued) inputs with the input quantizer's integer
path, runs every op on ``int64`` tensors and dequantizes the outputs (``v * 2^-f`` in float32),
giving exactly what the quantized Keras model's ``predict`` returns. Nothing here imports
TensorFlow or Keras.

Example:
    >>> import fixedq.engine as fe                                     # doctest: +SKIP
    >>> model = fe.load("model.fqe")                                   # doctest: +SKIP
    >>> probs = model.predict(x, batch_size=100)                       # doctest: +SKIP
    >>> ints = model.predict(x, output="int")                          # doctest: +SKIP
    >>> print(model.summary())                                         # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from functools import partial

import numpy as np

from fixedq.engine.kernels import NeuralPlan
from fixedq.engine.ops import (
    Op,
    check_transpose_size,
    neural_output,
    op_error,
    reject_nan,
    run_op,
)
from fixedq.progress import Progress

MODES = ("dense", "event")
OUTPUTS = ("float", "int")


class Model:
    """An integer-only program made by :func:`fixedq.engine.convert` or :func:`fixedq.engine.load`.

    Attributes:
        ops: ops in execution order; ``ops[0]`` is the input quantizer.
        outputs: one dict per model output: ``tensor`` (op name), ``frac`` (per-channel
            frac_bits list), ``name`` (the Keras output name).
        input_shape: input shape with ``None`` for the batch axis (and any free axis).
        input_dtype: dtype the Keras model casts its input to (``float32`` usually).
        name: model name; ``target``: hardware profile name the model was checked against.
    """

    def __init__(self, ops: list[Op], outputs: list[dict], input_shape, input_dtype="float32",
                 name="model", target=None, meta=None):
        if not ops or ops[0].kind != "input":
            raise ValueError("an engine model starts with an 'input' op")
        self.ops = list(ops)
        self.outputs = [dict(o) for o in outputs]
        self.input_shape = tuple(None if d is None else int(d) for d in input_shape)
        self.input_dtype = str(input_dtype)
        self.name = str(name)
        self.target = target
        self.meta = dict(meta or {})
        known = {op.name for op in self.ops}
        for op in self.ops:
            missing = [t for t in op.inputs if t not in known]
            if missing:
                raise ValueError(f"op {op.name!r} reads unknown tensors {missing}")
        for out in self.outputs:
            if out["tensor"] not in known:
                raise ValueError(f"output {out['name']!r} reads unknown tensor {out['tensor']!r}")
        self._last_use = self._compute_last_use()
        self._plans: dict[str, NeuralPlan] = {}

    def _compute_last_use(self) -> dict[str, int]:
        last = {}
        for i, op in enumerate(self.ops):
            for t in op.inputs:
                last[t] = i
        for out in self.outputs:
            last[out["tensor"]] = len(self.ops)
        return last

    # ------------------------------------------------------------------ inputs
    def check_input(self, x, convert: bool = True) -> np.ndarray:
        """Validate ``x`` (shape and dtype) and return it as an array of the model's input dtype
        (``convert=False``: as it is, e.g. to convert batch by batch).

        Raises:
            TypeError: non-numeric data (bool, complex, strings, objects).
            ValueError: wrong rank/shape, or an empty batch.
        """
        arr = np.asarray(x)
        if arr.dtype.kind not in "iuf":
            raise TypeError(f"model {self.name!r} expects a numeric array (float or integer), "
                            f"got dtype {arr.dtype}")
        want = self.input_shape
        if arr.ndim != len(want) or any(w is not None and w != g
                                        for w, g in zip(want[1:], arr.shape[1:], strict=True)):
            raise ValueError(f"model {self.name!r} expects inputs of shape "
                             f"{_shape_str(want)}, got {arr.shape}")
        if not convert:
            return arr
        with np.errstate(over="ignore"):  # beyond the input dtype: ±inf, which saturates
            return arr.astype(self.input_dtype, copy=False)

    def quantize_inputs(self, x) -> np.ndarray:
        """Integers the input quantizer produces for float inputs ``x`` (int64)."""
        return run_op(self.ops[0], [self.check_input(x)])

    # ------------------------------------------------------------------ execution
    def _plan(self, op: Op):
        """The cached :class:`fixedq.engine.kernels.NeuralPlan` of a neural op."""
        plan = self._plans.get(op.name)
        if plan is None or plan.op is not op:
            plan = self._plans[op.name] = NeuralPlan(op)
        return plan

    def fast_plan(self, mode: str = "dense"):
        """The compiled path's :class:`fixedq.engine.fast.plan.FastPlan` for ``mode`` (built
        once per op list), or ``None`` when the compiled kernels are unavailable or disabled
        (numba missing, ``FIXEDQ_ENGINE_COMPILED=0``). Every rounding rule (eq. 5b, 7b, 7c)
        runs compiled; an op the plan has no compiled kernel for runs its reference kernel
        inside the plan."""
        from fixedq.engine.fast import jit

        if not jit.enabled():
            return None
        key = (tuple(id(op) for op in self.ops), mode)
        cache = self.__dict__.setdefault("_fast", {})
        if cache.get(mode, (None,))[0] != key:
            from fixedq.engine.fast.plan import FastPlan

            cache[mode] = (key, FastPlan(self, mode))
        return cache[mode][1]

    def run_batch(self, x, mode: str = "dense", stats: dict | None = None) -> list[np.ndarray]:
        """Integer outputs of one batch (no batching, no dequantization)."""
        return self._run_batch(x, mode, stats, checked=False)

    def _run_batch(self, x, mode, stats, checked, times=None) -> list[np.ndarray]:
        fast = self.fast_plan(mode) if stats is None else None
        if fast is not None:
            if not checked:
                reject_nan(x)
            return fast.run(x, times)
        t0 = time.perf_counter()
        tensors = {self.ops[0].name: run_op(self.ops[0], [x])}
        if times is not None:
            times[self.ops[0].name] = times.get(self.ops[0].name, 0.0) + time.perf_counter() - t0
        for i, op in enumerate(self.ops[1:], start=1):
            try:  # a crafted program fails with a ValueError naming the op, never a traceback
                t0 = time.perf_counter()
                y = self._run(op, [tensors[t] for t in op.inputs], mode, stats)
                if times is not None:
                    times[op.name] = times.get(op.name, 0.0) + time.perf_counter() - t0
            except Exception as err:
                raise op_error(op, err) from err
            tensors[op.name] = y
            for t in set(op.inputs):
                if self._last_use.get(t) == i:
                    del tensors[t]
        return [tensors[o["tensor"]] + np.asarray(o["offset"], np.int64) if o.get("offset")
                else tensors[o["tensor"]] for o in self.outputs]

    def _run(self, op: Op, xs: list[np.ndarray], mode: str, stats: dict | None) -> np.ndarray:
        """One op (ops[1:]) on its input tensors, with its input and output offsets."""
        from fixedq.engine import events

        for j in range(len(xs)):  # asymmetric input not folded into a bias: v = u + lo
            off = op.arrays.get(f"in_offset{j}")
            if off is not None:
                xs[j] = xs[j] + off
        conv1d = op.kind == "neural" and bool(op.attrs.get("conv1d"))
        if conv1d:  # Conv1D runs as a conv2d over a (1, steps) image
            check_neural_input(op, xs[0])
            xs[0] = xs[0][:, None]
        if stats is not None:
            events.record(stats, op, xs, mode == "event")
        if op.kind != "neural":
            y = run_op(op, xs)
        else:
            if not conv1d:
                check_neural_input(op, xs[0])
            check_transpose_size(op, xs[0])
            plan = self._plan(op)
            if mode == "event" and events.supports(op):
                y = events.run_neural_events(op, xs[0], stats, plan)
            else:
                y = plan.finish(plan.linear(xs[0]), partial(neural_output, op))
            if conv1d:
                y = y[:, 0]
        off = op.arrays.get("out_offset")
        return y if off is None else y - off  # asymmetric output stored as u = v - lo (eq. 37)

    def predict(self, x, batch_size: int = 32, output: str = "float", mode: str = "dense",
                verbose: bool = False):
        """Run the model; equals the quantized Keras model's ``predict`` bit for bit.

        Args:
            x: float or integer inputs, shape ``(N, *input_shape[1:])``.
            batch_size: samples per batch (memory grows with it, not with ``N``).
            output: ``"float"`` (dequantized float32, like Keras) or ``"int"`` (raw int64
                output integers; multiply by ``2^-frac`` of :attr:`outputs` to dequantize).
            mode: ``"dense"`` (BLAS-backed) or ``"event"`` (event-driven conv/dense; same
                outputs).
            verbose: print batch progress to stderr.

        Returns:
            One array, or a list for multi-output models.
        """
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        results = self._execute(x, batch_size, mode, None, verbose,
                                float_out=output == "float")
        return results[0] if len(results) == 1 else results

    def profile(self, x, batch_size: int = 32, mode: str = "dense") -> list[dict]:
        """Per-op wall time of ``predict(x)``: one dict per op in execution order with
        ``name``, ``kind``, ``type`` (neural type or ``""``), ``seconds`` and ``share`` (of the
        ops' total).

        Example:
            >>> rows = model.profile(x)                                # doctest: +SKIP
            >>> max(rows, key=lambda r: r["seconds"])["name"]          # doctest: +SKIP
            'block_1_expand'
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        times: dict[str, float] = {}
        self._execute(x, batch_size, mode, None, False, times)
        total = sum(times.values()) or 1.0
        return [{"name": op.name, "kind": op.kind, "type": op.attrs.get("type", ""),
                 "seconds": times.get(op.name, 0.0),
                 "share": times.get(op.name, 0.0) / total} for op in self.ops]

    def event_stats(self, x, batch_size: int = 32, mode: str = "event") -> list[dict]:
        """Per-op event statistics over ``x`` (see :mod:`fixedq.engine.events`)."""
        stats: dict = {}
        self._execute(x, batch_size, mode, stats, False)
        return [dict(name=op.name, kind=op.kind, **stats[op.name])
                for op in self.ops[1:] if op.name in stats]

    def _execute(self, x, batch_size, mode, stats, verbose, times=None,
                 float_out=False) -> list[np.ndarray]:
        """The outputs of ``x`` batch by batch: int64, or with ``float_out`` dequantized into
        float32 as each batch ends (:func:`dequantize`'s values, one pass, no int64 copy)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        arr = self.check_input(x, convert=False)
        n = arr.shape[0]
        if n == 0:
            raise ValueError("predict got an empty batch (0 samples)")
        # before any batch runs, the NaN count covers all of x; counted and converted batch by
        # batch so that no temporary grows with N (peak memory independent of N)
        if arr.dtype.kind == "f":
            nans = sum(int(np.count_nonzero(np.isnan(arr[i:i + batch_size])))
                       for i in range(0, n, batch_size))
            if nans:
                reject_nan(np.full(nans, np.nan))
        results = None
        scales = [_float_scale(o["frac"]) for o in self.outputs]
        bar = Progress(f"{self.name}: predict", total=n, unit="samples", enabled=verbose)
        for start in range(0, n, batch_size):
            with np.errstate(over="ignore"):  # beyond the input dtype: ±inf, which saturates
                xb = arr[start:start + batch_size].astype(self.input_dtype, copy=False)
            outs = self._run_batch(xb, mode, stats, True, times)
            if results is None:
                results = [np.empty((n, *o.shape[1:]), np.float32 if float_out else np.int64)
                           for o in outs]
            for r, o, scale in zip(results, outs, scales, strict=True):
                if float_out:
                    _scaled_into(o, scale, r[start:start + o.shape[0]])
                else:
                    r[start:start + o.shape[0]] = o
            bar.update(min(n, start + batch_size))
        bar.close()
        return results

    # ------------------------------------------------------------------ reporting
    def summary(self, print_fn=None) -> str:
        """A table of ops: kind, fused Keras layers, output bits/frac, weight bits, params."""
        rows = [("op", "kind", "layers", "output", "weights", "params")]
        total = 0
        for op in self.ops:
            params = sum(int(a.size) for k, a in op.arrays.items() if k in ("kernel", "bias"))
            total += params
            a = op.attrs
            out = ""
            if "value_bits" in a:
                sign = "s" if a.get("signed") else "u"
                bits = a["value_bits"] + (1 if a.get("signed") else 0)
                fr = a.get("out_frac", [])
                fr_s = str(fr[0]) if len(set(fr)) == 1 else f"{min(fr)}..{max(fr)}"
                out = f"{sign}{bits} f={fr_s}"
            detail = a.get("type", "")
            if a.get("pool"):
                detail += "+maxpool"
            wb = f"{a['weight_bits']}b {a['accum_dtype']}" if "weight_bits" in a else ""
            rows.append((op.name, f"{op.kind}{'/' + detail if detail else ''}",
                         ",".join(op.layers), out, wb, str(params) if params else ""))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"Engine model {self.name!r}  input {_shape_str(self.input_shape)} "
                 f"{self.input_dtype}" + (f"  target {self.target}" if self.target else "")]
        for j, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
            if j == 0:
                lines.append("-" * (sum(widths) + 2 * (len(widths) - 1)))
        lines.append(f"{len(self.ops)} ops, {total} integer parameters, outputs: "
                     + ", ".join(o["name"] for o in self.outputs))
        text = "\n".join(lines)
        if print_fn is not None:
            print_fn(text)
        return text

    def save(self, path: str | os.PathLike) -> None:
        """Write the single-file engine format (see :mod:`fixedq.engine.fileformat`)."""
        from fixedq.engine.fileformat import save

        save(self, path)

    def __repr__(self) -> str:
        return f"<fixedq.engine.Model {self.name!r}: {len(self.ops)} ops>"


def dequantize(v: np.ndarray, frac, out: np.ndarray | None = None) -> np.ndarray:
    """``v * 2^-f`` in float32 (per last-axis channel ``f``), as the Keras layers compute it:
    ``v`` rounded to float32 first, then the exact power-of-two scale. ``out``: a float32
    array of ``v``'s shape to write into (one pass over ``v``, whatever its integer dtype).

    Example:
        >>> dequantize(np.array([[3, -4]]), [1, 2]).tolist()
        [[1.5, -1.0]]
        >>> int(dequantize(np.array([2**24 + 1]), [0])[0])   # rounded to float32 first
        16777216
    """
    scale = _float_scale(frac)
    if out is None:
        return v.astype(np.float32) * scale
    return _scaled_into(v, scale, out)


def _float_scale(frac) -> np.ndarray:
    """``2^-f`` per channel in float32."""
    return np.ldexp(1.0, -np.asarray(frac, dtype=np.int64)).astype(np.float32)


def _scaled_into(v: np.ndarray, scale: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = float32(v) * scale`` in one pass (``v`` of any integer dtype)."""
    return np.multiply(v, scale, out=out, dtype=np.float32, casting="unsafe")


def check_neural_input(op: Op, x: np.ndarray) -> None:
    """A neural op's input has the rank its kernel needs (and its recorded ``in_shape``)."""
    dense = op.attrs["type"] == "dense"
    want = op.attrs.get("in_shape")
    bad = x.ndim < 2 if dense else x.ndim != (3 if op.attrs.get("conv1d") else 4)
    if want is not None:
        bad = bad or x.ndim != len(want) + 1 or any(
            w is not None and w != g for w, g in zip(want, x.shape[1:], strict=False))
    if bad:
        shape = _shape_str((None, *want)) if want is not None else \
            ("(N, ..., C)" if dense else
             "(N, W, C)" if op.attrs.get("conv1d") else "(N, H, W, C)")
        raise ValueError(f"op {op.name!r} ({op.attrs['type']}) expects inputs of shape "
                         f"{shape}, got {x.shape}")


def _shape_str(shape) -> str:
    return "(" + ", ".join("N" if i == 0 else ("?" if d is None else str(d))
                           for i, d in enumerate(shape)) + ")"


__all__ = ["Model", "dequantize"]
