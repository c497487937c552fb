"""Event-based (SNN-style) execution: non-zero activations are events.

An *event* is a non-zero integer input activation of an op. For a neural op, each event
triggers synaptic operations: it is multiplied by the weights it connects to and added into the
accumulators of the outputs it reaches. :func:`run_neural_events` runs a neural op that way
when the auto-selection (:func:`event_linear_auto`) expects it to pay off, else the dense
kernel:

- conv2d with numba (the ``fixedq[events]`` extra): element events through a compiled
  integer kernel, accumulators only for the output pixels (or pooling windows) events reach
  (:func:`compiled_conv_events`, :mod:`fixedq.engine.compiled_events`, :func:`rows_finish`);
  else with scipy: the same through compiled sparse products (:func:`sparse_conv_events`);
  else the NumPy pixel-event kernel (:func:`pixel_conv_events`, :func:`event_finish`);
- dense: the active input features only (:func:`column_dense_events`).

Its accumulators are integer sums of the same terms as the dense path, computed exactly (float
only under a proven bound), so the outputs are identical. :func:`event_linear` is the
element-level scatter reference.

Statistics per op (:func:`record`, ``Model.event_stats``):

- ``events``: non-zero input activations; ``inputs``: input activations; ``sparsity``.
- ``synops``: synaptic operations an event-driven execution needs (event x reachable outputs);
  ``dense_macs``: multiply-accumulates of the dense execution.

Example:
    >>> import numpy as np
    >>> from fixedq.engine.ops import Op
    >>> op = Op("fc", "neural", ["x"], {"type": "dense", "accum_dtype": "float32"},
    ...         {"kernel": np.array([[1, 2], [3, 4]])})
    >>> acc, synops = event_linear(op, np.array([[0, 5]]))
    >>> acc.tolist(), synops
    ([[15, 20]], 2)
"""

from __future__ import annotations

from functools import lru_cache, partial

import numpy as np

from fixedq.engine import compiled_events, kernels
from fixedq.engine.ops import aligned_input, neural_output

EVENT_TYPES = ("conv2d", "dense")


def supports(op) -> bool:
    """Whether ``op`` has an event-driven kernel."""
    return (op.kind == "neural" and op.attrs["type"] in EVENT_TYPES
            and np.ndim(op.arrays["bias"]) == 1)  # a bias map (eq. 37) runs dense


def _scatter_rows(acc: np.ndarray, rows: np.ndarray, contrib: np.ndarray) -> None:
    """``acc[rows[k]] += contrib[k]`` for row indices sorted ascending (exact, vectorized)."""
    if rows.size == 0:
        return
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    acc[rows[starts]] += np.add.reduceat(contrib, starts, axis=0)


def _dtype(op):
    d = op.attrs["accum_dtype"]
    return np.int64 if d == "int64" else np.dtype(d)


def _dense_events(op, x):
    kernel = op.arrays["kernel"]
    dt = _dtype(op)
    flat = x.reshape(-1, x.shape[-1])
    rows, cols = np.nonzero(flat)
    vals = flat[rows, cols].astype(dt)
    acc = np.zeros((flat.shape[0], kernel.shape[1]), dtype=dt)
    _scatter_rows(acc, rows, vals[:, None] * kernel[cols].astype(dt))
    synops = int(rows.size) * kernel.shape[1]
    return acc.astype(np.int64).reshape(*x.shape[:-1], kernel.shape[1]), synops


