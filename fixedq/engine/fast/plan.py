"""Per-model execution plan of the compiled dense path: one step per op, built once.

A :class:`FastPlan` turns each op of an engine :class:`~fixedq.engine.model.Model` into a step
that runs a compiled kernel (:mod:`fixedq.engine.fast.kernels`) when one exists for the op's
kind and settings, and the op's NumPy reference kernel otherwise (any kind, including kinds
added after this module: :func:`fixedq.engine.ops.run_op`). Differences from the reference
path, none of which changes an integer:

- Tensors between ops are kept in the **narrowest integer dtype** holding the producer's
  output range ``[out_lo, out_hi]`` (uint8 after a ReLU, int8, int16, ...); a reference step
  gets ``int64`` inputs, as before.
- **Requantization is fused** into the kernel producing the accumulators (conv2d/dense GEMM
  epilogue, direct depthwise kernel): bias, accumulator clip, ``shift_round(acc*M, S)`` and the
  output clip in ``int64`` scalar arithmetic, written straight to the narrow output.
- conv2d / dense: an im2col written directly as float32 (or float64) from the narrow input and
  one BLAS GEMM per alignment group, under the *batch's* per-channel bound exactly as
  :class:`fixedq.engine.kernels.NeuralPlan` proves it (float32 below 2^24, float64 below 2^53,
  else the int64 reference).
- depthwise (multiplier 1): a direct kernel with int32 accumulators when the batch bound is
  below 2^31, int64 below 2^62.
- A ``table`` op (eq. 38: swish, sigmoid, ...) whose input is a conv2d/dense/depthwise
  output used by nothing else is **fused into that step's epilogue** (the requantized row,
  then its table entries; no separate pass, no intermediate tensor); its own step passes the
  tensor on (its time shows under the producer in a profile).
- **Data-parallel micro-batches** (``FIXEDQ_ENGINE_THREADS``: a count, or ``auto``, the
  default: one thread or all the CPUs (at most 4), whichever runs the batch size faster on
  the machine as it is, measured as batches run): a batch runs as
  micro-batches on :data:`THREADS` worker threads, each through the whole program (the
  compiled kernels and onnxruntime release the GIL; every GEMM inside a worker is
  single-threaded). A micro-batch's outputs depend only on
  its own samples, so the integers do not depend on the split.

A step's preconditions are checked when the plan is built (shifts in ``[-62, 62]``, products
``|acc| * M * 2^left`` below 2^63, per-channel parameter vectors, no spatial bias map) or per
batch (bounds); whatever fails them runs the reference.

Example:
    >>> import numpy as np
    >>> from fixedq.engine.ops import Op
    >>> from fixedq.engine.model import Model
    >>> ops = [Op("in", "input", [], {}, {"frac": np.array([0]), "lo": np.array([-128]),
    ...                                   "hi": np.array([127])}),
    ...        Op("r", "clip", ["in"], {}, {"lo": np.array([0]), "hi": np.array([6])})]
    >>> m = Model(ops, [{"tensor": "r", "frac": [0], "name": "r"}], (None, 3))
    >>> FastPlan(m).run(np.array([[-3.0, 2.0, 9.0]]))[0].tolist()
    [[0, 2, 6]]
"""

from __future__ import annotations

import operator
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from functools import cache, partial

import numpy as np

from fixedq.engine import kernels as ref
from fixedq.engine.fast import int_gemm, jit, kernels
from fixedq.engine.ops import Op, check_transpose_size, neural_output, op_error, rounding_of, run_op
from fixedq.tensors.rounding import ROUND_LIMIT, fp32_scale

#: Largest im2col block (elements) built at once; larger batches run in chunks.
IM2COL_ELEMENTS = 1 << 22
#: Largest intermediate tensor (elements) of a micro-batch (see :meth:`FastPlan.run`).
MICRO_ELEMENTS = 1 << 22
INT32_EXACT = 2**31
INT64_SAFE = 2**62
#: Environment variable: worker threads of the data-parallel micro-batches (default 1: off).
THREADS_ENV = "FIXEDQ_ENGINE_THREADS"


def _threads_from_env() -> int:
    """``FIXEDQ_ENGINE_THREADS`` as a thread count in [1, 64], or 0 (unset, ``auto`` or a
    bad value): chosen per batch size by measuring (:class:`ThreadChoice`)."""
    raw = os.environ.get(THREADS_ENV, "auto").strip().lower()
    try:
        return 0 if raw == "auto" else min(64, max(1, int(raw)))
    except ValueError:
        return 0


#: Worker threads of the data-parallel micro-batches: a fixed count, or 0 (the default):
#: 1 or :data:`AUTO_THREADS`, whichever the plan measures faster for the batch size
#: (:class:`ThreadChoice`). A fixed count loses either way on a 2-core machine: MobileNetV2
#: 0.35 @ 96, batch 100, ran 1.6x faster on 2 workers than on one on an idle machine (55 vs
#: 91 ms) but 0.6-0.7x as fast under load (each GIL hand-off between the workers waits for
#: the OS to schedule the other thread).
THREADS = _threads_from_env()
#: The worker count :data:`THREADS` = 0 tries against one: the CPUs this process may use
#: (at most 4).
AUTO_THREADS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else (os.cpu_count() or 1))


