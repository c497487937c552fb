"""The compiled event path: conv2d / dense steps that visit only the non-zero inputs.

In ``mode="event"`` the compiled plan (:class:`fixedq.engine.fast.plan.FastPlan`) wraps each
conv2d and dense step of the dense plan in an :class:`EventStep`. Per batch it counts the
events (non-zero input integers) and, when a cost model (:data:`COST_NS`) expects the scatter
to beat the dense GEMM, runs :mod:`.event_kernels`: every event adds ``v * w`` into the
integer accumulators of the outputs it reaches, and the reached outputs are requantized with
the dense path's fused epilogue; the others get ``requant(0)``. Otherwise (and whenever the
dense step would not run its compiled kernel) the dense step runs. Either way the integers
are the dense path's, bit for bit:

- the weights are ``w * 2^a_c`` (the input channel's alignment folded in, exact) in int32
  when ``max_o sum |w * 2^a_c| * max|x_c|`` is below 2^31 (the dtype's range first, else the
  batch's own), int64 below 2^62, else the dense step runs; every partial sum is bounded by
  that sum, so no order of additions overflows. A conv with 8-bit inputs and aligned weights
  in ``[-128, 128]`` multiplies in 16 bits (``|x * w| <= 255 * 128 < 2^15``) into the int32
  accumulators;
- the epilogue is the dense step's (same constants, int64 scalar steps), whose no-wrap
  precondition was proven when the plan was built.

Dense-type steps (a dense layer, a buffer conv's window of ``k`` frames:
:meth:`EventStep.window` reads the window ``(N, k, pixels, C)`` in place) have a second event
kernel, ``"active"``: the dense step (int8 GEMM) on the windows holding an event only, gathered
and stacked, and ``requant(0)`` for the others (the rows are independent, so the integers are
the dense step's). It wins when events cluster in few pixels (a model whose convs have no
bias keeps an all-zero neighbourhood at zero); the scatter wins when they are few but spread.
Input rows whose bytes are a multiple of 8 are scanned as 64-bit words, skipping zero words.

Fused max-pooling runs after the requantization, as in the dense step. The kernels run on the
calling thread (split over the 2 cores of the loaded bench machine, a batch of the TENN bench
ran 6x slower: every hand-off between threads waited for the OS scheduler).

Example:
    >>> import numpy as np
    >>> from fixedq.engine.ops import Op
    >>> from fixedq.engine.model import Model
    >>> ops = [Op("in", "input", [], {}, {"frac": np.array([0]), "lo": np.array([0]),
    ...                                   "hi": np.array([255])}),
    ...        Op("fc", "neural", ["in"], {"type": "dense", "accum_dtype": "float32",
    ...            "acc_lo": -2**31, "acc_hi": 2**31 - 1},
    ...           {"kernel": np.array([[1, 2], [3, 4]]), "bias": np.array([1, 1]),
    ...            "multiplier": np.array([1, 1]), "shift": np.array([0, 0]),
    ...            "out_lo": np.array([-128, -128]), "out_hi": np.array([127, 127])})]
    >>> m = Model(ops, [{"tensor": "fc", "frac": [0, 0], "name": "fc"}], (None, 2))
    >>> m.predict(np.array([[0.0, 5.0], [0.0, 0.0]]), mode="event", output="int").tolist()
    [[16, 21], [1, 1]]
"""

from __future__ import annotations

import threading
from functools import lru_cache
from types import SimpleNamespace

import numpy as np

from fixedq.engine import kernels as ref
from fixedq.engine.fast import event_kernels, jit
from fixedq.engine.fast import kernels as fast_kernels

INT32_EXACT = 2**31
INT64_SAFE = 2**62

#: Rough costs (ns per output value or per synapse, one core, measured with
#: bench/engine_bench.py's event rows on this machine): the dense conv's work per output
#: value and per multiply-add (im2col + int8 GEMM + epilogue), the event kernel's per output
#: value (the ``requant(0)`` fill) and per event synapse (one ``acc += v * w`` row element);
#: per input element gathered for the "active" kernel; per event of a dense-type step's rows
#: (its branch: ~8 ns per event of 16 outputs measured on the TENN buffer convs, not the
#: 4 ns the multiply-adds alone predict); the event path's fixed cost per call
#: (its scans and Python steps: a step whose dense estimate is below it runs dense without
#: scanning, e.g. most steps of a live batch-1 frame).
COST_NS = {"dense_value": 1.5, "dense_mac": 0.03, "event_value": 0.4, "event_mac": 0.25,
           "gather": 0.3, "event_call": 15000.0, "row_event": 5.0}

