"""Export an integer engine program to a standard ONNX model, exact on every element.

:func:`to_onnx` builds the graph, :func:`export_onnx` writes it (atomically). onnxruntime runs
the result with outputs **equal** to :meth:`fixedq.engine.Model.predict` (float32 ``v·2^-f``,
or the int64 ``v`` with ``output="int"``) on every element. How it stays exact
(docs/interop.md):

- Tensors between ops hold the engine's integers ``v`` as ``double``. Every op's static bound
  (per channel, from the ranges the ops clip to and the integer weights) is checked below
  2^53, so every value, product and partial sum is an exactly representable integer; a program
  whose bound is not (hand-made files) is refused with a ``ValueError`` naming the op.
- Linear ops compute sums of integer products in ``float`` when the op's bound
  ``max_o Σ|w|·max|x|`` is below 2^24 and in ``double`` otherwise: every partial sum, in any
  order and blocking (with or without FMA), is a sub-sum of that bound, so it is an exact
  integer. conv2d in float is onnxruntime's ``Conv`` (NCHW, between two ``Transpose``; its CPU
  kernels sum products directly: im2col + GEMM, direct and NCHWc convolutions, no Winograd or
  FFT); when the bound passes 2^24, the input is split as ``x = x_hi·2^s + x_lo``
  (``x_lo = x - floor(x·2^-s)·2^s`` in ``[0, 2^s)``) with ``s`` chosen from the static bounds
  so that each part's ``Conv``/``MatMul`` is float-exact, and the two results are combined in
  double; when no such split exists, im2col (``Slice`` + ``Concat``) and a ``double``
  ``MatMul``. Depthwise: per-tap ``Mul`` + ``Sum``; transposed conv: ``MatMul`` per tap,
  zero-upsampled with ``Pad``/``Reshape``, summed; dense: ``MatMul``.
- Requantization ``clip(shift_round(v·M + O, S), lo, hi)`` is ``Floor(v·(M·2^-S) + (O·2^-S +
  1/2))`` in ``double`` when the engine's own float64 argument holds per channel
  (``|v·M| + |O| + 2^(S-1) <= 2^53``; :func:`fixedq.engine.kernels.float_requant_ok`), else
  the int64 form of eq. 5: ``Mul``/``Add`` in ``int64`` and floor divisions by powers of two
  written as ``(w - Mod(w, 2^k)) / 2^k`` (exact). Transformer ops (eqs. 29-34) run in int64
  step by step as :mod:`fixedq.engine.transformer_ops`. The input quantizer rounds with
  ``floor(x) + [x - floor(x) >= 1/2]`` (eq. 2: the literal ``floor(x + 1/2)`` is wrong at
  ``0.49999999999999994``).

Nothing here imports TensorFlow. ``onnx`` is imported when an export runs.

Example:
    >>> import fixedq.engine as fe, fixedq.interop                     # doctest: +SKIP
    >>> fixedq.interop.export_onnx(fe.load("model.fqe"), "model.onnx")  # doctest: +SKIP
    >>> import onnxruntime as ort                                       # doctest: +SKIP
    >>> sess = ort.InferenceSession("model.onnx")                       # doctest: +SKIP
    >>> y = sess.run(None, {"input": x})[0]   # == engine.predict(x)     # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from fixedq.engine.kernels import conv_geometry, transpose_geometry
from fixedq.engine.model import Model
from fixedq.engine.ops import Op, run_op

#: ONNX opset of the exported models (onnxruntime >= 1.13 runs it).
OPSET = 17
#: ONNX IR version written (the one of opset 17; older runtimes read it).
IR_VERSION = 8
#: Engine op kinds :func:`to_onnx` exports; any other kind is a ``ValueError`` naming the op.
EXPORTABLE_KINDS = ("input", "neural", "affine", "gap", "avgpool", "add", "mul", "shift",
                    "concat", "clip", "maxpool", "gmp", "pad", "upsample", "reshape", "permute",
                    "slice", "identity", "shiftmax", "attention", "attention_softmax",
                    "madnorm", "layernorm", "class_token", "add_pos", "extract_token", "table",
                    "softmax")
OUTPUTS = ("float", "int")
INPUT_NAME = "input"

F32_EXACT = 2.0**24
F64_EXACT = 2.0**53
_MARGIN = 1.0 + 2.0**-30  # bounds are computed in float64: keep a relative safety margin


def _below(bound, limit: float) -> bool:
    return float(np.max(np.asarray(bound, dtype=np.float64), initial=0.0)) * _MARGIN < limit


def _per_channel(a, channels: int | None = None) -> np.ndarray:
    """|a| reduced to its last axis (a per-channel bound vector)."""
    a = np.abs(np.asarray(a, dtype=np.float64))
    v = a.reshape(-1) if a.ndim <= 1 else a.reshape(-1, a.shape[-1]).max(axis=0)
    if channels is not None:
        v = np.broadcast_to(v, (channels,)) if v.size in (1, channels) else \
            np.full(channels, v.max(initial=0.0))
    return v


def _load_onnx():
    try:
        import onnx
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("exporting to ONNX needs the 'onnx' package: "
                          "pip install \"fixedq[onnx]\"") from err
    return onnx


class _Graph:
    """Nodes and initializers of one ONNX graph, with unique names."""

    def __init__(self, onnx):
        self.onnx = onnx
        self.nodes: list = []
        self.inits: list = []
        self.count = 0
        self._consts: dict = {}

    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{hint}__{self.count}"

    def const(self, value, dtype, hint: str = "c") -> str:
        arr = np.array(value, dtype=dtype, order="C")  # (0-d stays 0-d)
        key = None
        if arr.size <= 16:
            key = (arr.dtype.str, arr.shape, arr.tobytes())
            if key in self._consts:
                return self._consts[key]
        name = self.fresh(hint)
        self.inits.append(self.onnx.numpy_helper.from_array(arr, name))
        if key is not None:
            self._consts[key] = name
        return name

    def node(self, op_type: str, inputs, hint: str, output: str | None = None, **attrs) -> str:
        out = output or self.fresh(hint)
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [out],
                                                     name=self.fresh(op_type), **attrs))
        return out


class _Exporter:
    def __init__(self, model: Model, output: str):
        self.model = model
        self.output = output
        self.onnx = _load_onnx()
        self.g = _Graph(self.onnx)
        self.t: dict[str, str] = {}  # engine tensor -> ONNX value (double)
        self.b: dict[str, np.ndarray] = {}  # engine tensor -> per-channel bound of |v|
        self.shapes: dict[str, tuple] = {}

    # ------------------------------------------------------------------ checks
    def check(self) -> None:
        for op in self.model.ops:
            if op.kind not in EXPORTABLE_KINDS:
                detail = "an unknown kind" if op.kind not in _known_kinds() else \
                    "not supported by the ONNX export yet"
                raise ValueError(f"op {op.name!r} of kind {op.kind!r} cannot be exported to "
                                 f"ONNX ({detail}); exportable kinds: "
                                 f"{', '.join(EXPORTABLE_KINDS)}")
            rule = op.attrs.get("rounding", "half_up")
            extra = [k for k in op.arrays if k.startswith(("multiplier_in", "shift_in"))] \
                or (["multiplier"] if op.kind == "add" and "multiplier" in op.arrays else [])
            if rule != "half_up" or extra:  # imported programs (eq. 5b, TFLite's ADD)
                raise ValueError(f"op {op.name!r} ({op.kind}) cannot be exported to ONNX: "
                                 + (f"rounding {rule!r}" if rule != "half_up" else
                                    f"rescaled add inputs {extra}")
                                 + " (the export writes fixedq's half-up requantization only)")
        free = [i for i, d in enumerate(self.model.input_shape) if i and d is None]
        if free:
            raise ValueError(f"model {self.model.name!r} has free input axes {free} (input "
                             f"shape {self.model.input_shape}); the ONNX export needs a fixed "
                             "input shape apart from the batch axis")
        x = np.zeros((1, *self.model.input_shape[1:]), dtype=self.model.input_dtype)
        tensors = {}
        for op in self.model.ops:
            xs = [x] if op.kind == "input" else [tensors[i] for i in op.inputs]
            try:
                tensors[op.name] = run_op(op, xs)
            except Exception as err:
                raise ValueError(f"op {op.name!r} ({op.kind}) fails on an input of the "
                                 f"model's shape: {err}") from err
            self.shapes[op.name] = tuple(tensors[op.name].shape[1:])

    def fail(self, op: Op, why: str):
        raise ValueError(f"op {op.name!r} ({op.kind}) cannot be exported exactly: {why}")

    # ------------------------------------------------------------------ helpers
    def pow2(self, v: str, e, hint: str) -> str:
        e = np.asarray(e, dtype=np.int64)
        if not np.any(e):
            return v
        return self.g.node("Mul", [v, self.g.const(np.ldexp(1.0, e), np.float64)], hint)

    def clip(self, v: str, lo, hi, hint: str, dtype=np.float64) -> str:
        lo, hi = np.asarray(lo), np.asarray(hi)
        if lo.size == 1 and hi.size == 1:
            return self.g.node("Clip", [v, self.g.const(lo.reshape(()), dtype),
                                        self.g.const(hi.reshape(()), dtype)], hint)
        v = self.g.node("Max", [v, self.g.const(lo, dtype)], hint)
        return self.g.node("Min", [v, self.g.const(hi, dtype)], hint)

    def requant(self, op: Op, v: str, bound, shift, lo, hi, mult=None, offset=None) -> str:
        """``clip(shift_round(v·M + O, S), lo, hi)`` of the double tensor ``v`` (|v| <= bound
        per channel), exact: in double when provable, else in int64."""
        g, hint = self.g, op.name
        s = np.asarray(shift, dtype=np.int64)
        m = np.ones(1, np.int64) if mult is None else np.asarray(mult, dtype=np.int64)
        o = np.zeros(1, np.int64) if offset is None else np.asarray(offset, dtype=np.int64)
        if np.any(s > 63) or np.any(s < -62):
            self.fail(op, f"shifts outside [-62, 63] ({s.min()}..{s.max()})")
        # per element of the broadcast (M, O, S) arrays: per channel, or per position and
        # channel (average pooling's 'same' border divisors)
        p = np.asarray(bound, dtype=np.float64) * np.abs(m.astype(np.float64)) \
            + np.abs(o.astype(np.float64))
        p, ss = np.broadcast_arrays(p, s)
        need = np.where(ss > 0, p + np.ldexp(1.0, np.maximum(ss, 1) - 1),
                        2 * p * np.ldexp(1.0, -np.minimum(ss, 0)) + 1)
        need = np.where(p == 0, 0.0, need)
        if _below(need, F64_EXACT + 1):  # |Q| <= 2^53: the float64 identity of eq. 7 holds
            if not np.any(s) and mult is None and offset is None:
                y = v
            else:
                scale = m.astype(np.float64) * np.ldexp(1.0, -s)
                y = g.node("Mul", [v, g.const(scale, np.float64)], hint) \
                    if np.any(scale != 1) else v
                off = o.astype(np.float64) * np.ldexp(1.0, -s) + (0.5 if np.any(s) else 0.0)
                if np.any(off):
                    y = g.node("Add", [y, g.const(off, np.float64)], hint)
                if np.any(s):
                    y = g.node("Floor", [y], hint)
            return self.clip(y, lo, hi, hint)
        # int64: eq. 5 with floor divisions by powers of two
        w = g.node("Cast", [v], hint, to=self.onnx.TensorProto.INT64)
        if mult is not None:
            w = g.node("Mul", [w, g.const(m, np.int64)], hint)
        if offset is not None:
            w = g.node("Add", [w, g.const(o, np.int64)], hint)
        left = np.maximum(-s, 0)
        if np.any(left):
            w = g.node("Mul", [w, g.const(np.left_shift(np.int64(1), left), np.int64)], hint)
        first = np.minimum(np.maximum(s - 1, 0), 62)
        up = (s > 0).astype(np.int64)
        w = self.floordiv_pow2(w, first, hint)
        if np.any(up):
            w = g.node("Add", [w, g.const(up, np.int64)], hint)
            w = self.floordiv_pow2(w, up, hint)
        w = self.clip(w, lo, hi, hint, np.int64)
        return g.node("Cast", [w], hint, to=self.onnx.TensorProto.DOUBLE)

    def floordiv_pow2(self, w: str, k, hint: str) -> str:
        k = np.asarray(k, dtype=np.int64)
        if not np.any(k):
            return w
        d = self.g.const(np.left_shift(np.int64(1), k), np.int64)
        r = self.g.node("Mod", [w, d], hint, fmod=0)  # in [0, 2^k): the divisor's sign
        w = self.g.node("Sub", [w, r], hint)
        return self.g.node("Div", [w, d], hint)  # exact division

    def maxpool(self, v: str, shape, pool, strides, padding, dtype, hint: str) -> str:
        h, w = shape[0], shape[1]
        ho, *ph = conv_geometry(h, pool[0], strides[0], padding)
        wo, *pw = conv_geometry(w, pool[1], strides[1], padding)
        if any(ph) or any(pw):
            v = self.g.node("Pad", [v, self.g.const([0, ph[0], pw[0], 0, 0, ph[1], pw[1], 0],
                                                    np.int64),
                                    self.g.const(-np.inf, dtype)], hint, mode="constant")
        views = self.taps(v, pool, strides, (1, 1), (ho, wo), hint)
        return views[0] if len(views) == 1 else self.g.node("Max", views, hint)

    def taps(self, v: str, k, s, d, out, hint: str) -> list[str]:
        """The strided window of every kernel tap, tap-major (``a * kw + b``)."""
        views = []
        for a in range(k[0]):
            for b in range(k[1]):
                r0, c0 = a * d[0], b * d[1]
                views.append(self.g.node("Slice", [
                    v, self.g.const([r0, c0], np.int64),
                    self.g.const([r0 + (out[0] - 1) * s[0] + 1, c0 + (out[1] - 1) * s[1] + 1],
                                 np.int64),
                    self.g.const([1, 2], np.int64), self.g.const(list(s), np.int64)], hint))
        return views

    def cast(self, v: str, dtype) -> str:
        to = self.onnx.TensorProto.FLOAT if dtype == np.float32 else self.onnx.TensorProto.DOUBLE
        return self.g.node("Cast", [v], "cast", to=to)

    # ------------------------------------------------------------------ ops
    def op_input(self, op: Op, xs, bs):
        r = op.arrays
        onnx = self.onnx
        x = self.g.node("Cast", [INPUT_NAME], op.name, to=onnx.TensorProto.DOUBLE)
        x = self.pow2(x, r["frac"], op.name)
        x = self.clip(x, r["lo"], r["hi"], op.name)
        # eq. 2: floor(x) + [x - floor(x) >= 1/2], exact for every double
        fl = self.g.node("Floor", [x], op.name)
        frac = self.g.node("Sub", [x, fl], op.name)
        ge = self.g.node("GreaterOrEqual", [frac, self.g.const(0.5, np.float64)], op.name)
        ge = self.g.node("Cast", [ge], op.name, to=onnx.TensorProto.DOUBLE)
        y = self.g.node("Add", [fl, ge], op.name)
        return y, np.maximum(_per_channel(r["lo"]), _per_channel(r["hi"]))

    def op_neural(self, op: Op, xs, bs):
        a, r, g = op.attrs, op.arrays, self.g
        typ = a["type"]
        if a.get("conv1d"):
            return self.conv1d(op, xs, bs)
        kernel = np.asarray(r["kernel"], dtype=np.int64)
        k = np.abs(kernel).astype(np.float64)
        cin = kernel.shape[0] if typ == "dense" else kernel.shape[3 if typ == "transpose" else 2]
        align = np.broadcast_to(np.asarray(r.get("in_align", 0), np.int64), (cin,))
        xb = np.broadcast_to(bs[0], (cin,)) * np.ldexp(1.0, align)
        if typ == "dense":
            per_out = (k * xb[:, None]).sum(axis=0)
        elif typ == "conv2d":
            per_out = (k * xb[:, None]).sum(axis=(0, 1, 2))
        elif typ == "depthwise":
            per_out = (k.sum(axis=(0, 1)) * xb[:, None]).reshape(-1)
        else:  # transpose (kh, kw, out, in)
            per_out = (k * xb).sum(axis=(0, 1, 3))
        cout = per_out.size
        bias = np.asarray(r["bias"], dtype=np.int64)
        top = per_out + _per_channel(bias, cout)
        if not _below(top, F64_EXACT):
            self.fail(op, f"its accumulator bound {float(top.max()):.4g} is not below 2^53 "
                          "(the engine computes it in int64; no exact float path exists)")
        dt = np.float32 if _below(per_out, F32_EXACT) else np.float64
        mult = np.asarray(r["multiplier"], dtype=np.int64)
        pool = a.get("pool")
        pool_first = bool(pool) and bool(np.all(mult >= 0)) and bias.ndim <= 1
        xa = self.pow2(xs[0], align, op.name)
        in_shape = self.shapes[op.inputs[0]]
        acc_shape = self.linear_shape(op)
        split = None
        if dt == np.float64 and typ in ("conv2d", "dense"):
            w_in = k.reshape(-1, cin, cout).sum(axis=0) if typ == "conv2d" else k  # (cin, cout)
            split = _limb_split(w_in, xb)
        if split is not None:  # x = x_hi·2^s + x_lo, each product float32-exact
            hi = self.g.node("Floor", [self.pow2(xa, -split, op.name)], op.name)
            lo = self.g.node("Sub", [xa, self.pow2(hi, split, op.name)], op.name)
            parts = [self.cast(self.linear(op, typ, self.cast(v, np.float32), kernel, in_shape,
                                           np.float32), np.float64) for v in (hi, lo)]
            acc = g.node("Add", [self.pow2(parts[0], split, op.name), parts[1]], op.name)
            dt = np.float64
        else:
            acc = self.linear(op, typ, self.cast(xa, dt), kernel, in_shape, dt)
        if pool_first:
            acc = self.maxpool(acc, acc_shape, pool["pool_size"], pool["strides"],
                               pool["padding"], dt, op.name)
        if dt == np.float32:
            acc = self.cast(acc, np.float64)
        top_attr = int(a.get("accum_bound", 1 << 62)) + int(np.abs(bias).max(initial=0))
        acc_clip = top_attr > a["acc_hi"] or -top_attr < a["acc_lo"]
        if acc_clip:
            if np.any(bias):
                acc = g.node("Add", [acc, g.const(bias, np.float64)], op.name)
            acc = self.clip(acc, a["acc_lo"], a["acc_hi"], op.name)
            amax = np.minimum(top, float(max(abs(a["acc_lo"]), abs(a["acc_hi"]))))
            y = self.requant(op, acc, amax, r["shift"], r["out_lo"], r["out_hi"], mult=mult)
        else:  # (acc + b)·M = acc·M + b·M: the bias joins the rounding offset
            y = self.requant(op, acc, per_out, r["shift"], r["out_lo"], r["out_hi"], mult=mult,
                             offset=bias * mult if np.any(bias) else None)
        if pool and not pool_first:
            y = self.maxpool(y, acc_shape, pool["pool_size"], pool["strides"],
                             pool["padding"], np.float64, op.name)
        return y, np.maximum(_per_channel(r["out_lo"]), _per_channel(r["out_hi"]))

    def conv1d(self, op: Op, xs, bs):
        """Conv1D as the engine runs it: a conv2d over a ``(1, steps)`` image (``Unsqueeze`` /
        ``Squeeze`` of axis 1 around the conv2d export)."""
        g, inp = self.g, op.inputs[0]
        x4 = g.node("Unsqueeze", [xs[0], g.const([1], np.int64)], op.name)
        steps = self.shapes[inp]
        self.shapes[inp] = (1, *steps)
        try:
            attrs = {k: v for k, v in op.attrs.items() if k != "conv1d"}
            y, bound = self.op_neural(dataclasses.replace(op, attrs=attrs), [x4, *xs[1:]], bs)
        finally:
            self.shapes[inp] = steps
        return g.node("Squeeze", [y, g.const([1], np.int64)], op.name), bound

    def linear_shape(self, op: Op):
        """Shape of the accumulators (before a fused pool): ``(Ho, Wo, Cout)`` or dense."""
        a = op.attrs
        shape = self.shapes[op.inputs[0]]
        kernel = op.arrays["kernel"]
        if a["type"] == "dense":
            return (*shape[:-1], kernel.shape[1])
        h, w = shape[0], shape[1]
        if a["type"] == "transpose":
            ho, _ = transpose_geometry(h, kernel.shape[0], a["strides"][0], a["padding"],
                                       a["dilation_rate"][0])
            wo, _ = transpose_geometry(w, kernel.shape[1], a["strides"][1], a["padding"],
                                       a["dilation_rate"][1])
            return (ho, wo, kernel.shape[2])
        ho, *_ = conv_geometry(h, kernel.shape[0], a["strides"][0], a["padding"],
                               a["dilation_rate"][0])
        wo, *_ = conv_geometry(w, kernel.shape[1], a["strides"][1], a["padding"],
                               a["dilation_rate"][1])
        cout = kernel.shape[3] * (kernel.shape[2] if a["type"] == "depthwise" else 1)
        return (ho, wo, cout)

    def linear(self, op: Op, typ, x, kernel, shape, dt) -> str:
        g, a, hint = self.g, op.attrs, op.name
        if typ == "dense":
            return g.node("MatMul", [x, g.const(kernel, dt, "kernel")], hint)
        s, d = tuple(a["strides"]), tuple(a["dilation_rate"])
        kh, kw = kernel.shape[:2]
        h, w, c = shape
        if typ == "transpose":
            return self.transpose(op, x, kernel, shape, dt)
        ho, *ph = conv_geometry(h, kh, s[0], a["padding"], d[0])
        wo, *pw = conv_geometry(w, kw, s[1], a["padding"], d[1])
        if typ == "conv2d" and dt == np.float32:  # onnxruntime's float Conv: direct sums
            xc = g.node("Transpose", [x], hint, perm=[0, 3, 1, 2])
            wc = g.const(np.transpose(kernel, (3, 2, 0, 1)), dt, "kernel")
            y = g.node("Conv", [xc, wc], hint, strides=list(s), dilations=list(d),
                       pads=[ph[0], pw[0], ph[1], pw[1]], kernel_shape=[kh, kw])
            return g.node("Transpose", [y], hint, perm=[0, 2, 3, 1])
        if any(ph) or any(pw):
            x = g.node("Pad", [x, g.const([0, ph[0], pw[0], 0, 0, ph[1], pw[1], 0], np.int64),
                               g.const(0, dt)], hint, mode="constant")
        if typ == "depthwise":
            mult = kernel.shape[3]
            if mult > 1:  # output channel c*mult + m reads input channel c
                x = g.node("Gather", [x, g.const(np.repeat(np.arange(c), mult), np.int64)],
                           hint, axis=3)
            views = self.taps(x, (kh, kw), s, d, (ho, wo), hint)
            prods = [g.node("Mul", [view, g.const(kernel[i // kw, i % kw].reshape(-1), dt)],
                            hint) for i, view in enumerate(views)]
            return prods[0] if len(prods) == 1 else g.node("Sum", prods, hint)
        views = self.taps(x, (kh, kw), s, d, (ho, wo), hint)
        cols = views[0] if len(views) == 1 else g.node("Concat", views, hint, axis=3)
        kmat = kernel.reshape(kh * kw * c, kernel.shape[3])
        return g.node("MatMul", [cols, g.const(kmat, dt, "kernel")], hint)

    def transpose(self, op: Op, x, kernel, shape, dt) -> str:
        """Transposed conv: ``y = x @ W`` per tap, each tap's result zero-upsampled by the
        strides, shifted to its offset and summed (the engine's scatter kernel)."""
        g, a, hint = self.g, op.attrs, op.name
        s, d = tuple(a["strides"]), tuple(a["dilation_rate"])
        kh, kw, cout, cin = kernel.shape
        h, w, _ = shape
        ho, pb = transpose_geometry(h, kh, s[0], a["padding"], d[0])
        wo, pl = transpose_geometry(w, kw, s[1], a["padding"], d[1])
        full_h = max((h - 1) * s[0] + (kh - 1) * d[0] + 1, pb + ho)
        full_w = max((w - 1) * s[1] + (kw - 1) * d[1] + 1, pl + wo)
        kmat = np.transpose(kernel, (3, 0, 1, 2)).reshape(cin, kh * kw * cout)
        y = g.node("MatMul", [x, g.const(kmat, dt, "kernel")], hint)
        parts = []
        for ta in range(kh):
            for tb in range(kw):
                i = ta * kw + tb
                t = g.node("Slice", [y, g.const([i * cout], np.int64),
                                     g.const([(i + 1) * cout], np.int64),
                                     g.const([3], np.int64)], hint)
                if s != (1, 1):
                    t = g.node("Unsqueeze", [t, g.const([2, 4], np.int64)], hint)
                    t = g.node("Pad", [t, g.const([0] * 8 + [s[0] - 1, 0, s[1] - 1, 0],
                                                  np.int64), g.const(0, dt)], hint,
                               mode="constant")
                    t = g.node("Reshape", [t, g.const([0, h * s[0], w * s[1], cout], np.int64)],
                               hint)
                r0, c0 = ta * d[0], tb * d[1]
                t = g.node("Pad", [t, g.const([0, r0, c0, 0, 0,
                                               max(0, full_h - r0 - h * s[0]),
                                               max(0, full_w - c0 - w * s[1]), 0], np.int64),
                                   g.const(0, dt)], hint, mode="constant")
                if r0 + h * s[0] > full_h or c0 + w * s[1] > full_w:  # trailing zeros only
                    t = g.node("Slice", [t, g.const([0, 0], np.int64),
                                         g.const([full_h, full_w], np.int64),
                                         g.const([1, 2], np.int64)], hint)
                parts.append(t)
        total = parts[0] if len(parts) == 1 else g.node("Sum", parts, hint)
        return g.node("Slice", [total, g.const([pb, pl], np.int64),
                                g.const([pb + ho, pl + wo], np.int64),
                                g.const([1, 2], np.int64)], hint)

    def op_affine(self, op: Op, xs, bs):
        r = op.arrays
        y = self.requant(op, xs[0], bs[0], r["shift"], r["out_lo"], r["out_hi"],
                         mult=r["multiplier"], offset=r["offset"])
        return y, np.maximum(_per_channel(r["out_lo"]), _per_channel(r["out_hi"]))

    def op_gap(self, op: Op, xs, bs):
        r = op.arrays
        shape = self.shapes[op.inputs[0]]  # (H, W, C) or (steps, C): sum all but channels
        acc = self.g.node("ReduceSum", [xs[0], self.g.const(list(range(1, len(shape))),
                                                            np.int64)], op.name, keepdims=0)
        y = self.requant(op, acc, bs[0] * int(np.prod(shape[:-1])), r["shift"], r["out_lo"],
                         r["out_hi"], mult=r["multiplier"])
        return y, np.maximum(_per_channel(r["out_lo"]), _per_channel(r["out_hi"]))

    def op_avgpool(self, op: Op, xs, bs):
        """Exact window sums (zero padding for 'same') + requantization by the per-channel or
        per-position ``(M, S)`` of 1/count (eq. 26b)."""
        a, r, g = op.attrs, op.arrays, self.g
        pool, strides = tuple(a["pool_size"]), tuple(a["strides"])
        h, w = self.shapes[op.inputs[0]][:2]
        ho, *ph = conv_geometry(h, pool[0], strides[0], a["padding"])
        wo, *pw = conv_geometry(w, pool[1], strides[1], a["padding"])
        v = xs[0]
        if any(ph) or any(pw):
            v = g.node("Pad", [v, g.const([0, ph[0], pw[0], 0, 0, ph[1], pw[1], 0], np.int64),
                               g.const(0.0, np.float64)], op.name, mode="constant")
        views = self.taps(v, pool, strides, (1, 1), (ho, wo), op.name)
        acc = views[0] if len(views) == 1 else g.node("Sum", views, op.name)
        bound = bs[0] * (pool[0] * pool[1])
        if not _below(bound, F64_EXACT):
            self.fail(op, "its window sums can reach 2^53")
        y = self.requant(op, acc, bound, r["shift"], r["out_lo"], r["out_hi"],
                         mult=r["multiplier"])
        return y, np.maximum(_per_channel(r["out_lo"]), _per_channel(r["out_hi"]))

    def op_mul(self, op: Op, xs, bs):
        """Eq. 46: the exact product (broadcasting as the engine), rounding shift, clip."""
        r = op.arrays
        c0, c1 = bs[0].size, bs[1].size
        chan = max(c0, c1)
        bound = np.broadcast_to(bs[0], (chan,)) * np.broadcast_to(bs[1], (chan,)) \
            if c0 in (1, chan) and c1 in (1, chan) else np.array([bs[0].max() * bs[1].max()])
        if not _below(bound, F64_EXACT):
            self.fail(op, "its products can reach 2^53")
        prod = self.g.node("Mul", [xs[0], xs[1]], op.name)
        y = self.requant(op, prod, bound, r["shift"], r["out_lo"], r["out_hi"])
        return y, np.maximum(_per_channel(r["out_lo"]), _per_channel(r["out_hi"]))

    def op_gmp(self, op: Op, xs, bs):
        rank = len(self.shapes[op.inputs[0]]) + 1
        y = self.g.node("ReduceMax", [xs[0]], op.name, axes=list(range(1, rank - 1)),
                        keepdims=0)
        return y, bs[0]

    def op_pad(self, op: Op, xs, bs):
        pads = [[int(p) for p in pair] for pair in op.attrs["pads"]]
        begin = [0, *(p[0] for p in pads), 0]
        end = [0, *(p[1] for p in pads), 0]
        y = self.g.node("Pad", [xs[0], self.g.const(begin + end, np.int64),
                                self.g.const(0.0, np.float64)], op.name, mode="constant")
        return y, bs[0]

    def op_upsample(self, op: Op, xs, bs):
        """Nearest neighbour: (N, H, 1, W, 1, C) expanded to (N, H, sh, W, sw, C)."""
        sh, sw = (int(v) for v in op.attrs["size"])
        h, w, c = self.shapes[op.inputs[0]]
        g = self.g
        v = g.node("Reshape", [xs[0], g.const([0, h, 1, w, 1, c], np.int64)], op.name)
        v = g.node("Expand", [v, g.const([1, 1, sh, 1, sw, 1], np.int64)], op.name)
        y = g.node("Reshape", [v, g.const([0, h * sh, w * sw, c], np.int64)], op.name)
        return y, bs[0]

    def op_add(self, op: Op, xs, bs):
        r = op.arrays
        terms = [self.pow2(x, r[f"align{i}"], op.name) for i, x in enumerate(xs)]
        bound = sum(b * np.ldexp(1.0, np.asarray(r[f"align{i}"], np.int64))
                    for i, b in enumerate(bs))
        if not _below(bound, F64_EXACT):
            self.fail(op, "its aligned sum can reach 2^53")
        acc = terms[0] if len(terms) == 1 else self.g.node("Sum", terms, op.name)
        y = self.requant(op, acc, bound, r["shift"], r["out_lo"], r["out_hi"])
        return y, np.maximum(_per_channel(r["out_lo"]), _per_channel(r["out_hi"]))

    def op_shift(self, op: Op, xs, bs):
        r = op.arrays
        y = self.requant(op, xs[0], bs[0], r["shift"], r["out_lo"], r["out_hi"])
        return y, np.maximum(_per_channel(r["out_lo"]), _per_channel(r["out_hi"]))

    def op_concat(self, op: Op, xs, bs):
        r, axis = op.arrays, int(op.attrs["axis"])
        rank = len(self.shapes[op.name]) + 1
        parts, bounds = [], []
        for i, (x, b) in enumerate(zip(xs, bs, strict=True)):
            if f"shift{i}" in r:
                x = self.requant(op, x, b, r[f"shift{i}"], r["out_lo"], r["out_hi"])
                b = np.maximum(_per_channel(r["out_lo"]), _per_channel(r["out_hi"]))
            parts.append(x)
            bounds.append(np.broadcast_to(b, (self.shapes[op.inputs[i]][-1],)))
        y = self.g.node("Concat", parts, op.name, axis=axis)
        if axis % rank == rank - 1:
            return y, np.concatenate(bounds)
        return y, np.maximum.reduce(bounds)

    def op_clip(self, op: Op, xs, bs):
        r = op.arrays
        y = self.clip(xs[0], r["lo"], r["hi"], op.name)
        return y, np.maximum(_per_channel(r["lo"]), _per_channel(r["hi"]))

    def op_maxpool(self, op: Op, xs, bs):
        a = op.attrs
        y = self.maxpool(xs[0], self.shapes[op.inputs[0]], a["pool_size"], a["strides"],
                         a["padding"], np.float64, op.name)
        return y, bs[0]

    def op_reshape(self, op: Op, xs, bs):
        shape = self.g.const([0, *op.attrs["target_shape"]], np.int64)
        return self.g.node("Reshape", [xs[0], shape], op.name), np.array([bs[0].max()])

    def op_permute(self, op: Op, xs, bs):
        dims = [int(d) for d in op.attrs["dims"]]
        y = self.g.node("Transpose", [xs[0]], op.name, perm=[0, *dims])
        return y, (bs[0] if dims[-1] == len(dims) else np.array([bs[0].max()]))

    def op_slice(self, op: Op, xs, bs):
        """ONNX ``Slice`` (a negative stride down to index 0 ends at INT64_MIN, which ONNX
        clamps to -1), then ``Squeeze`` of the integer-indexed axes."""
        a, g = op.attrs, self.g
        shrink = [int(v) for v in a.get("shrink", [])]
        n = len(a["begin"])
        ends = [int(e) if int(e) >= 0 else int(np.iinfo(np.int64).min) for e in a["end"]]
        y = g.node("Slice", [xs[0], g.const([int(b) for b in a["begin"]], np.int64),
                             g.const(ends, np.int64), g.const(list(range(1, n + 1)), np.int64),
                             g.const([int(v) for v in a["strides"]], np.int64)], op.name)
        if shrink:
            y = g.node("Squeeze", [y, g.const(shrink, np.int64)], op.name)
        c_in = self.shapes[op.inputs[0]][-1]
        bound = np.asarray(bs[0], dtype=np.float64).reshape(-1)
        if n in shrink:  # one channel left; the output's last axis is another input axis
            idx = int(a["begin"][-1])
            bound = np.array([bound[idx] if bound.size == c_in else bound.max(initial=0.0)])
        elif bound.size == c_in:  # per channel: the kept channels, in order
            bound = bound[list(range(int(a["begin"][-1]), int(a["end"][-1]),
                                     int(a["strides"][-1])))]
        return y, bound

    def op_identity(self, op: Op, xs, bs):
        return xs[0], bs[0]

    # ------------------------------------------------------------------ transformer ops
    # Computed in int64 step by step as fixedq/engine/transformer_ops.py does (eqs. 29-34):
    # int64 Mul/Add/MatMul are exact integer operations, floor divisions are written with Mod
    # (the divisor's sign) and an exact Div, per-element powers of two come from Pow(2.0, k)
    # in double (exact) cast to int64.

    def i64(self, v: str) -> str:
        return self.g.node("Cast", [v], "i64", to=self.onnx.TensorProto.INT64)

    def f64(self, v: str) -> str:
        return self.g.node("Cast", [v], "f64", to=self.onnx.TensorProto.DOUBLE)

    def ic(self, value) -> str:
        return self.g.const(value, np.int64)

    def shl(self, v: str, k) -> str:
        """``v << k`` (static ``k >= 0``) in int64."""
        k = np.asarray(k, dtype=np.int64)
        if not np.any(k):
            return v
        return self.g.node("Mul", [v, self.ic(np.left_shift(np.int64(1), k))], "shl")

    def pow2_var(self, k: str) -> str:
        """``2^k`` of an int64 tensor ``k`` in [0, 62] (exact through double)."""
        kd = self.f64(k)
        return self.i64(self.g.node("Pow", [self.g.const(2.0, np.float64), kd], "pow2"))

    def floordiv(self, w: str, d: str) -> str:
        """``floor(w / d)`` for int64 tensors, ``d > 0``."""
        r = self.g.node("Mod", [w, d], "fdiv", fmod=0)
        return self.g.node("Div", [self.g.node("Sub", [w, r], "fdiv"), d], "fdiv")

    def shift_round_i64(self, w: str, s, static: bool = True) -> str:
        """Eq. 5 on int64 ``w``: ``s`` static (array) or an int64 tensor (per element)."""
        g = self.g
        if static:
            s = np.asarray(s, dtype=np.int64)
            if np.any(s > 63):
                raise ValueError(f"shift {int(s.max())} > 63")
            w = self.shl(w, np.maximum(-s, 0))
            up = (s > 0).astype(np.int64)
            w = self.floordiv_pow2(w, np.minimum(np.maximum(s - 1, 0), 62), "sr")
            if np.any(up):
                w = self.floordiv_pow2(g.node("Add", [w, self.ic(up)], "sr"), up, "sr")
            return w
        zero = self.ic(0)
        left = g.node("Max", [g.node("Neg", [s], "sr"), zero], "sr")
        w = g.node("Mul", [w, self.pow2_var(left)], "sr")
        first = g.node("Min", [g.node("Max", [g.node("Sub", [s, self.ic(1)], "sr"), zero],
                                      "sr"), self.ic(62)], "sr")
        w = self.floordiv(w, self.pow2_var(first))
        up = self.i64(g.node("Greater", [s, zero], "sr"))
        w = g.node("Add", [w, up], "sr")
        return self.floordiv(w, self.pow2_var(up))

    def clip_i64(self, v: str, lo, hi) -> str:
        return self.clip(v, lo, hi, "clip", np.int64)

    def shiftmax_i64(self, d: str, score_frac, table, exp_bits, k_max, out_frac, out_hi):
        g = self.g
        mx = g.node("ReduceMax", [d], "sm", axes=[-1], keepdims=1)
        d = g.node("Sub", [d, mx], "sm")
        q = self.floordiv_pow2(d, score_frac, "sm")
        r = g.node("Sub", [d, self.shl(q, score_frac)], "sm")
        t = g.node("Gather", [self.ic(table), r], "sm", axis=0)
        sh = g.node("Min", [g.node("Neg", [q], "sm"), self.ic(exp_bits + 2)], "sm")
        e = self.shift_round_i64(t, sh, static=False)
        total = g.node("ReduceSum", [e, self.ic([-1])], "sm", keepdims=1)
        k = None
        for i in range(1, int(k_max) + 1):
            ge = self.i64(g.node("GreaterOrEqual", [total, self.ic(1 << i)], "sm"))
            k = ge if k is None else g.node("Add", [k, ge], "sm")
        k = k if k is not None else g.node("Mul", [total, self.ic(0)], "sm")
        sq = g.node("Mul", [total, total], "sm")
        two_k1 = g.node("Add", [g.node("Mul", [k, self.ic(2)], "sm"), self.ic(1)], "sm")
        k = g.node("Add", [k, self.i64(g.node("GreaterOrEqual", [sq, self.pow2_var(two_k1)],
                                                "sm"))], "sm")
        y = self.shift_round_i64(e, g.node("Sub", [k, self.ic(int(out_frac))], "sm"),
                                 static=False)
        return self.clip_i64(y, 0, int(out_hi))

    def op_shiftmax(self, op: Op, xs, bs):
        a, r = op.attrs, op.arrays
        d = self.shift_round_i64(self.shl(self.i64(xs[0]), r["in_align"]), int(a["in_shift"]))
        y = self.shiftmax_i64(d, int(a["score_frac"]), r["exp_table"], int(a["exp_bits"]),
                              int(a["k_max"]), int(a["prob_frac"]), int(a["prob_hi"]))
        return self.f64(y), np.array([float(a["prob_hi"])])

    def op_attention(self, op: Op, xs, bs):
        a, r = op.attrs, op.arrays
        return self.attention(op, xs, lambda sc: self.shiftmax_i64(
            sc, int(a["score_frac"]), r["exp_table"], int(a["exp_bits"]), int(a["k_max"]),
            int(a["prob_frac"]), int(a["prob_hi"])))

    def op_attention_softmax(self, op: Op, xs, bs):
        """Eq. 30b: the scores' integer softmax (eq. 39, table grid = score grid)."""
        a, r, g = op.attrs, op.arrays, self.g

        def probabilities(sc):
            mx = g.node("ReduceMax", [sc], op.name, axes=[-1], keepdims=1)
            t = g.node("Min", [g.node("Sub", [mx, sc], op.name),
                               self.ic(int(r["exp_table"].size) - 1)], op.name)
            e = g.node("Gather", [self.ic(r["exp_table"]), t], op.name, axis=0)
            total = g.node("ReduceSum", [e, self.ic([-1])], op.name, keepdims=1)
            num = g.node("Add", [g.node("Mul", [e, self.ic(1 << (int(a["prob_frac"]) + 1))],
                                        op.name), total], op.name)
            p = self.floordiv(num, g.node("Mul", [total, self.ic(2)], op.name))
            return self.clip_i64(p, 0, int(a["prob_hi"]))

        return self.attention(op, xs, probabilities)

    def attention(self, op: Op, xs, probabilities):
        a, r, g = op.attrs, op.arrays, self.g
        h = int(a["num_heads"])
        n_q, c = self.shapes[op.inputs[0]]
        heads = []
        for i, x in enumerate(xs):
            n, ci = self.shapes[op.inputs[i]]
            v = self.shl(self.i64(x), r[f"align{i}"])
            v = g.node("Reshape", [v, self.ic([0, n, h, ci // h])], op.name)
            heads.append(g.node("Transpose", [v], op.name, perm=[0, 2, 1, 3]))
        q, k, v = heads
        kt = g.node("Transpose", [k], op.name, perm=[0, 1, 3, 2])
        scores = g.node("MatMul", [q, kt], op.name)
        sc = g.node("Mul", [scores, self.ic(int(a["score_multiplier"]))], op.name)
        sc = self.clip_i64(self.shift_round_i64(sc, int(a["score_shift"])), a["acc_lo"],
                           a["acc_hi"])
        p = probabilities(sc)
        o = g.node("MatMul", [p, v], op.name)
        o = g.node("Transpose", [o], op.name, perm=[0, 2, 1, 3])
        o = g.node("Reshape", [o, self.ic([0, n_q, -1])], op.name)
        y = self.clip_i64(self.shift_round_i64(o, r["out_shift"]), r["out_lo"], r["out_hi"])
        return self.f64(y), np.maximum(_per_channel(r["out_lo"]), _per_channel(r["out_hi"]))

    def op_table(self, op: Op, xs, bs):
        """Eq. 38: Gather of the flat table at ``v + base`` (index clipped as the engine)."""
        r, g = op.arrays, self.g
        idx = g.node("Add", [self.i64(xs[0]), self.ic(r["base"])], op.name)
        idx = self.clip_i64(idx, 0, int(r["table"].size) - 1)
        y = g.node("Gather", [self.ic(r["table"]), idx], op.name, axis=0)
        return self.f64(y), np.maximum(np.abs(_per_channel(r["out_lo"])),
                                       np.abs(_per_channel(r["out_hi"])))

    def op_softmax(self, op: Op, xs, bs):
        """Eq. 39 in int64: aligned max, exp table, exact sum, floor division via Mod."""
        a, r, g = op.attrs, op.arrays, self.g
        v = self.shl(self.i64(xs[0]), r["in_align"])
        mx = g.node("ReduceMax", [v], op.name, axes=[-1], keepdims=1)
        t = self.shift_round_i64(g.node("Sub", [mx, v], op.name), int(a["shift"]))
        t = g.node("Min", [t, self.ic(int(r["exp_table"].size) - 1)], op.name)
        e = g.node("Gather", [self.ic(r["exp_table"]), t], op.name, axis=0)
        total = g.node("ReduceSum", [e, self.ic([-1])], op.name, keepdims=1)
        total = g.node("Max", [total, self.ic(1)], op.name)
        num = g.node("Add", [g.node("Mul", [e, self.ic(1 << (int(a["prob_frac"]) + 1))],
                                    op.name), total], op.name)
        p = self.floordiv(num, g.node("Mul", [total, self.ic(2)], op.name))
        y = self.clip_i64(p, int(a["out_lo"]), int(a["out_hi"]))
        return self.f64(y), np.array([float(a["out_hi"])])

    def op_madnorm(self, op: Op, xs, bs):
        a, r, g = op.attrs, op.arrays, self.g
        v = self.shl(self.i64(xs[0]), r["in_align"])
        dim = self.shapes[op.inputs[0]][-1]
        total = g.node("ReduceSum", [v, self.ic([-1])], op.name, keepdims=1)
        c = g.node("Sub", [g.node("Mul", [v, self.ic(dim)], op.name), total], op.name)
        den = g.node("ReduceSum", [g.node("Abs", [c], op.name), self.ic([-1])], op.name,
                     keepdims=1)
        den = g.node("Max", [g.node("Add", [den, self.ic(int(a["eps_int"]))], op.name),
                             self.ic(1)], op.name)
        num = g.node("Add", [g.node("Mul", [c, self.ic(2 * dim << int(a["norm_frac"]))],
                                    op.name), den], op.name)
        z = self.floordiv(num, g.node("Mul", [den, self.ic(2)], op.name))
        w = g.node("Add", [g.node("Mul", [z, self.ic(r["multiplier"])], op.name),
                           self.ic(r["offset"])], op.name)
        y = self.clip_i64(self.shift_round_i64(w, r["shift"]), r["out_lo"], r["out_hi"])
        return self.f64(y), np.maximum(_per_channel(r["out_lo"]), _per_channel(r["out_hi"]))

    def op_layernorm(self, op: Op, xs, bs):
        """Eq. 47 in int64: exact c and W, floor(log2 W) by comparisons, the mantissa shift,
        six integer Newton steps (all positive: Div is the floor) and the final correction,
        the rounded division by Mod + Div, the affine (28)."""
        a, r, g = op.attrs, op.arrays, self.g
        v = self.shl(self.i64(xs[0]), r["in_align"])
        dim = self.shapes[op.inputs[0]][-1]
        total = g.node("ReduceSum", [v, self.ic([-1])], op.name, keepdims=1)
        c = g.node("Sub", [g.node("Mul", [v, self.ic(dim)], op.name), total], op.name)
        sq = g.node("ReduceSum", [g.node("Mul", [c, c], op.name), self.ic([-1])], op.name,
                    keepdims=1)
        w = g.node("Max", [g.node("Add", [g.node("Mul", [sq, self.ic(dim)], op.name),
                                          self.ic(int(a["eps_int"]))], op.name),
                           self.ic(1)], op.name)
        log2 = None
        for i in range(1, 62):
            ge = self.i64(g.node("GreaterOrEqual", [w, self.ic(1 << i)], op.name))
            log2 = ge if log2 is None else g.node("Add", [log2, ge], op.name)
        shift = self.floordiv(g.node("Sub", [self.ic(61), log2], op.name), self.ic(2))
        n = g.node("Mul", [w, self.pow2_var(g.node("Mul", [shift, self.ic(2)], op.name))],
                   op.name)
        x = self.ic(1 << 31)
        for _ in range(6):
            x = g.node("Div", [g.node("Add", [x, g.node("Div", [n, x], op.name)], op.name),
                               self.ic(2)], op.name)
        x = g.node("Sub", [x, self.i64(g.node("Greater", [g.node("Mul", [x, x], op.name), n],
                                                op.name))], op.name)
        scale = self.pow2_var(g.node("Add", [shift, self.ic(int(a["norm_frac"]))], op.name))
        num = g.node("Mul", [g.node("Mul", [c, self.ic(dim)], op.name), scale], op.name)
        num = g.node("Add", [g.node("Mul", [num, self.ic(2)], op.name), x], op.name)
        z = self.floordiv(num, g.node("Mul", [x, self.ic(2)], op.name))
        out = g.node("Add", [g.node("Mul", [z, self.ic(r["multiplier"])], op.name),
                             self.ic(r["offset"])], op.name)
        y = self.clip_i64(self.shift_round_i64(out, r["shift"]), r["out_lo"], r["out_hi"])
        return self.f64(y), np.maximum(_per_channel(r["out_lo"]), _per_channel(r["out_hi"]))

    def op_class_token(self, op: Op, xs, bs):
        r, g = op.arrays, self.g
        x = self.clip_i64(self.shift_round_i64(self.i64(xs[0]), r["shift"]), r["out_lo"],
                          r["out_hi"])
        c = self.shapes[op.inputs[0]][-1]
        batch = g.node("Slice", [g.node("Shape", [x], op.name), self.ic([0]), self.ic([1])],
                       op.name)
        shape = g.node("Concat", [batch, self.ic([1, c])], op.name, axis=0)
        tok = g.node("Expand", [self.ic(np.asarray(r["token"]).reshape(1, 1, -1)), shape],
                     op.name)
        y = g.node("Concat", [tok, x], op.name, axis=1)
        bound = np.maximum(np.maximum(_per_channel(r["out_lo"]), _per_channel(r["out_hi"])),
                           _per_channel(r["token"]))
        return self.f64(y), bound

    def op_add_pos(self, op: Op, xs, bs):
        r, g = op.arrays, self.g
        acc = g.node("Add", [self.shl(self.i64(xs[0]), r["in_align"]), self.ic(r["pos"])],
                     op.name)
        y = self.clip_i64(self.shift_round_i64(acc, r["shift"]), r["out_lo"], r["out_hi"])
        return self.f64(y), np.maximum(_per_channel(r["out_lo"]), _per_channel(r["out_hi"]))

    def op_extract_token(self, op: Op, xs, bs):
        y = self.g.node("Gather", [xs[0], self.ic(int(op.attrs["token"]))], op.name, axis=1)
        return y, bs[0]

    # ------------------------------------------------------------------ whole model
    def build(self):
        onnx = self.onnx
        helper, tp = onnx.helper, onnx.TensorProto
        self.check()
        for op in self.model.ops:
            xs = [self.t[i] for i in op.inputs]
            bs = [self.b[i] for i in op.inputs]
            for j in range(len(xs)):  # asymmetric input: v = u + lo
                off = op.arrays.get(f"in_offset{j}")
                if off is not None:
                    xs[j] = self.g.node("Add", [xs[j], self.g.const(off, np.float64)], op.name)
                    bs[j] = bs[j] + _per_channel(off)
            y, bound = getattr(self, f"op_{op.kind}")(op, xs, bs)
            off = op.arrays.get("out_offset")
            if off is not None:  # stored as u = v - lo (eq. 37)
                y = self.g.node("Sub", [y, self.g.const(off, np.float64)], op.name)
                bound = bound + _per_channel(off)
            bound = np.asarray(bound, dtype=np.float64).reshape(-1)
            if not _below(bound, F64_EXACT):
                self.fail(op, "its output values can reach 2^53")
            self.t[op.name], self.b[op.name] = y, bound
        outputs, seen = [], set()
        for o in self.model.outputs:
            name = str(o["name"])
            while name in seen or name == INPUT_NAME:
                name += "_"
            seen.add(name)
            v = self.t[o["tensor"]]
            if o.get("offset"):
                v = self.g.node("Add", [v, self.g.const(o["offset"], np.float64)], name)
            shape = ["N", *self.shapes[o["tensor"]]]
            if self.output == "int":
                self.g.node("Cast", [v], name, output=name, to=tp.INT64)
                outputs.append(helper.make_tensor_value_info(name, tp.INT64, shape))
            else:  # float32(v) * float32(2^-f), as Model.predict / fixedq.engine.dequantize
                v = self.g.node("Cast", [v], name, to=tp.FLOAT)
                scale = np.ldexp(1.0, -np.asarray(o["frac"], np.int64)).astype(np.float32)
                self.g.node("Mul", [v, self.g.const(scale, np.float32)], name, output=name)
                outputs.append(helper.make_tensor_value_info(name, tp.FLOAT, shape))
        in_type = helper.np_dtype_to_tensor_dtype(np.dtype(self.model.input_dtype))
        inp = helper.make_tensor_value_info(INPUT_NAME, in_type,
                                            ["N", *self.model.input_shape[1:]])
        graph = helper.make_graph(self.g.nodes, _safe_name(self.model.name), [inp], outputs,
                                  initializer=self.g.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="fixedq", ir_version=IR_VERSION,
                                  doc_string=f"fixedq engine program {self.model.name!r} "
                                             f"({len(self.model.ops)} ops), output={self.output}")
        onnx.checker.check_model(model)
        return model


def _limb_split(w_in: np.ndarray, x_max: np.ndarray) -> int | None:
    """A split ``s`` of the input integers, ``x = x_hi·2^s + x_lo`` with ``x_lo`` in
    ``[0, 2^s)`` and ``|x_hi| <= ceil(max|x| / 2^s)``, such that the linear op on each part
    is float32-exact (``max_o Σ_c |w_c,o| · max|part_c| < 2^24``); ``None`` if no split
    works. ``w_in`` is ``Σ_taps |w|`` per (input channel, output channel)."""
    live = w_in.max(axis=1, initial=0.0) > 0  # channels no weight reads do not count
    for split in range(1, 25):
        lo = np.where(live, np.minimum(x_max, 2.0**split - 1), 0.0)
        hi = np.where(live, np.ceil(x_max / 2.0**split), 0.0)
        if _below(lo @ w_in, F32_EXACT) and _below(hi @ w_in, F32_EXACT):
            return split
    return None


def _known_kinds():
    from fixedq.engine.ops import KERNELS

    return KERNELS


def _safe_name(name: str) -> str:
    return name or "model"


def _as_model(program) -> Model:
    if isinstance(program, Model):
        return program
    if isinstance(program, (str, os.PathLike)):
        from fixedq.engine import load

        return load(program)
    raise TypeError(f"program must be a fixedq.engine.Model or the path of a .fqe file, got "
                    f"{type(program).__name__}")


def to_onnx(program, output: str = "float"):
    """The engine program as an ``onnx.ModelProto`` (opset 17), exact on every element.

    Args:
        program: a :class:`fixedq.engine.Model` or the path of a ``.fqe`` file.
        output: ``"float"``: float32 outputs equal to ``program.predict(x)``; ``"int"``: int64
            outputs equal to ``program.predict(x, output="int")``.

    The ONNX input is called ``"input"`` (shape ``(N, *input_shape)``, the program's input
    dtype); outputs carry the program's output names.

    Raises:
        ValueError: an op of a kind the export does not support (named with its kind), a free
            input axis, or a program whose integers cannot be carried exactly (named op).
        ImportError: ``onnx`` is not installed.

    Example:
        >>> proto = to_onnx(engine_model)                               # doctest: +SKIP
        >>> [o.name for o in proto.graph.output]                        # doctest: +SKIP
        ['dense_dequantizer']
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    return _Exporter(_as_model(program), output).build()


def export_onnx(program, path: str | os.PathLike, output: str = "float") -> None:
    """Write :func:`to_onnx` of ``program`` to ``path`` (atomically: on any error the file
    is not created, or an existing one is left as it was).

    Example:
        >>> export_onnx(fe.load("model.fqe"), "model.onnx")             # doctest: +SKIP
    """
    from fixedq.io.atomic import atomic_open

    proto = to_onnx(program, output)  # every error happens before the file is opened
    with atomic_open(path, "wb") as f:
        f.write(proto.SerializeToString())