class ThreadChoice:
    """The worker count of one batch size, chosen by measuring: the options take turns until
    each ran :data:`TRIES` times, then the one with the lowest recent wall time per sample
    runs (the minimum of its last :data:`WINDOW` calls: another process only ever makes a
    call slower), with the others tried again every :data:`EXPLORE` calls (the machine's
    load changes). The integers never depend on it.

    Example:
        >>> c = ThreadChoice((1, 2))
        >>> [c.pick() for _ in range(4)]
        [1, 2, 1, 2]
        >>> for t, sec in ((1, 0.010), (2, 0.020), (1, 0.011), (2, 0.006)):
        ...     c.record(t, sec)
        >>> [c.pick() for _ in range(3)]
        [2, 2, 2]
    """

    TRIES = 2
    WINDOW = 4
    EXPLORE = 16

    def __init__(self, options):
        self.options = tuple(options)
        self.samples: dict[int, list[float]] = {t: [] for t in self.options}
        self.calls = 0
        self._given = 0

    def pick(self) -> int:
        """The worker count of the next call."""
        self.calls += 1
        if self._given < self.TRIES * len(self.options):  # take turns first
            t = self.options[self._given % len(self.options)]
            self._given += 1
            return t
        known = [t for t in self.options if self.samples[t]]
        if not known:
            return self.options[0]
        best = min(known, key=lambda t: min(self.samples[t]))
        if self.calls % self.EXPLORE == 0:  # try another one now and then
            others = [t for t in self.options if t != best]
            return others[(self.calls // self.EXPLORE) % len(others)]
        return best

    def record(self, workers: int, seconds_per_sample: float) -> None:
        """A call's wall time per sample on ``workers`` (the last :data:`WINDOW` kept)."""
        window = self.samples.setdefault(workers, [])
        window.append(seconds_per_sample)
        del window[:-self.WINDOW]


#: Smallest batch (elements of its largest intermediate tensor) split over the workers.
PARALLEL_ELEMENTS = 1 << 16
#: Micro-batches per worker thread at least (as far as the batch has samples): the workers
#: take them from one queue, so a worker that the OS deschedules (2 shared cores) delays
#: only its current micro-batch.
CHUNKS = 3
#: Smallest GEMM (multiply-adds) that runs on :data:`int_gemm.THREADS` threads when it runs
#: alone (outside the workers, e.g. batch 1).
SOLO_GEMM_MACS = 1 << 24
#: conv2d/dense steps with at most this many multiply-adds per call run the direct kernel
#: (:func:`kernels.conv_rows`: no im2col, no GEMM library call); a GEMM call through
#: onnxruntime costs ~7-10 us before any arithmetic, more than a whole small layer of a
#: batch-1 frame (docs/engine.md, "The compiled dense path": measured crossover).
DIRECT_MACS = 1 << 17


class _Context(threading.local):
    solo = True  # False inside the data-parallel workers
    #: inside :meth:`FastPlan._run`: the backends it read once for all its steps (the
    #: environment switches are read once per batch, not once per op)
    active = False
    nb = None
    igemm = False


_CTX = _Context()


def _backend():
    """The compiled kernels (``jit.backend()``, read once per batch inside a plan run)."""
    return _CTX.nb if _CTX.active else jit.backend()


def _int_gemm_ok() -> bool:
    """``int_gemm.available()`` (read once per batch inside a plan run)."""
    return _CTX.igemm if _CTX.active else int_gemm.available()


@cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fixedq-engine")


def _in_worker(fn, *args):
    _CTX.solo = False
    return fn(*args)


def narrow_dtype(lo, hi) -> np.dtype:
    """Narrowest of uint8, int8, uint16, int16, int32, int64 holding ``[min lo, max hi]``.

    Example:
        >>> [str(narrow_dtype(*r)) for r in ((0, 255), (-128, 127), (-129, 0), (0, 2**40))]
        ['uint8', 'int8', 'int16', 'int64']
    """
    lo, hi = int(np.min(lo)), int(np.max(hi))
    for dt in (np.uint8, np.int8, np.uint16, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def _vec(a, c: int) -> np.ndarray | None:
    """``a`` as a contiguous int64 vector of length ``c`` (broadcast), or ``None``."""
    a = np.asarray(a, dtype=np.int64)
    if a.ndim > 1 or (a.ndim == 1 and a.size not in (1, c)):
        return None
    return np.ascontiguousarray(np.broadcast_to(a, (c,)))


def shift_parts(shift, c: int):
    """Branch-free constants of ``shift_round`` (see :mod:`.kernels`): ``(left, s1, up)``
    vectors, or ``None`` when a shift is outside ``[-62, 62]``.

    Example:
        >>> [v.tolist() for v in shift_parts(np.array([3, 0, -2]), 3)]
        [[0, 0, 2], [2, 0, 0], [1, 0, 0]]
    """
    s = _vec(shift, c)
    if s is None or np.any(s > 62) or np.any(s < -62):
        return None
    return (np.maximum(-s, 0), np.maximum(s - 1, 0), (s > 0).astype(np.int64))


def _product_top(mult, left) -> int:
    """``max |M| * 2^left`` over the channels (exact Python integer)."""
    return max((int(abs(m)) << int(sh) for m, sh in zip(mult, left, strict=True)), default=0)


def rule_code(rule: str, two_stage: bool = True) -> int | None:
    """The :data:`kernels.RULES` code of a rounding rule (eq. 5b), ``None`` if unknown.
    ``tflite`` is eq. 7b's two roundings where a multiplier requantizes (``two_stage``: the
    neural and gap ops) and half away from zero on a plain shift (as ``shift_round``).

    Example:
        >>> rule_code("half_even"), rule_code("tflite"), rule_code("tflite", False)
        (1, 3, 2)
    """
    if rule == "tflite" and not two_stage:
        return kernels.RULES["half_away"]
    return kernels.RULES.get(rule)


class _Requant:
    """Per-channel epilogue constants (:func:`kernels.requant_value`) of an op with
    ``multiplier/shift/out_lo/out_hi`` and the rounding rule ``rule`` (eq. 5b/7b/7c);
    ``post`` is an output offset subtracted after the clip."""

    def __init__(self, arrays, c: int, bias=None, acc_clip=False, acc_lo=0, acc_hi=0,
                 rule: str = "half_up", two_stage: bool = True, post=None):
        self.ok = False
        mult, shift, lo, hi = (_vec(arrays[k], c)
                               for k in ("multiplier", "shift", "out_lo", "out_hi"))
        bias = np.zeros(c, np.int64) if bias is None else _vec(bias, c)
        post = np.zeros(c, np.int64) if post is None else _vec(post, c)
        code = rule_code(rule, two_stage)
        if any(v is None for v in (mult, shift, lo, hi, bias, post)) or code is None:
            return
        zeros = np.zeros(c, np.int64)
        self.sc = np.zeros(c, np.float32)
        r2 = zeros
        if code == kernels.RULES["fp32"]:  # eq. 7c: float32 product, no integer product
            parts = (zeros, zeros, zeros)
            self.sc = np.ascontiguousarray(fp32_scale(mult, shift), dtype=np.float32)
        elif code == kernels.RULES["tflite"]:  # eq. 7b: (v << l)·M / 2^31, then >> r2
            left, r2 = np.maximum(31 - shift, 0), np.maximum(shift - 31, 0)
            if np.any(left > 62) or np.any(r2 > 62):
                return
            parts = (left, np.full(c, 30, np.int64), np.ones(c, np.int64))
        else:
            parts = shift_parts(shift, c)
            if parts is None:
                return
        self.mult, self.lo, self.hi, self.bias = mult, lo, hi, bias
        self.left = parts[0]
        self.fp32 = code == kernels.RULES["fp32"]
        self.q = np.ascontiguousarray(np.stack([mult, *parts, r2, lo, hi, post]))
        self.rule = code
        self.acc_clip, self.acc_lo, self.acc_hi = bool(acc_clip), int(acc_lo), int(acc_hi)
        self.dtype = narrow_dtype(lo - post, hi - post)
        self.tab = self.tbase = kernels.NO_TABLE
        self.ok = True

    def fuse_table(self, table: np.ndarray, base: np.ndarray) -> None:
        """Write ``table[clip(out + base[c], 0, len - 1)]`` (a fused ``table`` op, eq. 38)
        instead of the requantized integers."""
        self.tab, self.tbase, self.dtype = table, base, table.dtype

    def kernels(self, nb):
        """The compiled requantizing kernels of this rule (writing the fused table's entries
        when there is one)."""
        return (nb.table if self.tab.size else nb.rule)[self.rule]

    def product_ok(self, amax: int) -> bool:
        """No int64 wrap in the epilogue for accumulators up to ``amax`` in magnitude."""
        if self.fp32:
            return True
        top = self.__dict__.get("_top")
        if top is None:
            top = self._top = _product_top(self.mult, self.left)
        return int(amax) * top < 2**63

    def args(self):
        return (self.bias, self.acc_clip, self.acc_lo, self.acc_hi, self.q, self.sc,
                self.rule, self.tab, self.tbase)

    @property
    def plain(self) -> bool:
        """Half up (eq. 5/7) without an output offset: :meth:`half_up_args` describe it."""
        return self.rule == kernels.RULES["half_up"] and not np.any(self.q[7])

    def half_up_args(self):
        """``(bias, clip, acc_lo, acc_hi, M, left, s1, up, lo, hi)``: the epilogue constants of
        the half-up kernels that take them one by one (the event kernels); valid when
        :attr:`plain`."""
        q = self.q
        return (self.bias, self.acc_clip, self.acc_lo, self.acc_hi, q[0], q[1], q[2], q[3],
                q[5], q[6])


class _NeuralStep:
    """conv2d / depthwise / dense with the fused epilogue; reference otherwise."""

    def __init__(self, op: Op, nplan):
        self.op, self.nplan = op, nplan
        a, r = op.attrs, op.arrays
        self.type = a["type"]
        self.ref = partial(neural_output, op)
        k = nplan.kernel
        cout = k.shape[-1] if self.type != "depthwise" else k.shape[2] * k.shape[3]
        self.fast = self.type in ("conv2d", "dense") or (
            self.type == "depthwise" and k.shape[3] == 1)
        bias = np.asarray(r["bias"], np.int64)
        acc_lo, acc_hi = int(a["acc_lo"]), int(a["acc_hi"])
        # imported programs (eq. 37): a scalar input offset and an output offset, folded into
        # the kernels (the GEMM's zero point, the depthwise sum, the epilogue)
        off_in, off_out = r.get("in_offset0"), r.get("out_offset")
        self.xoff = int(np.asarray(off_in).ravel()[0]) if off_in is not None and np.size(
            off_in) and np.all(np.asarray(off_in) == np.asarray(off_in).ravel()[0]) else None
        self.handles_offsets = off_in is None or self.xoff is not None
        self.post = None if off_out is None else _vec(off_out, cout)
        if off_in is None or not self.handles_offsets:  # (per-channel: the plan adds them)
            self.xoff = 0
        if not self.handles_offsets:
            self.post = None
        self.rq = _Requant(r, cout, bias if bias.ndim <= 1 else None, nplan.acc_clip,
                           acc_lo, acc_hi, rounding_of(op), post=self.post)
        self.cout = cout
        #: a ``table`` op fused into the epilogue (:meth:`fuse_table`), else ``None``
        self.table = None
        if not self.rq.ok or bias.ndim > 1 or (off_out is not None and self.post is None):
            self._reference_only()
            return
        top = int(a.get("accum_bound", 1 << 62)) + int(np.abs(bias).max(initial=0))
        amax = min(top, max(abs(acc_lo), abs(acc_hi))) if nplan.acc_clip else top
        if not self.rq.product_ok(amax):
            self._reference_only()
            return
        self.pool = a.get("pool")
        self.gemm = None
        self._routes: dict = {}  # (input dtype, int GEMM on) -> route (see _static_route)
        self._geo: dict = {}  # input (H, W) -> geometry
        if self.type in ("conv2d", "dense"):
            fan_in = int(np.prod(k.shape[:-1]))
            self.int8 = bool(k.size) and int(k.min()) >= -128 and int(k.max()) <= 127 \
                and fan_in <= int_gemm.MAX_K
        if self.type == "depthwise":
            # per channel sum |w * 2^a_c| in Python ints (int64 would wrap on crafted weights);
            # sums past 2^62 (any non-zero input passes the int64 bound) or negative
            # alignments: the reference
            abs_k = None if np.any(nplan.align < 0) else \
                _aligned_abs_sums(k[:, :, :, 0], nplan.align)
            if abs_k is None or max(abs_k, default=0) >= INT64_SAFE:
                self._reference_only()
                return
            kk = k[:, :, :, 0] * np.left_shift(np.int64(1), nplan.align)  # exact (< 2^62)
            self.k64 = np.ascontiguousarray(kk)
            self.k32 = np.ascontiguousarray(kk.astype(np.int32)) \
                if np.abs(kk).max(initial=0) < INT32_EXACT else None
            self.abs_k = np.array(abs_k, np.int64)

    def _reference_only(self):
        """The reference kernel for every batch; the plan applies the offsets."""
        self.fast = self.handles_offsets = False
        self.xoff, self.post = 0, None

    def fuse_table(self, table: _Table) -> bool:
        """Take over ``table`` (the step of the one op consuming this step's output): the
        epilogue writes its entries (:func:`kernels.emit_table`); the reference path applies
        it after the reference kernel. Only without offsets or a fused max pool (a table
        need not be monotonic); ``False``: not fused."""
        arrays = self.op.arrays
        if not self.fast or self.pool or self.xoff or self.post is not None or any(
                k in arrays for k in ("in_offset0", "out_offset")) or any(
                k in table.op.arrays for k in ("in_offset0", "out_offset")):
            return False
        base = _vec(table.op.arrays["base"], self.cout)
        if table.table is None or base is None:
            return False
        self.rq.fuse_table(table.table, base)
        self.table = table
        return True
    # ------------------------------------------------------------------ execution
    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The op's output integers (minus its ``out_offset`` when :attr:`handles_offsets`:
        then ``x`` is the input before its ``in_offset0``)."""
        nb = _backend()
        y = None
        if self.fast and nb is not None:
            if self.type == "depthwise":
                y = self._depthwise(nb, x)
            else:
                y = self._direct(nb, x)
                if y is None:
                    y = self._gemm(nb, x)
        if y is None:  # reference (also the exact int64 fallback past the float bounds)
            x64 = x.astype(np.int64, copy=False)
            if self.xoff:
                x64 = x64 + self.xoff
            y = self.nplan.finish(self.nplan.linear(x64), self.ref)
            if self.table is not None:
                return self.table([y])
            return y - self.post if self.post is not None and self.handles_offsets else y
        if self.pool:
            y = _maxpool(nb, y, self.pool)
        return y

    def _geometry(self, x):
        geo = self._geo.get(x.shape[1:3])
        if geo is None:
            a = self.op.attrs
            kh, kw = self.nplan.kernel.shape[:2]
            s, d = a["strides"], a["dilation_rate"]
            ho, pt, _ = ref.conv_geometry(x.shape[1], kh, s[0], a["padding"], d[0])
            wo, pl, _ = ref.conv_geometry(x.shape[2], kw, s[1], a["padding"], d[1])
            geo = self._geo[x.shape[1:3]] = (kh, kw, s, d, ho, wo, pt, pl)
        return geo

    def _direct_kernels(self):
        """``(k32 or None, k64, max_o sum |w 2^a|)`` of the direct kernel: the ``(kh, kw,
        cin, cout)`` kernel with each input channel's alignment folded in, or ``None`` when
        its sums could pass 2^62 (the GEMM routes and the reference handle those)."""
        got = self.__dict__.get("_direct_k", False)
        if got is not False:
            return got
        p = self.nplan
        k = p.kernel if self.type == "conv2d" else p.kernel.reshape(1, 1, *p.kernel.shape)
        fan_in = int(np.prod(k.shape[:3]))
        # (in float64: np.abs of an int64 -2^63 wraps to -2^63)
        top = float(np.abs(k.astype(np.float64)).max(initial=0)) * \
            2.0 ** int(p.align.max(initial=0))
        got = None
        if top * max(fan_in, 1) < INT64_SAFE and int(p.align.min(initial=0)) >= 0:
            # every sum is exact in int64 (negative alignments: the other routes)
            k64 = np.ascontiguousarray(k * np.left_shift(np.int64(1), p.align).reshape(
                1, 1, -1, 1))
            wsum = int(np.abs(k64).sum(axis=(0, 1, 2)).max(initial=0))
            k32 = np.ascontiguousarray(k64.astype(np.int32)) if top < INT32_EXACT else None
            got = (k32, k64, wsum)
        self._direct_k = got
        return got

    def _direct(self, nb, x):
        """The direct kernel's output for a small call (:data:`DIRECT_MACS`), else
        ``None``. Accumulators in int32 when ``max_o sum |w 2^a| * (max|x| + |xoff|)``, from
        the input dtype's range, is below 2^31, else int64 (the bound is below 2^62)."""
        c = x.shape[-1]
        x4, geo = _rows_as_image(x) if self.type == "dense" else (x, self._geometry(x))
        if x4.shape[0] * geo[4] * geo[5] * geo[0] * geo[1] * c * self.cout > DIRECT_MACS:
            return None
        ks = self._direct_kernels()
        if ks is None or x.dtype.kind not in "iu":
            return None
        k32, k64, wsum = ks
        bound = wsum * (_dtype_absmax(x.dtype) + abs(self.xoff))
        if bound >= INT64_SAFE:
            return None
        if bound < INT32_EXACT and k32 is not None:
            k, z = k32, np.zeros(1, np.int32)
        else:
            k, z = k64, np.zeros(1, np.int64)
        kh, kw, s, d, ho, wo, pt, pl = geo
        out = np.empty((x4.shape[0], ho, wo, self.cout), self.rq.dtype)
        self.rq.kernels(nb).conv_rows(np.ascontiguousarray(x4), self.xoff, k, z, s[0], s[1],
                                        d[0], d[1], pt, pl, ho, wo, *self.rq.args(), out)
        return out.reshape(*x.shape[:-1], self.cout) if self.type == "dense" else out

    def _depthwise(self, nb, x):
        c, xoff = x.shape[-1], self.xoff
        # static first (the dtype's range), else the batch's own bound
        bound = int(self.abs_k.max(initial=0)) * (_dtype_absmax(x.dtype) + abs(xoff))
        if bound >= INT32_EXACT:
            bound = _weighted_max(self.abs_k, _absmax(nb, x.reshape(-1, c)), abs(xoff))
        if bound >= INT64_SAFE:
            return None
        if bound < INT32_EXACT and self.k32 is not None:
            k, z = self.k32, np.zeros(1, np.int32)
        else:
            k, z = self.k64, np.zeros(1, np.int64)
        kh, kw, s, d, ho, wo, pt, pl = self._geometry(x)
        out = np.empty((x.shape[0], ho, wo, c), self.rq.dtype)
        self.rq.kernels(nb).depthwise_rows(np.ascontiguousarray(x), xoff, k, z, s[0], s[1],
                                             d[0], d[1], pt, pl, ho, wo, *self.rq.args(), out)
        return out

    def _gemm(self, nb, x):
        p, c = self.nplan, x.shape[-1]
        if self.xoff:  # an input offset: folded into the zero point of one uint8 plane
            base = int(self.nplan.align.min(initial=0))
            zp = (128 if x.dtype == np.int8 else 0) - self.xoff
            if self.int8 and x.dtype in (np.uint8, np.int8) and 0 <= zp <= 255 and \
                    not np.any(self.nplan.align - base) and _int_gemm_ok():
                return self._tiled(nb, x, partial(
                    self._int_rows, shifts=np.zeros(c, np.int64), base=base, planes=1,
                    zp=zp, add=128 if x.dtype == np.int8 else 0))
            x = x.astype(np.int64) + self.xoff
        key = (x.dtype, _int_gemm_ok())
        route = self._routes.get(key)
        if route is None:
            route = self._routes[key] = self._static_route(x.dtype)
        if route is not False:
            return self._tiled(nb, x, route)
        if self.int8 and x.dtype in (np.uint8, np.int8) and _int_gemm_ok():
            # every channel fed as x << (a_c - base): one uint8 plane if all fit 8 bits, else
            # two byte planes (values up to 16 bits); wider spreads take the float path. The
            # dtype's range decides when it can (no pass over the data), else the batch's.
            base = int(self.nplan.align.min(initial=0))
            shifts = self.nplan.align - base
            dmax = int(shifts.max(initial=0))
            if dmax <= 16:
                signed = x.dtype == np.int8
                info = np.iinfo(x.dtype)  # the dtype's range, shifted, decides if it can
                planes = _planes(int(info.min) << dmax, int(info.max) << dmax, signed)
                if planes == 0:  # else the batch's own range (one pass over the data)
                    m = _absmax(nb, x.reshape(-1, c))
                    top = int((m << shifts).max(initial=0))
                    planes = _planes(-top if signed else 0, top, signed)
                if planes:
                    return self._tiled(nb, x, partial(
                        self._int_rows, shifts=np.ascontiguousarray(shifts), base=base,
                        planes=planes, zp=128 if signed else 0, add=128 if signed else 0))
        m = _absmax(nb, x.reshape(-1, c))
        groups, total = p._groups(m[p.perm].astype(np.float64))
        if total >= ref.FLOAT64_EXACT:
            return None
        return self._tiled(nb, x, partial(self._gemm_rows, groups=groups))

    def _static_route(self, dt):
        """The int8 GEMM route (a ``rows_fn`` of :meth:`_tiled`) that the input dtype ``dt``
        alone proves (no offset, 8-bit input, shifted channels within one or two byte
        planes), or ``False`` (:meth:`_gemm` decides per batch). Cached per dtype: the
        decision is the same for every batch of that dtype."""
        if self.xoff or not (self.int8 and dt in (np.uint8, np.int8)) or \
                not _int_gemm_ok():
            return False
        base = int(self.nplan.align.min(initial=0))
        shifts = np.ascontiguousarray(self.nplan.align - base)
        dmax = int(shifts.max(initial=0))
        signed = dt == np.int8
        info = np.iinfo(dt)
        planes = _planes(int(info.min) << dmax, int(info.max) << dmax, signed) \
            if dmax <= 16 else 0
        if not planes:
            return False
        return partial(self._int_rows, shifts=shifts, base=base, planes=planes,
                       zp=128 if signed else 0, add=128 if signed else 0)

    def _tiled(self, nb, x, rows_fn):
        """``rows_fn(nb, x4, geo)`` over the whole batch, or over batch chunks whose im2col
        stays below :data:`IM2COL_ELEMENTS`."""
        p, c = self.nplan, x.shape[-1]
        if self.type == "dense":
            x4, geo = _rows_as_image(x)
            return rows_fn(nb, x4, geo).reshape(*x.shape[:-1], p.cout)
        geo = self._geometry(x)
        n, ho, wo = x.shape[0], geo[4], geo[5]
        per = max(1, IM2COL_ELEMENTS // max(1, ho * wo * geo[0] * geo[1] * c))
        xc = np.ascontiguousarray(x)
        if n <= per:
            return rows_fn(nb, xc, geo).reshape(n, ho, wo, p.cout)
        out = np.empty((n, ho, wo, p.cout), self.rq.dtype)
        for i in range(0, n, per):
            part = rows_fn(nb, xc[i:i + per], geo)
            out[i:i + per] = part.reshape(-1, ho, wo, p.cout)
        return out

    def _int_rows(self, nb, x4, geo, shifts, base, planes, zp, add):
        """uint8 x int8 GEMM(s) (:mod:`.int_gemm`, one per byte plane) and the fused epilogue:
        ``(rows, cout)``. The uint8 columns hold ``(x << shift) + add`` and the GEMM subtracts
        ``zp`` (``zp - add`` is the input offset; padding holds ``zp``: the value 0)."""
        kh, kw, s, d, ho, wo, pt, pl = geo
        rows, c = x4.shape[0] * ho * wo, x4.shape[3]
        if self.gemm is None:
            k = self.nplan.kernel
            self.gemm = int_gemm.IntGemm(k.reshape(-1, k.shape[-1]))
        out = np.empty((rows, self.nplan.cout), self.rq.dtype)
        geo_args = (kh, kw, s[0], s[1], d[0], d[1], pt, pl, ho, wo)
        threads = int_gemm.THREADS if _CTX.solo and \
            rows * kh * kw * c * self.nplan.cout >= SOLO_GEMM_MACS else 1
        if planes == 1:
            if (self.type == "dense" or (kh == kw == 1 and s[0] == s[1] == 1)) and add == 0 \
                    and ho == x4.shape[1] and wo == x4.shape[2] and not np.any(shifts):
                cols = x4.reshape(rows, c)  # the input itself (no copy)
            else:
                cols = np.empty((rows, kh * kw * c), np.uint8)
                nb.im2col_u8(x4, shifts, add, zp, *geo_args, cols)
            self.rq.kernels(nb).requant_rows(self.gemm(cols, zp, threads), base,
                                               *self.rq.args(), out)
            return out
        planes = np.empty((2 * rows, kh * kw * c), np.uint8)  # [lo; hi], one buffer
        lo, hi = planes[:rows], planes[rows:]
        nb.im2col_u8x2(x4, shifts, zp, *geo_args, lo, hi)
        if zp == 0:  # both planes without a zero point: one GEMM call over the stacked rows
            acc = self.gemm(planes, 0, threads)  # (a call costs ~7-10 us before arithmetic)
            acc_lo, acc_hi = acc[:rows], acc[rows:]
        else:
            acc_hi, acc_lo = self.gemm(hi, zp, threads), self.gemm(lo, 0, threads)
        self.rq.kernels(nb).requant_planes(acc_hi, acc_lo, base, *self.rq.args(), out)
        return out

    def _gemm_rows(self, nb, x4, geo, groups):
        """GEMM(s) over im2col rows of ``x4`` and the fused epilogue: ``(rows, cout)``."""
        p = self.nplan
        kh, kw, s, d, ho, wo, pt, pl = geo
        rows = x4.shape[0] * ho * wo
        acc, accshift = None, 0
        for g0, g1, base, gdt in groups:
            dt = np.float32 if gdt == "float32" else np.float64
            chans = np.ascontiguousarray(p.perm[g0:g1])
            scl = np.ldexp(1.0, p.sorted_align[g0:g1] - base).astype(dt)
            cols = np.empty((rows, kh * kw * (g1 - g0)), dt)
            nb.im2col(x4, chans, scl, kh, kw, s[0], s[1], d[0], d[1], pt, pl, ho, wo, cols)
            part = cols @ p.kmat(g0, g1, dt)
            if len(groups) == 1:
                acc, accshift = part, base
            else:
                part = part.astype(np.float64, copy=False)
                if base:
                    part *= 2.0 ** base
                if acc is None:
                    acc = part
                else:
                    acc += part
        out = np.empty((rows, p.cout), self.rq.dtype)
        self.rq.kernels(nb).requant_rows(acc, accshift, *self.rq.args(), out)
        return out


def _rows_as_image(x):
    """A dense layer's input ``(..., C)`` as the ``(1, 1, rows, C)`` image of a 1x1 conv and
    that conv's geometry ``(kh, kw, strides, dilation, ho, wo, pt, pl)``."""
    x4 = np.ascontiguousarray(x).reshape(1, 1, -1, x.shape[-1])
    return x4, (1, 1, (1, 1), (1, 1), 1, x4.shape[2], 0, 0)


def _planes(lo: int, hi: int, signed: bool) -> int:
    """Byte planes (1 or 2; 0: neither) holding values in ``[lo, hi]`` (signed: int8/int16,
    else uint8/uint16).

    Example:
        >>> _planes(-128, 127, True), _planes(0, 256, False), _planes(-32768 * 2, 0, True)
        (1, 2, 0)
    """
    for n, bits in ((1, 8), (2, 16)):
        lim_lo, lim_hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (
            0, (1 << bits) - 1)
        if lim_lo <= lo and hi <= lim_hi:
            return n
    return 0


def _aligned_abs_sums(k, align) -> list[int]:
    """``sum_taps |k[..., c]| * 2^align[c]`` per channel ``c`` of a ``(kh, kw, C)`` kernel
    (alignments ``>= 0``), as exact Python ints: in int64 when no sum can wrap, else channel
    by channel.

    Example:
        >>> _aligned_abs_sums(np.full((2, 1, 2), -2**62), np.array([0, 1]))
        [9223372036854775808, 18446744073709551616]
    """
    taps = k.shape[0] * k.shape[1]
    top = max(-int(k.min(initial=0)), int(k.max(initial=0))) * taps
    if top << int(np.max(align, initial=0)) < 2**63:
        return (np.abs(k).sum(axis=(0, 1)) << align).tolist()
    return [sum(abs(int(w)) for w in k[..., c].ravel()) << int(a)
            for c, a in enumerate(align)]


def _weighted_max(weights, m, add: int = 0) -> int:
    """``max_c weights[c] * (m[c] + add)`` (non-negative int64 vectors) as an exact Python
    int: in int64 when the largest product cannot wrap, else channel by channel.

    Example:
        >>> _weighted_max(np.array([2, 1]), np.array([2**62, 3]), 1)
        9223372036854775810
    """
    if weights.size == 0:
        return 0
    top = int(m.max()) + add
    if top < 2**63 and int(weights.max()) * top < 2**63:
        return int((weights * (m + add)).max())
    return max(int(w) * (int(v) + add) for w, v in zip(weights, m, strict=True))


@cache
def _dtype_absmax(dt) -> int:
    """Largest ``|v|`` of the integer dtype ``dt`` (128 for int8)."""
    info = np.iinfo(dt)
    return max(-int(info.min), int(info.max))


def _absmax(nb, x2):
    out = np.empty(x2.shape[1], np.int64)
    nb.absmax_channels(np.ascontiguousarray(x2), out)
    return out


def _maxpool(nb, y, pool):
    size, st = tuple(pool["pool_size"]), tuple(pool["strides"])
    ho, pt, _ = ref.conv_geometry(y.shape[1], size[0], st[0], pool["padding"])
    wo, pl, _ = ref.conv_geometry(y.shape[2], size[1], st[1], pool["padding"])
    out = np.empty((y.shape[0], ho, wo, y.shape[3]), y.dtype)
    nb.maxpool(y, size[0], size[1], st[0], st[1], pt, pl, out)
    return out


def _scalar(a) -> int | None:
    """A per-tensor offset as an int (all entries equal), else ``None``."""
    a = np.asarray(a, np.int64).ravel()
    if a.size == 0:
        return 0
    return int(a[0]) if np.all(a == a[0]) else None


def _rows(x):
    """A contiguous ``(rows, C)`` view of ``x`` (channels last)."""
    x = np.ascontiguousarray(x)
    return x.reshape(-1, x.shape[-1]) if x.ndim > 1 else x.reshape(1, -1)


class _Elementwise:
    """``shift`` / ``clip`` / ``affine`` / ``add`` (two same-shape inputs) / ``gap`` / ``input``
    through the compiled row kernels; the reference for anything else."""

    def __init__(self, op: Op):
        self.op, self.kind = op, op.kind
        self.cache: dict[int, object] = {}
        #: the output offset (eq. 37) is subtracted here (input offsets: by the plan)
        self.folds_out_offset = "out_offset" in op.arrays and op.kind != "input"
        #: an add with rescaled inputs (imported): its input offsets are added here too
        self.scaled = op.kind == "add" and any(k.startswith("multiplier") for k in op.arrays)
        self.offs = [_scalar(op.arrays.get(f"in_offset{i}", 0)) for i in range(len(op.inputs))]
        self.handles_offsets = self.scaled and len(op.inputs) in (1, 2) and all(
            o is not None for o in self.offs)

    def _consts(self, c: int):
        got = self.cache.get(c)
        if got is None:
            got = self.cache[c] = self._build(c)
        return got

    def _build(self, c: int):
        r, k, op = self.op.arrays, self.kind, self.op
        one = np.ones(1, np.int64)
        post = r.get("out_offset") if self.folds_out_offset else None
        rq = None
        if k == "shift":
            rq = _Requant({"multiplier": one, "shift": r["shift"], "out_lo": r["out_lo"],
                           "out_hi": r["out_hi"]}, c, rule=rounding_of(op), two_stage=False,
                          post=post)
        elif k == "clip":
            rq = _Requant({"multiplier": one, "shift": 0 * one, "out_lo": r["lo"],
                           "out_hi": r["hi"]}, c, post=post)
        elif k == "gap":
            rq = _Requant(r, c, rule=rounding_of(op), post=post)  # products: checked per batch
        elif k == "affine":
            mult, offset = _vec(r["multiplier"], c), _vec(r["offset"], c)
            rq = _Requant({"multiplier": one, "shift": r["shift"], "out_lo": r["out_lo"],
                           "out_hi": r["out_hi"]}, c, rule=rounding_of(op), two_stage=False,
                          post=post)
            if mult is None or offset is None:
                return None
            rq.extra = (mult, offset)
        elif k == "add" and self.handles_offsets:
            return self._build_scaled(c, post)
        elif k == "add":
            if len(op.inputs) != 2 or self.scaled:
                return None
            al = [_vec(r.get(f"align{i}", 0), c) for i in range(2)]
            if any(v is None for v in al) or np.any(np.concatenate(al) < 0) or np.any(
                    np.concatenate(al) > 40):
                return None
            rq = _Requant({"multiplier": one, "shift": r["shift"], "out_lo": r["out_lo"],
                           "out_hi": r["out_hi"]}, c, rule=rounding_of(op), two_stage=False,
                          post=post)
            rq.extra = tuple(al)
        elif k == "input":
            frac = _vec(r["frac"], c)
            lo, hi = _vec(r["lo"], c), _vec(r["hi"], c)
            if frac is None or lo is None or hi is None or np.any(np.abs(frac) > 1000):
                return None
            # round_half_up saturates at ±2^62 (eq. 2): so does a range reaching past it
            lo, hi = (np.clip(v.astype(np.float64), -ROUND_LIMIT, ROUND_LIMIT) for v in (lo, hi))
            return np.ldexp(1.0, frac), lo, hi, narrow_dtype(lo, hi)
        return rq if rq is not None and rq.ok else None

    def _build_scaled(self, c: int, post):
        """Constants of :func:`kernels.add_scaled_rows`, or ``None`` (the reference)."""
        r, n, rule = self.op.arrays, len(self.op.inputs), rounding_of(self.op)
        big = np.array([2**62])
        al = [_vec(r.get(f"align{i}", 0), c) for i in range(n)]
        if any(a is None for a in al) or np.any(np.concatenate(al) < 0) or np.any(
                np.concatenate(al) > 40):
            return None
        qi, sci, scaled, top = [], [], [], 0
        for i in range(n):
            amax = (255 + abs(self.offs[i])) << int(al[i].max(initial=0))  # 8-bit (checked)
            if f"multiplier_in{i}" in r:
                rq = _Requant({"multiplier": r[f"multiplier_in{i}"], "shift": r[f"shift_in{i}"],
                               "out_lo": -big, "out_hi": big}, c, rule=rule)
                if not rq.ok or not rq.product_ok(amax):
                    return None
                m, sh = _vec(r[f"multiplier_in{i}"], c), _vec(r[f"shift_in{i}"], c)
                # |requantized| <= |v|·M·2^-S, plus the roundings (and float32's 2^-24)
                amax = max((abs(int(mm)) * amax >> max(int(ss), 0)) << max(-int(ss), 0)
                           for mm, ss in zip(m, sh, strict=True))
                amax += (amax >> 20) + 2
                qi.append(rq.q)
                sci.append(rq.sc)
                scaled.append(True)
            else:
                qi.append(np.zeros((8, c), np.int64))
                sci.append(np.zeros(c, np.float32))
                scaled.append(False)
            top += amax
        if "multiplier" in r:
            rq = _Requant(r, c, rule=rule, post=post)
        else:
            if rule == "tflite" and any(scaled):
                # the kernel would round the rescaled inputs with the sum's one-stage rule,
                # the reference rounds them with eq. 7b (two stages): keep the reference
                return None
            rq = _Requant({"multiplier": np.ones(1, np.int64), "shift": r["shift"],
                           "out_lo": r["out_lo"], "out_hi": r["out_hi"]}, c, rule=rule,
                          two_stage=False, post=post)
        if not rq.ok or not rq.product_ok(top):
            return None
        while len(qi) < 2:
            qi.append(qi[0])
            sci.append(sci[0])
            al.append(al[0])
            scaled.append(False)
        rq.extra = (np.ascontiguousarray(np.stack(al)), np.array(scaled),
                    np.ascontiguousarray(np.stack(qi)), np.ascontiguousarray(np.stack(sci)))
        return rq

    def _offsets_reference(self, xs):
        """Reference kernel of a step that folds its offsets (they are applied here)."""
        xs = [v.astype(np.int64) + o for v, o in zip(xs, self.offs, strict=True)]
        y = run_op(self.op, xs)
        off = self.op.arrays.get("out_offset")
        return _narrow(y if off is None else y - off)

    def __call__(self, xs):
        """The op's output (minus its ``out_offset`` when :attr:`folds_out_offset`; from
        inputs before their ``in_offset<i>`` when :attr:`handles_offsets`)."""
        nb = _backend()
        x = xs[0]
        c = x.shape[-1] if x.ndim > 1 else x.size
        consts = self._consts(c) if nb is not None and x.size else None
        if consts is not None and self.kind == "add" and (
                (len(xs) > 1 and xs[1].shape != x.shape) or x.ndim < 2):
            consts = None
        if consts is not None and self.handles_offsets and any(  # bounds assume 8 bits
                v.dtype not in (np.int8, np.uint8) for v in xs):
            consts = None
        if consts is None:
            if self.kind == "input":
                return run_op(self.op, xs)
            if self.handles_offsets:
                return self._offsets_reference(xs)
            y = _reference(self.op, xs)
            return _narrow(y - self.op.arrays["out_offset"]) if self.folds_out_offset else y
        if self.handles_offsets:
            al, scaled, qi, sci = consts.extra
            rows = _rows(x)
            out = np.empty(rows.shape, consts.dtype)
            x1 = _rows(xs[1]) if len(xs) > 1 else rows
            offs = self.offs + [0]
            nb.rule[consts.rule].add_scaled_rows(rows, x1, len(xs), offs[0], offs[1], al,
                                                 scaled, qi, sci, consts.q, consts.sc,
                                                 consts.rule, out)
            return out.reshape(x.shape)
        k = self.kind
        if k == "gap":
            x3 = np.ascontiguousarray(x).reshape(x.shape[0], -1, c)
            acc = np.empty((x.shape[0], c), np.int64)
            nb.gap_sum(x3, acc)
            if not consts.product_ok(int(np.abs(acc).max(initial=0))):
                y = run_op(self.op, [x.astype(np.int64)])
                return y - self.op.arrays["out_offset"] if self.folds_out_offset else y
            out = np.empty((x.shape[0], c), consts.dtype)
            nb.rule[consts.rule].requant_rows(acc, 0, *consts.args(), out)
            return out
        rows = _rows(x)
        if k == "input":
            scale, lo, hi, dt = consts
            out = np.empty(rows.shape, dt)
            nb.quantize_rows(rows, scale, lo, hi, out)
            return out.reshape(x.shape)
        out = np.empty(rows.shape, consts.dtype)
        if k in ("shift", "clip"):
            nb.rule[consts.rule].requant_rows(rows, 0, *consts.args(), out)
        elif k == "affine":
            nb.rule[consts.rule].affine_rows(rows, *consts.extra, consts.q, consts.sc,
                                             consts.rule, out)
        else:  # add
            nb.rule[consts.rule].add_rows(rows, _rows(xs[1]), *consts.extra, consts.q,
                                          consts.sc, consts.rule, out)
        return out.reshape(x.shape)


class _Table:
    """``table`` (eq. 38) as a compiled gather; the reference when the arrays are not a flat
    table and per-channel (or scalar) bases."""

    def __init__(self, op: Op):
        self.op = op
        t = np.asarray(op.arrays["table"])
        self.table = np.ascontiguousarray(t.astype(narrow_dtype(t.min(), t.max()))) \
            if t.ndim == 1 and t.size else None
        self.bases: dict[int, np.ndarray | None] = {}

    def __call__(self, xs):
        nb, x = _backend(), xs[0]
        c = x.shape[-1] if x.ndim > 1 else 0
        if c not in self.bases:
            self.bases[c] = _vec(self.op.arrays["base"], c) if c else None
        base = self.bases[c]
        if nb is None or self.table is None or base is None or x.size == 0:
            return _reference(self.op, xs)
        rows = _rows(x)
        out = np.empty(rows.shape, self.table.dtype)
        nb.table_rows(rows, self.table, base, out)
        return out.reshape(x.shape)


class _Mul:
    """``mul`` (eq. 46) of two same-shape tensors or a tensor and a per-sample channel vector
    (squeeze-excite); the reference for other broadcasts."""

    def __init__(self, op: Op):
        self.op = op
        self.consts: dict[int, tuple | None] = {}

    def _build(self, c):
        r = self.op.arrays
        parts = shift_parts(r["shift"], c)
        lo, hi = _vec(r["out_lo"], c), _vec(r["out_hi"], c)
        if parts is None or lo is None or hi is None:
            return None
        return (*parts, lo, hi, narrow_dtype(lo, hi))

    def __call__(self, xs):
        nb = _backend()
        a, b = xs if len(xs) == 2 else (xs[0], None)
        ok = nb is not None and b is not None and a.ndim >= 2 and a.ndim == b.ndim \
            and a.shape[0] == b.shape[0] and a.shape[-1] == b.shape[-1] and a.size \
            and (b.shape == a.shape or all(d == 1 for d in b.shape[1:-1]))
        if ok and a.shape != b.shape and np.prod(b.shape[1:-1]) != 1:
            ok = False
        consts = None
        if ok:
            c = a.shape[-1]
            if c not in self.consts:
                self.consts[c] = self._build(c)
            consts = self.consts[c]
        if consts is None:
            return _reference(self.op, xs)
        n, c = a.shape[0], a.shape[-1]
        a3 = np.ascontiguousarray(a).reshape(n, -1, c)
        b3 = np.ascontiguousarray(b).reshape(n, -1, c)
        left, s1, up, lo, hi, dt = consts
        out = np.empty(a3.shape, dt)
        nb.mul_rows(a3, b3, left, s1, up, lo, hi, out)
        return out.reshape(a.shape)


class _Maxpool:
    def __init__(self, op: Op):
        self.op = op

    def __call__(self, xs):
        nb = _backend()
        x = xs[0]
        if nb is None or x.ndim != 4 or x.size == 0:
            return run_op(self.op, [x.astype(np.int64, copy=False)])
        return _maxpool(nb, np.ascontiguousarray(x), self.op.attrs)


#: Kinds whose reference kernels keep any integer dtype (pure data movement).
DTYPE_FREE = ("reshape", "permute", "identity")
ELEMENTWISE = ("shift", "clip", "affine", "add", "gap", "input")
#: Kinds with a compiled step in :mod:`fixedq.engine.fast.transformer`.
TRANSFORMER = ("layernorm", "madnorm", "attention_softmax", "attention", "add_pos")
#: Stateful kinds (fixedq.engine.streaming.KINDS): their state is in ``model.states``.
STATEFUL = ("buffer_conv", "recurrent")


class FastPlan:
    """Steps of every op of ``model`` (built once; see the module docstring); ``mode="event"``
    runs conv2d/dense steps on events when it pays (:mod:`fixedq.engine.fast.events`)."""

    def __init__(self, model, mode: str = "dense"):
        self.model, self.mode = model, mode
        self.stateful = False  # a stateful step: batches never split (the state is per batch)
        self.steps = [self._step(op) for op in model.ops]
        self._fuse_tables()
        #: event mode: the event steps (a buffer conv's inner one too), and the input shapes
        #: on which each of them found its input too small to scan (then the batch runs on
        #: the dense plan: the same integers without the event steps' checks)
        self._event_steps = [t for st in self.steps for t in (st, getattr(st, "inner", None))
                             if hasattr(t, "ran_small")] if mode == "event" else []
        self._all_small: set = set()
        if self._event_steps:
            from fixedq.engine.fast.events import COST_NS

            self._costs = COST_NS  # the constants of the "too small to scan" decision
            self._small_costs = operator.itemgetter("event_call", "dense_value", "dense_mac")
        #: largest intermediate tensor per sample (elements), measured as batches run
        self.per_sample = 0

    def _fuse_tables(self) -> None:
        """Fuse each ``table`` op into the epilogue of the conv2d/dense/depthwise step that
        produces its input when the table is that tensor's only consumer (and it is no model
        output): the table's step then passes its input on (one pass over the activations
        instead of two; EfficientNet's swish and sigmoid)."""
        m = self.model
        uses: dict[str, int] = {}
        for op in m.ops:
            for t in op.inputs:
                uses[t] = uses.get(t, 0) + 1
        for o in m.outputs:
            uses[o["tensor"]] = uses.get(o["tensor"], 0) + 1
        index = {op.name: i for i, op in enumerate(m.ops)}
        for i, op in enumerate(m.ops):
            if op.kind != "table" or len(op.inputs) != 1 or uses.get(op.inputs[0]) != 1:
                continue
            producer, table = self.steps[index[op.inputs[0]]], self.steps[i]
            if type(producer) is _NeuralStep and isinstance(table, _Table) and \
                    producer.fuse_table(table):
                self.steps[i] = _passthrough

    def _step(self, op: Op):
        if op.kind == "neural":
            step = _NeuralStep(op, self.model._plan(op))
            if self.mode == "event":  # conv2d / dense on events (fast/events.py)
                from fixedq.engine.fast.events import EventStep

                event = EventStep(step)
                return event if event.ok else step
            return step
        if op.kind in STATEFUL:  # streaming programs (fast/stateful.py)
            from fixedq.engine.fast.stateful import stateful_step

            self.stateful = True
            return stateful_step(op, self)
        if op.kind in ELEMENTWISE:
            return _Elementwise(op)
        if op.kind == "maxpool":
            return _Maxpool(op)
        if op.kind == "table":
            return _Table(op)
        if op.kind == "mul":
            return _Mul(op)
        if op.kind in TRANSFORMER:  # (fast/transformer.py)
            from fixedq.engine.fast.transformer import STEPS

            return STEPS[op.kind](op)
        if op.kind in DTYPE_FREE or (op.kind == "concat" and not any(
                k.startswith("shift") for k in op.arrays)):
            return partial(_reference_any_dtype, op)
        return partial(_reference, op)

    def run(self, x, times: dict | None = None) -> list[np.ndarray]:
        """Integer outputs (int64) of one batch of float (or integer-valued) inputs; with
        ``times``, each op's wall seconds are added to ``times[op.name]`` (then the
        micro-batches run one after the other on the calling thread).

        A batch whose largest intermediate tensor would pass :data:`MICRO_ELEMENTS` runs in
        micro-batches (the per-sample size is measured on the first sample the plan runs): the
        working set stays in cache (MobileNetV2 1.0 @ 224, 32 images: 1.8-2.9 s in one piece,
        0.5-0.6 s in micro-batches of 2-4). A batch of at least :data:`PARALLEL_ELEMENTS` is
        also split into a multiple of :data:`THREADS` micro-batches run by the worker
        threads."""
        n = x.shape[0]
        if self.stateful:
            return self._run(x, times)
        if not self.per_sample and n > 1:  # measure one sample first
            head = self._run(x[:1], times)
            return [np.concatenate(p) for p in zip(head, self.run(x[1:], times), strict=True)]
        micro = max(1, MICRO_ELEMENTS // self.per_sample) if self.per_sample else n
        split = times is None and _CTX.solo and n > 1 and \
            n * self.per_sample >= PARALLEL_ELEMENTS
        choice, workers = None, 1
        if split:
            workers = THREADS
            if not workers:  # auto: measured per batch size
                choice = self._thread_choice(n) if AUTO_THREADS > 1 else None
                workers = choice.pick() if choice is not None else 1
        t0 = time.perf_counter()
        count = -(-n // micro)
        if workers > 1:  # CHUNKS per worker (a descheduled worker's share is taken over)
            count = max(count, min(n, CHUNKS * workers))
        if count == 1 and workers == 1:
            outs = self._run(x, times)
            if choice is not None:
                choice.record(1, (time.perf_counter() - t0) / n)
            return outs
        if workers > 1:  # equal sizes
            cut = [n * i // count for i in range(count + 1)]
            chunks = [x[a:b] for a, b in zip(cut[:-1], cut[1:], strict=True)]
        else:
            chunks = [x[i:i + micro] for i in range(0, n, micro)]
        if workers > 1:
            futures = [_pool(workers).submit(_in_worker, self._run, c, None) for c in chunks]
            parts = [f.result() for f in futures]
        else:
            parts = [self._run(c, times) for c in chunks]
        outs = [np.concatenate(p) for p in zip(*parts, strict=True)]
        if choice is not None:
            choice.record(workers, (time.perf_counter() - t0) / n)
        return outs

    def _thread_choice(self, n: int) -> ThreadChoice:
        """The :class:`ThreadChoice` of batches of about ``n`` samples (powers of two)."""
        choices = self.__dict__.setdefault("_choices", {})
        key = n.bit_length()
        got = choices.get(key)
        if got is None:
            got = choices[key] = ThreadChoice((1, AUTO_THREADS))
        return got

    def _schedule(self):
        """Per op (after the input): what :meth:`_run` needs, read once from the ops (the
        input offsets the plan adds, the output offset it subtracts, neural flags, the
        tensors whose last use it is)."""
        m = self.model
        sched = []
        for i, (op, step) in enumerate(zip(m.ops[1:], self.steps[1:], strict=True), start=1):
            folds = getattr(step, "handles_offsets", False)
            in_offs = None if folds else [op.arrays.get(f"in_offset{j}")
                                          for j in range(len(op.inputs))]
            if in_offs is not None and all(o is None for o in in_offs):
                in_offs = None
            out_off = None if folds or getattr(step, "folds_out_offset", False) else \
                op.arrays.get("out_offset")
            neural = op.kind == "neural"
            conv1d = neural and bool(op.attrs.get("conv1d"))
            transpose = neural and op.attrs.get("type") == "transpose"
            free = [t for t in set(op.inputs) if m._last_use.get(t) == i]
            sched.append((op, step, in_offs, out_off, neural, conv1d, transpose, free))
        return sched

    def _run(self, x, times: dict | None) -> list[np.ndarray]:
        from fixedq.engine.model import check_neural_input

        m = self.model
        if self._event_steps:
            small_key = (x.shape, x.dtype, self._small_costs(self._costs))
            if small_key in self._all_small:
                dense = self.__dict__.get("_dense_plan")
                if dense is None:  # (None when the compiled kernels are switched off)
                    dense = m.fast_plan("dense")
                    if dense is not None:
                        self._dense_plan = dense
                if dense is not None:
                    return dense._run(x, times)
        sched = self.__dict__.get("_sched")
        if sched is None:
            sched = self._sched = self._schedule()
        outer = _CTX.active
        pin = ExitStack()
        if not outer:  # the environment switches, once per batch (for every step's kernels)
            pin.enter_context(jit.pinned())
        try:  # (the pin is released even when reading the switches fails)
            if not outer:
                _CTX.nb, _CTX.igemm, _CTX.active = jit.backend(), int_gemm.available(), True
            t0 = time.perf_counter()
            tensors = {m.ops[0].name: self.steps[0]([x])}
            biggest = tensors[m.ops[0].name].size
            if times is not None:
                times[m.ops[0].name] = times.get(m.ops[0].name, 0.0) + \
                    time.perf_counter() - t0
            for op, step, in_offs, out_off, neural, conv1d, transpose, free in sched:
                xs = [tensors[t] for t in op.inputs]
                if times is not None:
                    t0 = time.perf_counter()
                try:
                    if in_offs is not None:
                        for j, off in enumerate(in_offs):
                            if off is not None:
                                xs[j] = xs[j].astype(np.int64) + off
                    if neural:
                        check_neural_input(op, xs[0])
                        x0 = xs[0][:, None] if conv1d else xs[0]
                        if transpose:
                            check_transpose_size(op, x0)
                        y = step(x0)
                        y = y[:, 0] if conv1d else y
                    else:
                        y = step(xs)
                    if out_off is not None:
                        y = y.astype(np.int64) - out_off
                except Exception as err:
                    raise op_error(op, err) from err
                tensors[op.name] = y
                if y.size > biggest:
                    biggest = y.size
                if times is not None:
                    times[op.name] = times.get(op.name, 0.0) + time.perf_counter() - t0
                for t in free:
                    del tensors[t]
        finally:
            if not outer:
                _CTX.active, _CTX.nb = False, None
            pin.close()
        if x.shape[0]:
            self.per_sample = max(self.per_sample, -(-biggest // x.shape[0]))
        if self._event_steps and all(st.ran_small for st in self._event_steps):
            if len(self._all_small) >= 16:  # many shapes: memory stays bounded
                self._all_small.clear()
            self._all_small.add(small_key)
        outs = []
        for o in m.outputs:
            v = tensors[o["tensor"]].astype(np.int64)
            outs.append(v + np.asarray(o["offset"], np.int64) if o.get("offset") else v)
        return outs


def _reference(op: Op, xs):
    """The op's reference kernel on int64 inputs; its output narrowed to the smallest dtype
    holding the values it actually has (so the next op can take a narrow, e.g. int8 GEMM)."""
    return _narrow(run_op(op, [v.astype(np.int64, copy=False) for v in xs]))


def _narrow(y):
    """An int64 ``y`` in the smallest dtype holding its values (others unchanged)."""
    if y.dtype != np.int64 or y.size == 0:
        return y
    dt = narrow_dtype(y.min(), y.max())
    return y.astype(dt) if dt != y.dtype else y


def _reference_any_dtype(op: Op, xs):
    return run_op(op, xs)


def _passthrough(xs):
    """The step of a ``table`` op fused into its producer: the input is already its output."""
    return xs[0]