@lru_cache(maxsize=1)
def _compiled():
    try:
        import numba
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    names = ("conv_events", "window_events", "count_nonzero", "active_windows",
             "gather_windows", "place_rows")

    def build(cache):
        return SimpleNamespace(**{n: numba.njit(cache=cache, nogil=True, error_model="numpy")(
            getattr(event_kernels, n)) for n in names})

    try:
        return build(True)
    except RuntimeError:  # pragma: no cover - no writable cache location
        return build(False)


def backend():
    """The compiled event kernels, or ``None`` (numba missing, or the compiled kernels
    disabled by ``FIXEDQ_ENGINE_COMPILED=0``)."""
    return _compiled() if jit.requested() else None


class ScanBackoff:
    """When an event step scans its input again after scans that chose the dense step.

    Counting a batch's events costs a pass over it (~40 us for a batch of 64 TENN frames of
    a buffer conv), paid for nothing when the dense step runs anyway. Each scan of one input
    shape that chose the dense step raises a level ``n`` by one (at most 8), and the next
    ``min(2^(n-1) - 1, MAX_SKIP)`` calls of that shape run the dense step without scanning; a
    scan that chooses an event kernel lowers ``n`` by one and the next call scans again. So a
    shape whose batches keep paying for events is scanned every call, one whose batches
    never do about once per ``MAX_SKIP + 1`` calls, and a mix where events pay now and then
    (a buffer conv's first frame of a clip: its window is mostly the zero-filled FIFO) is
    scanned rarely, so it runs dense nearly always: the occasional event gain is given up
    for the scans' cost (starting over at every event choice, the TENN bench's 4-bit model
    spent more on 4 scans per 8 frames than its buffer convs' first frames gained, and ran
    event mode at 0.95x of dense; with a period dividing 32 the scans can even miss every
    paying call). The integers are the same whichever kernel runs: only the time differs.

    Example:
        >>> b = ScanBackoff()
        >>> b.scanned((64, 8), dense=True)  # one dense choice: scan again next time
        >>> b.skip((64, 8))
        False
        >>> b.scanned((64, 8), dense=True)  # two in a row: skip the next call
        >>> [b.skip((64, 8)) for _ in range(3)]
        [True, False, False]
        >>> b.scanned((64, 8), dense=False); b.skip((64, 8))  # an event choice: scan
        False
        >>> b.scanned((64, 8), dense=True)  # level 2 again: skip one
        >>> [b.skip((64, 8)) for _ in range(2)]
        [True, False]
    """

    MAX_SKIP = 31

    def __init__(self):
        self._state: dict[tuple, list[int]] = {}  # shape -> [dense scans in a row, to skip]

    def skip(self, shape) -> bool:
        """Whether this call of ``shape`` runs the dense step without scanning."""
        st = self._state.get(shape)
        if st is None or st[1] <= 0:
            return False
        st[1] -= 1
        return True

    def scanned(self, shape, dense: bool) -> None:
        """Record a scan of ``shape`` and whether it chose the dense step."""
        if not dense:
            st = self._state.get(shape)
            if st is not None:
                st[0], st[1] = max(st[0] - 1, 0), 0
            return
        if len(self._state) >= 16 and shape not in self._state:
            self._state.clear()  # many shapes: memory stays bounded
        st = self._state.setdefault(shape, [0, 0])
        st[0] = min(st[0] + 1, 8)
        st[1] = min((1 << (st[0] - 1)) - 1, self.MAX_SKIP)