def _tap_hits(bn, bi, bj, kernel_hw, s, d, pads, out_hw):
    """For each kernel tap ``(ta, tb)``: which input events reach an output through it (``ok``)
    and the flat ``(n, i, j)`` index of that output (``rows``); taps reaching nothing are
    skipped. Shared by the element-level and the pixel-level event convs."""
    (kh, kw), (pb, pl), (ho, wo) = kernel_hw, pads, out_hw
    for ta in range(kh):
        ri = bi + pb - ta * d[0]
        ok_r = (ri >= 0) & (ri % s[0] == 0) & (ri // s[0] < ho)
        for tb in range(kw):
            rj = bj + pl - tb * d[1]
            ok = ok_r & (rj >= 0) & (rj % s[1] == 0) & (rj // s[1] < wo)
            if np.any(ok):
                yield ta, tb, ok, (bn[ok] * ho + ri[ok] // s[0]) * wo + rj[ok] // s[1]


def _conv_events(op, x):
    a = op.attrs
    kernel = op.arrays["kernel"]
    kh, kw, _, cout = kernel.shape
    s, d = a["strides"], a["dilation_rate"]
    n, h, w, _ = x.shape
    ho, pb, _ = kernels.conv_geometry(h, kh, s[0], a["padding"], d[0])
    wo, pl, _ = kernels.conv_geometry(w, kw, s[1], a["padding"], d[1])
    dt = _dtype(op)
    bn, bi, bj, bc = np.nonzero(x)
    vals = x[bn, bi, bj, bc].astype(dt)
    k = kernel.astype(dt)
    acc = np.zeros((n * ho * wo, cout), dtype=dt)
    synops = 0
    for ta, tb, ok, rows in _tap_hits(bn, bi, bj, (kh, kw), s, d, (pb, pl), (ho, wo)):
        _scatter_rows(acc, rows, vals[ok, None] * k[ta, tb][bc[ok]])
        synops += int(rows.size) * cout
    return acc.astype(np.int64).reshape(n, ho, wo, cout), synops


def event_linear(op, x: np.ndarray) -> tuple[np.ndarray, int]:
    """Event-driven linear part of a conv2d/dense op: ``(accumulators, synaptic ops)``."""
    if op.attrs["type"] == "dense":
        return _dense_events(op, x)
    return _conv_events(op, x)


#: Auto-selection: a layer runs event-driven when at most this fraction of its input positions
#: (conv: pixels with any non-zero channel; dense: features non-zero in any sample of the
#: batch) carry events; denser layers run the dense BLAS kernel (same outputs either way).
#: Chosen conservatively: in bench/engine_bench.py the pixel-event conv still beats the dense
#: conv at 21-29 % active pixels, and iid sparsity (10 % active pixels reaching ~60 % of the
#: outputs of a 3x3 conv) gains nothing.
EVENT_MAX_ACTIVE = 0.3

#: Auto-selection with scipy: a conv2d runs the element-event kernel when at most this
#: fraction of its input elements are non-zero (the compiled sparse product costs ~3x a BLAS
#: multiply-add per event synapse; calibrated in bench/engine_bench.py).
EVENT_MAX_DENSITY = 0.25

#: Pixel packets with more than this fraction of non-zero channels are multiplied by the
#: weights with dense BLAS (a BLAS multiply-add costs ~1/3 of a compiled sparse one).
PACKET_DENSE = 0.3


def _float_dtype(plan, x):
    """float32/float64 when the batch's own bound proves the event sums exact, else None."""
    c = x.shape[-1]
    m = np.abs(x.reshape(-1, c)).max(axis=0) if x.size else np.zeros(c, np.int64)
    total = float(np.max((plan.abs_w * (m * np.ldexp(1.0, plan.align))[:, None]).sum(axis=0),
                         initial=0.0))
    if total < kernels.FLOAT32_EXACT:
        return np.float32
    return np.float64 if total < kernels.FLOAT64_EXACT else None


def _aligned_float(plan, v, dt):
    v = v.astype(dt)
    if np.any(plan.align):
        v *= np.ldexp(1.0, plan.align).astype(dt)
    return v


def _cached(plan, key, make):
    """Per-op cache of weight matrices (by dtype and channel group); bounded, so that batches
    with changing channel groups never grow memory."""
    cache = plan.__dict__.setdefault("_event_cache", {})
    if key not in cache:
        if len(cache) >= 16:
            cache.clear()
        cache[key] = make()
    return cache[key]


def _reached(active: np.ndarray, kernel_hw, s, d, padding, out_hw) -> np.ndarray:
    """Output pixels of a conv that at least one active input pixel reaches (boolean)."""
    (kh, kw), (ho, wo) = kernel_hw, out_hw
    h, w = active.shape[1:3]
    _, *ph = kernels.conv_geometry(h, kh, s[0], padding, d[0])
    _, *pw = kernels.conv_geometry(w, kw, s[1], padding, d[1])
    ap = np.pad(active, ((0, 0), tuple(ph), tuple(pw)))[..., None]
    out = np.zeros((active.shape[0], ho, wo), dtype=bool)
    for _, view in kernels.taps(ap, (kh, kw), s, d, (ho, wo)):
        out |= view[..., 0]
    return out


def pixel_conv_events(plan, x: np.ndarray, idx: np.ndarray, dt):
    """Event-driven conv2d on the active pixels ``idx`` (flat ``(n, i, j)`` indices).

    Each active pixel is one event packet (its channel vector). One product ``X[idx] @ W``
    (BLAS; a broadcast multiply for one input channel) gives every packet's contribution
    through every kernel tap, which is added to the output that tap reaches: within one tap
    distinct pixels reach distinct outputs, so a fancy-index ``+=`` is exact. Accumulators are
    kept only for the reached output pixels (:class:`CompactAcc`; an unreached one is 0, as in
    the dense sum), so work and memory are proportional to the events and their fan-out.
    """
    a = plan.op.attrs
    kernel = plan.kernel
    kh, kw, c, cout = kernel.shape
    s, d = a["strides"], a["dilation_rate"]
    n, h, w, _ = x.shape
    ho, pb, _ = kernels.conv_geometry(h, kh, s[0], a["padding"], d[0])
    wo, pl, _ = kernels.conv_geometry(w, kw, s[1], a["padding"], d[1])
    taps = kh * kw
    xp = _aligned_float(plan, x.reshape(-1, c)[idx], dt)
    if c == 1:  # (taps, P, cout) by one broadcast multiply
        wt = _cached(plan, ("w1", dt), lambda: kernel.reshape(taps, 1, cout).astype(dt))
        z = wt * xp[None, :, :]
    else:  # one BLAS product for all taps; z[t] is a strided (P, cout) view
        wcat = _cached(plan, ("wcat", dt), lambda: np.ascontiguousarray(
            kernel.transpose(2, 0, 1, 3).reshape(c, taps * cout)).astype(dt))
        z = (xp @ wcat).reshape(idx.size, taps, cout).transpose(1, 0, 2)

    bn, bi, bj = np.unravel_index(idx, (n, h, w))
    active = np.zeros(n * h * w, dtype=bool)
    active[idx] = True
    reached = _reached(active.reshape(n, h, w), (kh, kw), s, d, a["padding"], (ho, wo))
    rid = np.flatnonzero(reached)
    # compact accumulators: one row per reached output pixel, plus a zero row for the others
    cmap = np.full(n * ho * wo, rid.size, dtype=np.int64)
    cmap[rid] = np.arange(rid.size)
    acc = np.zeros((rid.size + 1, cout), dtype=dt)
    for ta, tb, ok, rows in _tap_hits(bn, bi, bj, (kh, kw), s, d, (pb, pl), (ho, wo)):
        acc[cmap[rows]] += z[ta * kw + tb][ok]
    return CompactAcc(acc, cmap, reached, (n, ho, wo, cout))


class CompactAcc:
    """Exact conv accumulators stored only for the output pixels events reached.

    ``acc[cmap[p]]`` is the accumulator vector of flat output pixel ``p``; ``cmap`` sends every
    unreached pixel to the last row, which is all zeros (no event, so the exact sum is 0).
    """

    def __init__(self, acc, cmap, reached, shape):
        self.acc, self.cmap, self.reached, self.shape = acc, cmap, reached, shape

    def dense(self) -> np.ndarray:
        return self.acc[self.cmap].reshape(self.shape)


def event_finish(plan, cacc: CompactAcc) -> np.ndarray:
    """Bias, requantization and fused pooling computed only where events arrived.

    An output pixel no event reaches has accumulator 0, so its output is the constant
    ``requant(0)`` per channel (computed by the same code); only the reached pixels (or the
    pooling windows containing one) are requantized. Falls back to the dense ``plan.finish``
    for int64 requantization, an overlapping/padded pooling geometry or a spatial bias map.
    """
    n, ho, wo, cout = cacc.shape
    p = plan.pool
    fits = not p or (tuple(p["pool_size"]) == tuple(p["strides"]) and (
        p["padding"] == "valid" or (ho % p["pool_size"][0] == 0
                                    and wo % p["pool_size"][1] == 0)))
    if not plan.float_requant or (p and not plan.pool_first) or not fits \
            or np.ndim(plan.bias) > 1:  # a spatial bias map: requant(0) is not one constant
        return plan.finish(cacc.dense(), partial(neural_output, plan.op))
    const = plan.requant(np.zeros(cout, cacc.acc.dtype))  # unreached outputs: requant(0)
    if p:
        p0, p1 = p["pool_size"]
        h2, w2 = ho // p0, wo // p1
        win = cacc.reached[:, :h2 * p0, :w2 * p1].reshape(n, h2, p0, w2, p1).any(axis=(2, 4))
        un, ui, uj = np.nonzero(win)
        vals = None
        for di in range(p0):
            for dj in range(p1):
                pos = (un * ho + ui * p0 + di) * wo + uj * p1 + dj
                v = cacc.acc[cacc.cmap[pos]]
                vals = v if vals is None else np.maximum(vals, v, out=vals)
        out = np.empty((n, h2, w2, cout), dtype=np.int64)
    else:
        un, ui, uj = np.nonzero(cacc.reached)
        vals = cacc.acc[:-1]  # rows are the reached pixels in flat order
        out = np.empty((n, ho, wo, cout), dtype=np.int64)
    out[...] = const
    if un.size:
        out[un, ui, uj] = plan.requant(vals)
    return out


@lru_cache(maxsize=1)
def sparse_backend():
    """``scipy.sparse`` when it is installed, else ``None`` (the engine then uses the NumPy
    pixel-event kernel). scipy is an optional accelerator, never required; the answer is
    cached (a failed import is not, and would be retried on every layer)."""
    try:
        import scipy.sparse as sp
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    return sp


class RowAcc:
    """Exact conv accumulators of selected output pixels; every other output pixel is 0.

    ``acc[k]`` belongs to flat output pixel ``rows[k]`` (index into ``(n, ho, wo)``), or, when
    ``windows`` is set, ``acc`` holds the ``p0*p1`` pixels of each pooling window
    ``windows[k]`` (flat index into the pooled ``(n, ho//p0, wo//p1)``) in row-major order.
    """

    def __init__(self, acc, shape, rows=None, windows=None):
        self.acc, self.shape, self.rows, self.windows = acc, shape, rows, windows


def _pool_fits(plan, ho, wo) -> bool:
    """Whether the fused pool tiles the conv output with whole, non-overlapping windows."""
    p = plan.pool
    return bool(p) and tuple(p["pool_size"]) == tuple(p["strides"]) and (
        p["padding"] == "valid" or (ho % p["pool_size"][0] == 0 and wo % p["pool_size"][1] == 0))


def _window_mode(plan, ho, wo) -> bool:
    """Pool-window compaction is exact only where :func:`rows_finish` can requantize pooled
    windows alone: float64 requantization, pool before requantization, whole windows and a
    per-channel (1-D) bias, so that an unreached window's output is the constant requant(0)."""
    return (_pool_fits(plan, ho, wo) and plan.pool_first and plan.float_requant
            and np.ndim(plan.bias) <= 1)


def _sparse_groups(plan, c, ch, vals):
    """Exactness plan of :func:`sparse_conv_events`: ``[(channels, base, dtype)]``, the same
    float32-exact channel groups as the dense GEMM (:meth:`NeuralPlan._groups`, from the
    batch's per-channel maxima, here taken over the events ``(ch, vals)``), each with its
    channels in ascending original order; one int64 group when even float64 is not provably
    exact."""
    m = np.zeros(c, dtype=np.int64)
    if ch.size:
        np.maximum.at(m, ch, np.abs(vals))
    groups, total = plan._groups(m[plan.perm].astype(np.float64))
    if total >= kernels.FLOAT64_EXACT:
        return [(np.arange(c), 0, np.dtype(np.int64))]
    if len(groups) > 1:  # one float64 group when the per-group overhead outweighs float32
        cost = COST_NS
        work = ch.size * plan.kernel.shape[0] * plan.kernel.shape[1] * plan.kernel.shape[3]
        split = len(groups) * cost["group"] + work * cost["sparse_mac"]
        if cost["group"] + work * cost["sparse_mac64"] < split:
            return [(np.arange(c), int(plan.sorted_align[0]), np.dtype(np.float64))]
    return [(np.sort(plan.perm[g0:g1]), base, np.dtype(dt)) for g0, g1, base, dt in groups]


class _Geometry:
    """Index structures of one conv geometry (independent of the data; cached per input
    shape by :func:`_geometry`), all int32:

    - ``q``: for every output pixel, the input pixel each tap reads, ``(n*ho*wo, taps)``
      (``n*h*w`` where the tap reads padding); ``qwin``: the same per pooling window,
      ``(n*h2*w2, p0*p1*taps)``, and ``winpix``: each window's output pixels ``(n*h2*w2,
      p0*p1)`` (row-major), for a pool that tiles the output.
    - ``reach``: for every input pixel, the output pixel each tap sends it to,
      ``(n*h*w, taps)`` (``n*ho*wo`` where it reaches none: padding side or stride).
    """

    def __init__(self, plan, shape, out_hw, window):
        a = plan.op.attrs
        kh, kw = plan.kernel.shape[:2]
        s, d = a["strides"], a["dilation_rate"]
        n, h, w = shape
        ho, wo = out_hw
        pb = kernels.conv_geometry(h, kh, s[0], a["padding"], d[0])[1]
        pl = kernels.conv_geometry(w, kw, s[1], a["padding"], d[1])[1]
        ii = (np.arange(ho) * s[0])[:, None] + (np.arange(kh) * d[0] - pb)[None, :]  # (ho, kh)
        jj = (np.arange(wo) * s[1])[:, None] + (np.arange(kw) * d[1] - pl)[None, :]  # (wo, kw)
        q = (ii[:, None, :, None] * w + jj[None, :, None, :])[None] \
            + (np.arange(n) * (h * w))[:, None, None, None, None]  # (n, ho, wo, kh, kw)
        ok = ((ii >= 0) & (ii < h))[:, None, :, None] & ((jj >= 0) & (jj < w))[None, :, None, :]
        q = np.where(ok[None], q, n * h * w).astype(np.int32)
        self.q = q.reshape(n * ho * wo, kh * kw)
        # input pixel -> output pixel per tap: output i = (input i + pb - a*d) / s
        ri = (np.arange(h) + pb)[:, None] - (np.arange(kh) * d[0])[None, :]  # (h, kh)
        rj = (np.arange(w) + pl)[:, None] - (np.arange(kw) * d[1])[None, :]  # (w, kw)
        oki = (ri >= 0) & (ri % s[0] == 0) & (ri // s[0] < ho)
        okj = (rj >= 0) & (rj % s[1] == 0) & (rj // s[1] < wo)
        r = ((ri // s[0])[:, None, :, None] * wo + (rj // s[1])[None, :, None, :])[None] \
            + (np.arange(n) * (ho * wo))[:, None, None, None, None]  # (n, h, w, kh, kw)
        r = np.where((oki[:, None, :, None] & okj[None, :, None, :])[None], r, n * ho * wo)
        self.reach = r.astype(np.int32).reshape(n * h * w, kh * kw)
        self.qwin = self.winpix = None
        if window is not None:
            p0, p1 = window
            h2, w2 = ho // p0, wo // p1
            q = q[:, :h2 * p0, :w2 * p1].reshape(n, h2, p0, w2, p1, kh * kw)
            self.qwin = np.ascontiguousarray(q.transpose(0, 1, 3, 2, 4, 5)).reshape(n * h2 * w2,
                                                                                   -1)
            pix = np.arange(n * ho * wo, dtype=np.int32).reshape(n, ho, wo)
            pix = pix[:, :h2 * p0, :w2 * p1].reshape(n, h2, p0, w2, p1)
            self.winpix = np.ascontiguousarray(pix.transpose(0, 1, 3, 2, 4)).reshape(
                n * h2 * w2, p0 * p1)


def _geometry(plan, shape, out_hw, window) -> _Geometry:
    """The cached :class:`_Geometry` (at most 4 input shapes per op are kept: a long run
    with many batch sizes does not grow memory)."""
    cache = plan.__dict__.setdefault("_event_geometry", {})
    key = (shape, window)
    if key not in cache:
        if len(cache) >= 4:
            cache.clear()
        cache[key] = _Geometry(plan, shape, out_hw, window)
    return cache[key]


#: Rough per-element costs (ns, one core, bench/engine_bench.py machine) for choosing between
#: the dense kernel and :func:`sparse_conv_events` once the kept rows are known: dense BLAS
#: multiply-add, dense per-output-value work (im2col, pooling, requantization), compiled
#: sparse multiply-add (float32 / float64), event-path per-kept-value work (gather-sum,
#: pooling, requantization), and the fixed cost of one more float32 channel group.
COST_NS = {"blas_mac": 0.1, "dense_value": 7.0, "sparse_mac": 0.3, "sparse_mac64": 0.5,
           "compiled_mac": 0.15, "event_value": 16.0, "group": 1e6}


def _cost_ns(k, cout, outputs, synapses, kept, mac="sparse_mac"):
    """Estimated ``(dense, event)`` cost of a conv with ``k = taps*c`` inputs per output;
    ``mac`` names the event kernel's cost per synapse and output channel."""
    c = COST_NS
    dense = outputs * cout * (k * c["blas_mac"] + c["dense_value"])
    return dense, cout * (synapses * c[mac] + kept * c["event_value"])


def sparse_conv_events(plan, x: np.ndarray, sp) -> RowAcc | None:
    """Event-driven conv2d at the element level with a compiled sparse product (scipy).

    Every non-zero input element ``(pixel, channel)`` is an event; through kernel tap ``t`` it
    reaches one output pixel. The events form a sparse im2col matrix ``A`` (rows: the output
    pixels kept, columns: ``(tap, channel)``), built directly in CSR layout with sorted
    columns: row ``r``'s entries are, tap by tap, the events of the input pixel that tap reads.
    Events are enumerated pixel-major into a CSR ``X`` (active pixels x channels) stacked
    once per tap with the columns moved to the tap's block; ``A`` is then one compiled CSR
    row gather of it (no sorting; the tap -> input pixel map of every output pixel is cached
    per input shape, :func:`_tap_pixels`). ``A @ W`` (``W = kernel.reshape(taps*c, cout)``)
    then runs in scipy's compiled loop: ``events x taps x cout`` multiply-adds, no dense
    GEMM, no NumPy scatter. Rows are kept only for the output pixels some event reaches
    (with a fused pool that tiles the output: the pixels of the pooling windows some event
    reaches, :func:`_window_mode`). Returns ``None`` (run the dense kernel) when the kept rows
    are so many that the dense kernel is estimated cheaper (:data:`COST_NS`).

    Exactness: the channels are split into the dense path's float32-exact groups (one group
    unless per-axis alignments push the bound past 2^24); any summation order is exact since
    every partial sum is a sub-sum of ``sum |w x| < 2^24`` (2^53 for a float64 group); each
    group's values carry their power-of-two alignment relative to the lowest group base
    (terms stay multiples of ``2^(base_g - lowest)``, so the float32 bound holds in those
    units) and the groups are summed in float64, or everything runs in int64 past 2^53.
    """
    a = plan.op.attrs
    kernel = plan.kernel
    kh, kw, c, cout = kernel.shape
    taps = kh * kw
    s, d = a["strides"], a["dilation_rate"]
    n, h, w, _ = x.shape
    ho, pb, _ = kernels.conv_geometry(h, kh, s[0], a["padding"], d[0])
    wo, pl, _ = kernels.conv_geometry(w, kw, s[1], a["padding"], d[1])
    npix = n * h * w
    # events, pixel-major (channels ascending within a pixel)
    k = np.flatnonzero(x != 0)  # (2x faster than on the int64 values)
    vals = x.ravel()[k]
    pix, ch = np.divmod(k, c) if c > 1 else (k, np.zeros(k.size, dtype=np.int64))
    active = np.zeros(npix, dtype=bool)
    active[pix] = True
    reached = _reached(active.reshape(n, h, w), (kh, kw), s, d, a["padding"], (ho, wo))
    rows = windows = None
    window = _window_mode(plan, ho, wo)
    if window:  # kept rows: the p0*p1 pixels of each live window
        p0, p1 = plan.pool["pool_size"]
        h2, w2 = ho // p0, wo // p1
        rq = reached[:, :h2 * p0, :w2 * p1]
        live = rq[:, 0::p0, 0::p1].copy()
        for di in range(p0):
            for dj in range(p1):
                if di or dj:
                    live |= rq[:, di::p0, dj::p1]
        windows = np.flatnonzero(live)
        nrows = windows.size * p0 * p1
    else:  # kept rows: the reached output pixels
        rows = np.flatnonzero(reached)
        nrows = rows.size
    dense_ns, event_ns = _cost_ns(taps * c, cout, n * ho * wo, k.size * taps, nrows)
    if event_ns > dense_ns:
        return None  # too many reached outputs for the events to pay off: run dense
    geo = _geometry(plan, (n, h, w), (ho, wo), (p0, p1) if window else None)
    kept = geo.winpix[windows].ravel() if window else rows
    # rank of each input pixel among the active ones; pixels without events (and padding,
    # index npix) read the empty row na
    apix = np.flatnonzero(active)
    na = apix.size
    prank = np.full(npix + 1, na, dtype=np.int64)
    prank[apix] = np.arange(na)
    parts, cmap, smat = [], None, None
    groups = _sparse_groups(plan, c, ch, vals)
    lowest = min(base for _, base, _ in groups)
    for chans, _base, dt in groups:
        cg = chans.size
        if len(groups) > 1:
            sel = np.zeros(c, dtype=bool)
            sel[chans] = True
            sel = sel[ch]
            g_pix, g_ch, g_vals = pix[sel], ch[sel], vals[sel]
        else:
            g_pix, g_ch, g_vals = pix, ch, vals
        local = np.zeros(c, dtype=np.int32)
        local[chans] = np.arange(cg)
        if dt == np.int64:
            v = np.left_shift(g_vals, plan.align[g_ch]) if np.any(plan.align) else g_vals
        else:
            v = g_vals.astype(dt)
            rel = plan.align[chans] - lowest  # exact: terms: multiples of 2^(_base-lowest)
            if np.any(rel):
                v *= np.ldexp(1.0, rel).astype(dt)[local[g_ch]]
        ne = v.size
        itype = np.int32 if taps * max(ne, cg, nrows) < 2**31 else np.int64
        tap = np.arange(taps, dtype=itype)
        if ne < nrows:  # fewer events than kept rows: event-stationary, CSC (tap, channel)
            if cmap is None:
                cmap = np.full(n * ho * wo + 1, nrows, dtype=itype)  # nrows: reaches no row
                cmap[kept] = np.arange(nrows, dtype=itype)
            order = np.argsort(local[g_ch].astype(np.int16 if cg < 2**15 else np.int64),
                               kind="stable") if cg > 1 else slice(None)
            dest = cmap[geo.reach[g_pix[order]].T]  # (taps, events) channel-major per tap
            data = np.broadcast_to(v[order], dest.shape)
            colid = (tap * cg)[:, None] + local[g_ch][order][None, :]
            keep = dest != nrows
            cnt = np.bincount(colid[keep], minlength=taps * cg)
            indptr = np.zeros(taps * cg + 1, dtype=itype)
            np.cumsum(cnt, out=indptr[1:])
            mat = sp.csc_matrix((data[keep], dest[keep], indptr), shape=(nrows, taps * cg))
            kmat = _cached(plan, ("wtap", chans.tobytes(), dt.str), lambda ch_=chans, dt_=dt:
                           np.ascontiguousarray(kernel[:, :, ch_, :].reshape(-1, cout))
                           .astype(dt_))
            part = np.asarray(mat @ kmat)
        else:  # packets: Z = X @ [W_t]_t per active pixel, then Y = S @ Z (gather-sum)
            wcat = _cached(plan, ("wcat", chans.tobytes(), dt.str), lambda ch_=chans, dt_=dt:
                           np.ascontiguousarray(kernel[:, :, ch_, :].transpose(2, 0, 1, 3)
                                                .reshape(ch_.size, -1)).astype(dt_))
            if ne > PACKET_DENSE * na * cg and dt != np.int64:  # dense packets: BLAS
                xmat = np.zeros((na + 1, cg), dtype=dt)
                xmat[prank[g_pix], local[g_ch]] = v
            else:  # sparse packets (CSR, pixel-major events)
                xptr = np.zeros(na + 2, dtype=itype)
                np.cumsum(np.bincount(prank[g_pix], minlength=na + 1), out=xptr[1:])
                xmat = sp.csr_matrix((v, local[g_ch].astype(itype), xptr), shape=(na + 1, cg))
            z = np.asarray(xmat @ wcat).reshape((na + 1) * taps, cout)  # row rank*taps + t
            if smat is None:  # output row r sums Z[rank(q[r, t]) * taps + t] over the taps
                q = geo.qwin[windows].reshape(-1, taps) if window else geo.q[rows]
                qr = prank[q]  # (R, taps)
                hit = qr != na  # taps reading a pixel with events (others add zeros)
                sptr = np.zeros(nrows + 1, dtype=itype)
                np.cumsum(np.count_nonzero(hit, axis=1), out=sptr[1:])
                smat = sp.csr_matrix((np.ones(int(sptr[-1]), dtype=dt),
                                      (qr * taps + tap)[hit].astype(itype), sptr),
                                     shape=(nrows, (na + 1) * taps))
            part = np.asarray(smat.astype(dt, copy=False) @ z)
        parts.append(part)
    acc = parts[0] if len(parts) == 1 else np.add(parts[0], parts[1], dtype=np.float64)
    for part in parts[2:]:
        acc += part
    if lowest:  # a power of two: exact in any float format (the int64 group has lowest 0)
        acc *= acc.dtype.type(2.0 ** lowest)
    return RowAcc(acc, (n, ho, wo, cout), rows=rows, windows=windows)


def rows_finish(plan, racc: RowAcc) -> np.ndarray:
    """Bias, requantization and fused pooling of :class:`RowAcc` accumulators.

    Pool windows (or output pixels) no event reaches have accumulator 0, so their output is
    the constant ``requant(0)`` of each channel (valid for a per-channel bias); only the kept
    rows are requantized. Any other case (int64 requantization, a spatial bias map, an
    overlapping or padded pool) scatters the rows into a dense accumulator and runs the dense
    ``plan.finish``.
    """
    n, ho, wo, cout = racc.shape
    if racc.windows is not None:  # compiled pool + requantization when it applies
        p0, p1 = plan.pool["pool_size"]
        out = compiled_events.finish(plan, racc.acc, racc.windows, n * (ho // p0) * (wo // p1),
                                     p0 * p1)
        if out is not None:
            return out.reshape(n, ho // p0, wo // p1, cout)
    elif not plan.pool:
        out = compiled_events.finish(plan, racc.acc, racc.rows, n * ho * wo, 1)
        if out is not None:
            return out.reshape(n, ho, wo, cout)
    if racc.windows is not None:  # guaranteed by _window_mode
        p0, p1 = plan.pool["pool_size"]
        win = racc.acc.reshape(-1, p0 * p1, cout)
        vals = np.maximum(win[:, 0], win[:, 1]) if p0 * p1 > 1 else win[:, 0].copy()
        for j in range(2, p0 * p1):  # (pairwise maxima: faster than .max(axis=1))
            np.maximum(vals, win[:, j], out=vals)
        out = np.empty((n, ho // p0, wo // p1, cout), dtype=np.int64)
        idx = racc.windows
    elif not plan.pool and plan.float_requant and np.ndim(plan.bias) <= 1:
        vals = racc.acc
        out = np.empty((n, ho, wo, cout), dtype=np.int64)
        idx = racc.rows
    else:
        dense = np.zeros((n * ho * wo, cout), dtype=racc.acc.dtype)
        dense[racc.rows] = racc.acc
        return plan.finish(dense.reshape(n, ho, wo, cout), partial(neural_output, plan.op))
    out[...] = plan.requant(np.zeros(cout, racc.acc.dtype))
    if idx.size:
        out.reshape(-1, cout)[idx] = plan.requant(vals)
    return out


def compiled_conv_events(plan, x: np.ndarray, nnz=None):
    """The compiled element-event conv (:func:`fixedq.engine.compiled_events.conv_events`) with
    this module's pool-window rule and cost model: a :class:`RowAcc`, ``None`` (cannot run) or
    ``compiled_events.DENSE`` (the dense kernel is estimated cheaper)."""
    a = plan.op.attrs
    kh, kw, c, cout = plan.kernel.shape
    n, h, w, _ = x.shape
    ho = kernels.conv_geometry(h, kh, a["strides"][0], a["padding"], a["dilation_rate"][0])[0]
    wo = kernels.conv_geometry(w, kw, a["strides"][1], a["padding"], a["dilation_rate"][1])[0]
    window = tuple(plan.pool["pool_size"]) if _window_mode(plan, ho, wo) else None

    def decide(nev, kept):
        dense_ns, event_ns = _cost_ns(kh * kw * c, cout, n * ho * wo, nev * kh * kw, kept,
                                      mac="compiled_mac")
        return event_ns <= dense_ns

    return compiled_events.conv_events(plan, x, window, decide, nnz)


def column_dense_events(plan, x: np.ndarray, cols: np.ndarray, dt) -> np.ndarray:
    """Event-driven dense layer: only the input features with events enter the product,
    ``y = x[:, cols] @ W[cols]`` (the skipped features are zero in every sample)."""
    flat = x.reshape(-1, x.shape[-1])
    kern = _cached(plan, ("w", dt), lambda: plan.kernel.astype(dt))
    part = flat[:, cols].astype(dt)
    if np.any(plan.align):
        part *= np.ldexp(1.0, plan.align[cols]).astype(dt)
    return (part @ kern[cols]).reshape(*x.shape[:-1], kern.shape[1])


def event_linear_auto(plan, x: np.ndarray):
    """``(accumulators, kernel)``: an event kernel when few enough inputs carry events,
    otherwise the dense kernel (identical integers either way). ``kernel`` names the kernel
    that ran: ``"compiled"``, ``"sparse"``, ``"pixel"``, ``"columns"``, ``"element"`` or
    ``"dense"``.

    conv2d: when at most :data:`EVENT_MAX_DENSITY` of the input elements are non-zero and the
    cost model agrees, the compiled element-event kernel with numba
    (:func:`compiled_conv_events`, a :class:`RowAcc`), else with scipy
    (:func:`sparse_conv_events`, also when the batch's bound exceeds the compiled kernel's
    int64 range); without either, the NumPy pixel-event kernel (:func:`pixel_conv_events`, a
    :class:`CompactAcc`) when at most :data:`EVENT_MAX_ACTIVE` of the input pixels are active.
    dense: the active input features only (:func:`column_dense_events`).
    """
    t = plan.type
    if t not in EVENT_TYPES or not x.size:
        return plan.linear(x), "dense"
    if t == "conv2d" and compiled_events.backend() is not None:
        nnz = int(np.count_nonzero(x))
        if nnz > EVENT_MAX_DENSITY * x.size:
            return plan.linear(x), "dense"
        racc = compiled_conv_events(plan, x, nnz)
        if racc is compiled_events.DENSE:
            return plan.linear(x), "dense"
        if racc is not None:
            return racc, "compiled"
    if t == "conv2d":  # scipy, else NumPy (also when the batch's bound needs more than int64)
        sp = sparse_backend()
        if sp is not None:
            if np.count_nonzero(x) > EVENT_MAX_DENSITY * x.size:
                return plan.linear(x), "dense"
            racc = sparse_conv_events(plan, x, sp)
            return (racc, "sparse") if racc is not None else (plan.linear(x), "dense")
        active = np.any(x != 0, axis=-1).ravel() if x.shape[-1] > 1 else x.ravel() != 0
    else:
        active = np.any(x.reshape(-1, x.shape[-1]) != 0, axis=0)
    idx = np.flatnonzero(active)
    if idx.size > EVENT_MAX_ACTIVE * active.size:
        return plan.linear(x), "dense"
    dt = _float_dtype(plan, x)
    if dt is None:
        acc, _ = event_linear(plan.op, aligned_input(plan.op, x))
        return acc, "element"
    if t == "conv2d":
        return pixel_conv_events(plan, x, idx, dt), "pixel"
    return column_dense_events(plan, x, idx, dt), "columns"


def run_neural_events(op, x: np.ndarray, stats: dict | None = None, plan=None) -> np.ndarray:
    """Run a neural op in event mode (auto-selected kernel); output identical to the dense path.

    ``plan`` is the op's :class:`fixedq.engine.kernels.NeuralPlan` (built if missing).
    """
    plan = plan if plan is not None else kernels.NeuralPlan(op)
    acc, kernel = event_linear_auto(plan, x)
    if stats is not None:
        stats[op.name]["event_driven"] = kernel != "dense"
        stats[op.name]["event_kernel"] = kernel
    if isinstance(acc, RowAcc):
        return rows_finish(plan, acc)
    if isinstance(acc, CompactAcc):
        return event_finish(plan, acc)
    return plan.finish(acc, partial(neural_output, op))


def _synops_estimate(op, x: np.ndarray) -> int:
    """Synaptic ops an event-driven run of ``op`` would need on input ``x`` (exact for conv2d,
    depthwise and dense; transpose counts every tap of every event)."""
    t = op.attrs["type"]
    kernel = op.arrays["kernel"]
    if t == "dense":
        return int(np.count_nonzero(x)) * kernel.shape[1]
    if t == "transpose":
        return int(np.count_nonzero(x)) * kernel.shape[0] * kernel.shape[1] * kernel.shape[2]
    a = op.attrs
    kh, kw = kernel.shape[:2]
    fan_out = kernel.shape[3]
    cnt = np.count_nonzero(x, axis=-1)[..., None]
    n, h, w, _ = cnt.shape
    ho, *ph = kernels.conv_geometry(h, kh, a["strides"][0], a["padding"], a["dilation_rate"][0])
    wo, *pw = kernels.conv_geometry(w, kw, a["strides"][1], a["padding"],
                                    a["dilation_rate"][1])
    cp = np.pad(cnt, ((0, 0), tuple(ph), tuple(pw), (0, 0)))
    total = 0
    for _, view in kernels.taps(cp, (kh, kw), a["strides"], a["dilation_rate"], (ho, wo)):
        total += int(view.sum())
    return total * fan_out


def dense_macs(op, x: np.ndarray) -> int:
    """Multiply-accumulates of the dense execution of a neural op on input ``x``."""
    t = op.attrs["type"]
    k = op.arrays["kernel"].shape
    n = x.shape[0]
    shape = op.attrs.get("linear_shape", [0])
    if None in shape:  # a dynamic-size model: the size of this input's output
        a = op.attrs
        geo = [kernels.conv_geometry(x.shape[1 + i], k[i], a["strides"][i], a["padding"],
                                     a["dilation_rate"][i])[0] for i in range(2)] \
            if t in ("conv2d", "depthwise") else [0, 0]
        shape = [*geo, shape[-1]]
    lin = int(np.prod(shape))
    if t == "dense":
        return int(np.prod(x.shape[:-1])) * k[0] * k[1]
    if t == "conv2d":
        return n * lin * k[0] * k[1] * k[2]
    if t == "depthwise":
        return n * lin * k[0] * k[1]
    return int(x.size) * k[0] * k[1] * k[2]


def record(stats: dict, op, xs: list[np.ndarray], event_mode: bool = False) -> None:
    """Accumulate the event statistics of ``op`` on inputs ``xs`` into ``stats[op.name]``.

    ``synops`` is the exact count of an element-level event-driven run (each non-zero input
    times the outputs it reaches), whichever kernel actually runs; ``event_driven`` tells
    whether an event kernel ran and ``event_kernel`` which one (:func:`run_neural_events`).
    """
    entry = stats.setdefault(op.name, {"events": 0, "inputs": 0, "synops": 0, "dense_macs": 0,
                                       "event_driven": False, "event_kernel": None})
    entry["events"] += int(sum(np.count_nonzero(x) for x in xs))
    entry["inputs"] += int(sum(x.size for x in xs))
    entry["sparsity"] = 1.0 - entry["events"] / entry["inputs"] if entry["inputs"] else 0.0
    if op.kind == "neural":
        x = aligned_input(op, xs[0])
        entry["dense_macs"] += dense_macs(op, x)
        entry["synops"] += _synops_estimate(op, x)


def format_stats(rows: list[dict]) -> str:
    """A text table of ``Model.event_stats`` rows."""
    lines = [f"{'op':24} {'kind':8} {'events':>12} {'sparsity':>9} {'synops':>14} "
             f"{'dense MACs':>14}  kernel"]
    for r in rows:
        lines.append(f"{r['name'][:24]:24} {r['kind']:8} {r['events']:>12} "
                     f"{r['sparsity']:>9.3f} {r['synops']:>14} {r['dense_macs']:>14}  "
                     f"{r.get('event_kernel') or '-'}")
    return "\n".join(lines)