class EventStep:
    """A conv2d/dense step of the dense plan (``dense``: its ``_NeuralStep``) run on events
    when the cost model prefers it; see the module docstring."""

    def __init__(self, dense):
        self.dense = dense
        self.op = dense.op
        self.ok = bool(dense.fast) and dense.type in ("conv2d", "dense") and dense.rq.plain \
            and not dense.xoff  # (other rounding rules and offsets: the dense step)
        if not self.ok:
            return
        p = dense.nplan
        k = p.kernel  # (kh, kw, cin, cout) or (cin, cout)
        self.cout = int(k.shape[-1])
        kmax = max(-int(k.min(initial=0)), int(k.max(initial=0)))  # (|-2^63| as a Python int)
        if kmax << max(int(p.align.max(initial=0)), 0) >= INT64_SAFE:
            self.ok = False  # aligned weights past int64: the dense step's exact fallback
            return
        shape = (1,) * (k.ndim - 2) + (-1, 1)
        self.k64 = np.ascontiguousarray(k * np.left_shift(np.int64(1), p.align).reshape(shape))
        # per input channel, per output: sum over taps of |w * 2^a| -> (cin, cout), summed in
        # float64: an int64 sum of weights near 2^60 wraps. The bounds are compared with 2^31
        # (below 2^53 float64 is exact) and 2^62 (float64's relative error is far below the
        # factor 2 to int64's 2^63), and a product by max |x| cannot wrap.
        self.abs_w = np.abs(self.k64.astype(np.float64)).reshape(-1, k.shape[-2],
                                                                 self.cout).sum(axis=0)
        kmax = int(np.abs(self.k64).max(initial=0))
        self.k32 = np.ascontiguousarray(self.k64.astype(np.int32)) if kmax < INT32_EXACT \
            else None
        # 16-bit products for 8-bit inputs: |x| <= 255 and |w| <= 128 give |x*w| < 2^15
        self.k16 = np.ascontiguousarray(self.k64.astype(np.int16)) if kmax <= 128 else None
        rq = dense.rq
        self.rq_args = rq.half_up_args()
        self.out_dtype = rq.dtype
        const = np.empty((1, self.cout), rq.dtype)
        fast_kernels.requant_rows(np.zeros((1, self.cout), np.int64), 0, *rq.args(), const)
        self.const = np.ascontiguousarray(const[0])  # in the output dtype
        self.taps = int(np.prod(k.shape[:2])) if dense.type == "conv2d" else 1
        self._bounds: dict[str, float] = {}
        self._reach: dict[tuple, tuple] = {}
        self._local = threading.local()
        #: input shape -> ``(cin, out_values)`` of a shape found too small to scan (the dense
        #: estimate is recomputed from them with the current ``COST_NS`` at every call)
        self._small_shapes: dict[tuple, tuple[int, int]] = {}
        self.ran_small = False  # (per thread: see the property)
        self._backoff = ScanBackoff()
        #: the kernel of the last call ("events", "active" or "dense") and calls per kernel
        self.counts: dict[str, int] = {}
        self.last = None

    @property
    def ran_small(self) -> bool:
        """Whether this thread's last call found its input shape too small to scan (per
        thread: FastPlan._run reads it after its steps, while other threads -- the
        data-parallel workers, other callers -- run the same steps on other shapes)."""
        return getattr(self._local, "ran_small", False)

    @ran_small.setter
    def ran_small(self, value: bool) -> None:
        self._local.ran_small = value

    @property
    def last(self):
        return self._last

    @last.setter
    def last(self, kernel):
        self._last = kernel
        if kernel is not None:
            self.counts[kernel] = self.counts.get(kernel, 0) + 1

    # ------------------------------------------------------------------ choice
    def _weights(self, x, lane_max):
        """Aligned weights in an exact accumulator dtype for ``x``, or ``None``;
        ``lane_max()``: the batch's largest ``|x|`` per weight row (only when the dtype's
        range does not prove int32)."""
        key = x.dtype.str
        bound = self._bounds.get(key)
        if bound is None:
            info = np.iinfo(x.dtype)
            top = max(-int(info.min), int(info.max))
            bound = self._bounds[key] = float(self.abs_w.sum(axis=0).max(initial=0)) * top
        if bound >= INT32_EXACT:  # the batch's own per-row maxima
            bound = float((self.abs_w * lane_max()[:, None]).sum(axis=0).max(initial=0))
        if bound < INT32_EXACT and self.k16 is not None and x.dtype in (np.uint8, np.int8) \
                and self.dense.type == "conv2d":
            return self.k16
        if bound < INT32_EXACT and self.k32 is not None:
            return self.k32
        return self.k64 if bound < INT64_SAFE else None

    def _worth(self, cin, nnz: int, out_values: int, extra: float = 0.0) -> bool:
        c = COST_NS
        per_event = self.cout * self.taps / (self._stride_area() if self.dense.type ==
                                             "conv2d" else 1)
        dense = self._dense_ns(cin, out_values)
        event = c["event_call"] + out_values * c["event_value"] + \
            nnz * per_event * c["event_mac"] + extra
        return event < dense

    def _remember_small(self, shape, cin: int, out_values: int) -> None:
        """Keep the dense problem size of an input shape too small to scan (its next calls
        skip the checks; the estimate is recomputed with ``COST_NS`` at every call)."""
        if len(self._small_shapes) >= 16:  # many shapes: memory stays bounded
            self._small_shapes.clear()
        self._small_shapes[shape] = (cin, out_values)

    def _still_small(self, shape) -> bool:
        """Whether ``shape`` was found too small to scan and still is under ``COST_NS``."""
        got = self._small_shapes.get(shape)
        return got is not None and self._dense_ns(*got) <= COST_NS["event_call"]

    def _dense_ns(self, cin, out_values: int) -> float:
        """The cost model's dense estimate (ns) for ``out_values`` outputs of ``cin``
        channels."""
        c = COST_NS
        return out_values * (c["dense_value"] + self.taps * cin * c["dense_mac"])

    def _stride_area(self) -> int:
        s = self.op.attrs["strides"]
        return max(1, int(s[0]) * int(s[1]))

    # ------------------------------------------------------------------ execution
    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.ran_small = self._still_small(x.shape)
        if self.ran_small:
            self.last = "dense"  # too small to scan (a live batch-1 frame): no checks
            return self.dense(x)
        nb = backend() if self.ok else None
        if nb is None or x.dtype.kind not in "iu" or x.size == 0:
            self.last = "dense"
            return self.dense(x)
        xc = np.ascontiguousarray(x)
        if self.dense.type == "dense":
            y = self.window(xc.reshape(1, 1, -1, xc.shape[-1]))
            return self.dense(x) if y is None else y.reshape(*x.shape[:-1], self.cout)
        geo = self.dense._geometry(xc)
        out_values = xc.shape[0] * geo[4] * geo[5] * self.cout
        c = xc.shape[-1]
        dense_ns = self._dense_ns(c, out_values)
        if dense_ns <= COST_NS["event_call"]:  # too small to scan
            self._remember_small(x.shape, c, out_values)
            self.last = "dense"
            return self.dense(x)
        if self._backoff.skip(x.shape):
            self.last = "dense"
            return self.dense(x)
        nnz = int(nb.count_nonzero(xc.reshape(-1)))
        w = self._weights(xc, lambda: ref.channel_absmax(xc.reshape(-1, c))) \
            if self._worth(c, nnz, out_values) else None
        self._backoff.scanned(x.shape, w is None)
        if w is None:
            self.last = "dense"
            return self.dense(x)
        self.last = "events"
        return self._conv_events(nb, xc, w, geo)

    def window(self, win: np.ndarray) -> np.ndarray | None:
        """A dense-type step over windows of rows ``win`` ``(n, k, rows, c)`` (weight row
        ``j*c + f`` for frame ``j``, channel ``f``; see
        :func:`~fixedq.engine.fast.event_kernels.window_events`): the ``(n*rows, cout)``
        output integers when an event kernel runs, ``None`` when the cost model or the
        bounds want the dense step (the caller then runs :attr:`dense` on the stacked rows).

        Two event kernels: the scatter of every event (:attr:`last` ``"events"``), or the
        dense step on the *active* windows only (``"active"``: the windows holding an event,
        gathered and stacked; every other window gets ``const``, the dense step's value for
        an all-zero row), which keeps the int8 GEMM when events cluster in few windows."""
        self.ran_small = self._still_small(win.shape)
        if self.ran_small:
            self.last = "dense"  # too small to scan (a live batch-1 frame): no checks
            return None
        nb = backend() if self.ok else None
        if nb is None or win.dtype.kind not in "iu" or win.size == 0:
            self.last = "dense"
            return None
        win = np.ascontiguousarray(win)
        n, k, rows, c = win.shape
        total, cin = n * rows, k * c
        cost = COST_NS
        per_row = cost["dense_value"] + cin * cost["dense_mac"]
        dense = total * self.cout * per_row
        if dense <= cost["event_call"]:  # too small to scan
            self._remember_small(win.shape, cin, total * self.cout)
            self.last = "dense"
            return None
        if self._backoff.skip(win.shape):  # recent scans of this shape chose the dense step
            self.last = "dense"
            return None
        words = event_kernels.word_view(win, 1)
        flags = np.empty(total, np.bool_)
        active = int(nb.active_windows(win, words, flags))
        gathered = cost["event_call"] + active * (self.cout * per_row + cin * cost["gather"]) \
            + total * self.cout * cost["event_value"]
        w = None
        if active and gathered >= dense:
            nnz = int(nb.count_nonzero(win.reshape(-1)))
            if self._worth(cin, nnz, total * self.cout, nnz * cost["row_event"]):
                w = self._weights(win, lambda: ref.channel_absmax(
                    win.transpose(0, 2, 1, 3).reshape(-1, cin)))
            if w is None:
                self._backoff.scanned(win.shape, True)
                self.last = "dense"
                return None
        self._backoff.scanned(win.shape, False)
        out = np.empty((total, self.cout), self.out_dtype)
        if w is not None:  # the scatter of every event
            self.last = "events"
            acc, mark, touched, _ = self._scratch(rows, w.dtype, False)
            nb.window_events(win, words, w, acc, mark, touched, self.const, *self.rq_args,
                             out)
            return out
        self.last = "active"
        y = self.const[None]
        if active:
            sel = np.flatnonzero(flags)
            stacked = np.empty((active, cin), win.dtype)
            nb.gather_windows(win, sel, stacked)
            y = np.ascontiguousarray(self.dense(stacked))
        nb.place_rows(flags, y, self.const, out)
        return out

    def _shape_consts(self, hw, geo):
        """Per input size (cached, at most 4): the reach tables and the pool constants."""
        got = self._reach.get(hw)
        if got is None:
            kh, kw, s, d, ho, wo, pt, pl = geo
            pool, ho2, wo2 = np.zeros(8, np.int64), ho, wo
            if self.dense.pool:  # fused max pool (after the requantization, as the dense step)
                pa = self.dense.pool
                size, st = tuple(pa["pool_size"]), tuple(pa["strides"])
                ho2, ppt, _ = ref.conv_geometry(ho, size[0], st[0], pa["padding"])
                wo2, ppl, _ = ref.conv_geometry(wo, size[1], st[1], pa["padding"])
                pool = np.array([size[0], size[1], st[0], st[1], ppt, ppl, ho2, wo2], np.int64)
            if len(self._reach) >= 4:  # many image sizes: memory stays bounded
                self._reach.clear()
            got = self._reach[hw] = (event_kernels.reach(hw[0], kh, s[0], d[0], pt, ho),
                                     event_kernels.reach(hw[1], kw, s[1], d[1], pl, wo),
                                     pool, ho2, wo2)
        return got

    def _scratch(self, rows, acc_dtype, pooled):
        """This thread's scratch for ``rows`` output pixels (the kernel leaves ``acc`` zero
        and ``mark`` False, so they are reused as they are)."""
        key = (rows, np.dtype(acc_dtype).str, pooled)
        cache = self._local.__dict__.setdefault("scratch", {})
        got = cache.get(key)
        if got is None:
            if len(cache) >= 4:
                cache.clear()
            got = cache[key] = (np.zeros((rows, self.cout), acc_dtype),
                                np.zeros(rows, np.bool_), np.empty(rows, np.int64),
                                np.empty((rows if pooled else 1, self.cout), self.out_dtype))
        return got

    def _conv_events(self, nb, x, w, geo):
        ho, wo = geo[4], geo[5]
        n = x.shape[0]
        ri, rj, pool, ho2, wo2 = self._shape_consts(x.shape[1:3], geo)
        out = np.empty((n, ho2 * wo2, self.cout), self.out_dtype)
        narrow = w.dtype == np.int16
        acc, mark, touched, val = self._scratch(ho * wo, np.int32 if narrow else w.dtype,
                                                bool(pool[0]))
        rows = x.reshape(n, x.shape[1], -1)
        nb.conv_events(rows, event_kernels.word_view(rows, 1), x.shape[-1], w, narrow, ri, rj,
                       ho, wo, self.const, *self.rq_args, out, acc, mark, touched,
                       np.empty(rows.shape[-1], np.int64), pool, val)
        return out.reshape(n, ho2, wo2, self.cout)
