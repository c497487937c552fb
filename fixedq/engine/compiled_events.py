"""Compiled element-event conv2d (numba; an optional accelerator of the event path).

Every non-zero input element ``(pixel, channel)`` of a conv2d is an *event*. Through kernel tap
``t`` it reaches one output pixel, whose accumulator vector receives ``v * W[t, channel, :]``.
This module computes those sums in machine code (numba, the ``fixedq[events]`` extra) in
**integer** arithmetic:

- int32 accumulators when the batch's own bound ``max_o sum_c sum_t |w| * m_c * 2^a_c`` (``m_c``:
  the batch's largest ``|x|`` in channel ``c``, ``a_c``: its alignment shift) is below 2^31, int64
  below 2^62; every partial sum is a sub-sum of that bound, so no order of additions overflows
  and the sums are the exact integers of the dense path. Beyond 2^62 the caller falls back.
- Accumulators exist only for the output pixels some event reaches or, with a fused max-pool
  that tiles the output, for the pixels of the pooling windows some event reaches (the same
  :class:`fixedq.engine.events.RowAcc` layout the scipy kernel returns, finished by
  :func:`fixedq.engine.events.rows_finish`): work and memory scale with the events and their
  fan-out, not with the image size.

Three compiled functions, single-threaded (a version parallel over the samples lost whole
16 ms scheduler quanta per call whenever another process held one of the 2 cores):
:func:`_collect` lists each pixel's events and marks the live output slots (pixels or
windows); :func:`_gather` then sums, output pixel by output pixel, the events its taps read
into one accumulator row that stays in cache; :func:`_finish` pools and requantizes the kept
rows straight into the output. numba is imported lazily (``import fixedq.engine`` stays fast
and never needs it); without it :func:`backend` returns ``None`` and the engine uses the scipy
or NumPy event kernels. The first call compiles (a few seconds; cached on disk next to this
file when it is writable).

Example:
    >>> import numpy as np
    >>> from fixedq.engine import compiled_events, kernels
    >>> from fixedq.engine.ops import Op
    >>> op = Op("c", "neural", ["x"], {"type": "conv2d", "accum_dtype": "float32",
    ...         "strides": [1, 1], "padding": "same", "dilation_rate": [1, 1],
    ...         "acc_lo": -2**31, "acc_hi": 2**31 - 1},
    ...         {"kernel": np.ones((3, 3, 1, 2), np.int64), "bias": np.zeros(2, np.int64),
    ...          "multiplier": np.ones(2, np.int64), "shift": np.zeros(2, np.int64),
    ...          "out_lo": np.zeros(2, np.int64), "out_hi": np.full(2, 255)})
    >>> x = np.zeros((1, 5, 5, 1), np.int64); x[0, 2, 2, 0] = 7   # one event
    >>> racc = compiled_events.conv_events(kernels.NeuralPlan(op), x)
    >>> racc.acc.shape, racc.rows.tolist()   # the 9 output pixels it reaches, 2 channels
    ((9, 2), [6, 7, 8, 11, 12, 13, 16, 17, 18])
    >>> int(racc.acc.sum())                  # 9 taps x 2 channels x 7
    126
"""

from __future__ import annotations

import os
from functools import lru_cache
from types import SimpleNamespace

import numpy as np

from fixedq.engine import kernels

INT32_EXACT = float(2**31)
INT64_EXACT = float(2**62)


def _collect(x, c, hw, reach, slot_of, nslots, live, ptr, chs, vals, cmax):
    # pragma: no cover - compiled by numba
    """One pass over the input: the events of every pixel in pixel-major order (``chs``,
    ``vals``; pixel ``g``'s events are ``ptr[g]:ptr[g+1]``), the live output slots
    (``live[b*nslots + s]``: some event of sample ``b`` reaches slot ``s``) and the largest
    ``|x|`` per channel (``cmax``, for the exactness bound). Returns the number of events."""
    n = live.size // nslots
    taps = reach.shape[1]
    e = 0
    for b in range(n):
        for p in range(hw):
            g = b * hw + p
            base = g * c
            first = e
            for ch in range(c):
                v = x[base + ch]
                if v != 0:
                    chs[e] = ch
                    vals[e] = v
                    e += 1
                    a = -v if v < 0 else v
                    if a > cmax[ch]:
                        cmax[ch] = a
            ptr[g + 1] = e
            if e > first:
                for t in range(taps):
                    o = reach[p, t]
                    if o >= 0:
                        s = slot_of[o]
                        if s >= 0:
                            live[b * nslots + s] = True
    return e


def _gather(kept, nslots, hw, q, slot_pix, ptr, chs, vals, align, w, acc):
    # pragma: no cover - compiled by numba
    """Output-stationary accumulation: for every kept slot and each of its output pixels,
    ``acc[row, :] = sum over taps t, events (ch, v) of the input pixel tap t reads of
    (v << align[ch]) * w[t, ch, :]``; the row stays in cache while it sums (in ``acc``'s
    integer type: int32 or int64, chosen by the caller's bound)."""
    taps, cout = w.shape[0], w.shape[2]
    sub = slot_pix.shape[1]
    for k in range(kept.size):
        b = kept[k] // nslots
        s = kept[k] - b * nslots
        for j in range(sub):
            o = slot_pix[s, j]
            row = acc[k * sub + j]
            for t in range(taps):
                p = q[o, t]
                if p < 0:
                    continue
                g = b * hw + p
                for e in range(ptr[g], ptr[g + 1]):
                    ch = chs[e]
                    va = vals[e] << align[ch]  # (int32 rows: LLVM narrows the product)
                    wr = w[t, ch]
                    for i in range(cout):
                        row[i] += va * wr[i]


def _finish(acc, kept, sub, scale, offset, lo, hi, signed, const, out):
    # pragma: no cover - compiled by numba
    """Fused max-pool (over each kept slot's ``sub`` rows) and requantization into the full
    output ``out`` (``(slots, cout)`` int64); slots no event reached get ``const``
    (``requant(0)``). The same float64 operations as ``NeuralPlan.requant`` without an
    accumulator clip: ``acc*scale`` and ``+ offset`` are exact under its proof, so neither
    evaluation order nor a fused multiply-add can change a bit."""
    slots, cout = out.shape
    j = 0
    for r in range(slots):
        if j < kept.size and kept[j] == r:
            base = j * sub
            for i in range(cout):
                m = acc[base, i]
                for u in range(1, sub):
                    v = acc[base + u, i]
                    if v > m:
                        m = v
                y = m * scale[i] + offset[i]
                if y < lo[i]:
                    y = lo[i]
                if y > hi[i]:
                    y = hi[i]
                if signed:
                    y = np.floor(y)
                out[r, i] = np.int64(y)
            j += 1
        else:
            for i in range(cout):
                out[r, i] = const[i]


@lru_cache(maxsize=1)
def backend():
    """The compiled kernels (a namespace) when numba is installed, else ``None``; cached (a
    failed import would otherwise be retried on every layer)."""
    try:
        import numba
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    fns = {"collect": _collect, "gather": _gather, "finish": _finish}
    try:  # on-disk cache of the machine code (next to this file, or numba's user cache dir)
        jit = numba.njit(cache=True, nogil=True)
        return SimpleNamespace(**{k: jit(f) for k, f in fns.items()})
    except RuntimeError:  # pragma: no cover - no writable cache location: compile per process
        jit = numba.njit(cache=False, nogil=True)
        return SimpleNamespace(**{k: jit(f) for k, f in fns.items()})


def finish(plan, acc, kept, slots, sub):
    """Pool (``sub`` rows per kept slot) and requantize integer accumulators into a new
    ``(slots, cout)`` int64 array, or ``None`` when this fast path does not apply (numba
    missing, float accumulators, float requantization not proven exact, an accumulator clip or
    a spatial bias map: the caller's NumPy finish handles those)."""
    nb = backend()
    if nb is None or acc.dtype.kind != "i" or not plan.float_requant or plan.acc_clip \
            or np.ndim(plan.bias) > 1:
        return None
    cout = acc.shape[1]
    const = plan.requant(np.zeros(cout, acc.dtype))
    out = np.empty((slots, cout), dtype=np.int64)
    per_channel = [np.ascontiguousarray(np.broadcast_to(v, (cout,)), dtype=np.float64)
                   for v in (plan.scale, plan.offset, plan.out_lo, plan.out_hi)]
    kept = np.asarray(kept, dtype=np.int64)
    cuts = _split(slots)
    if len(cuts) == 2:
        nb.finish(acc, kept, sub, *per_channel, not plan.unsigned_out, const, out)
        return out
    ks = np.searchsorted(kept, cuts)
    _run_parts([(nb.finish, (acc[ks[i] * sub:ks[i + 1] * sub], kept[ks[i]:ks[i + 1]] - cuts[i],
                             sub, *per_channel, not plan.unsigned_out, const,
                             out[cuts[i]:cuts[i + 1]]))
                for i in range(len(cuts) - 1)])
    return out


#: Threads the compiled kernels split their work over (the compiled functions release the
#: GIL); 1 runs them in the calling thread. Work below :data:`MIN_SPLIT` rows is never split.
THREADS = min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
              else os.cpu_count() or 1)
MIN_SPLIT = 2048


def _split(rows: int) -> np.ndarray:
    """Boundaries splitting ``rows`` rows into :data:`THREADS` near-equal parts."""
    parts = THREADS if rows >= MIN_SPLIT else 1
    return np.linspace(0, rows, parts + 1).astype(np.int64)


_POOLS: dict = {}


def _pool():
    """This process's worker threads (a forked child gets its own: the parent's threads do not
    exist there, and submitting to the copied pool would wait forever)."""
    from concurrent.futures import ThreadPoolExecutor

    key = (os.getpid(), THREADS)
    if key not in _POOLS:
        _POOLS.clear()
        _POOLS[key] = ThreadPoolExecutor(max_workers=max(1, THREADS - 1),
                                         thread_name_prefix="fixedq-events")
    return _POOLS[key]


def _run_parts(calls):
    """Run ``[(fn, args), ...]``: the first in this thread, the others in the pool."""
    futures = [_pool().submit(fn, *args) for fn, args in calls[1:]]
    calls[0][0](*calls[0][1])
    for f in futures:
        f.result()


class _Geometry:
    """Per-sample index maps of one conv geometry (cached per input size), int64:

    - ``reach``: ``(h*w, taps)``, the output pixel each tap sends an input pixel to (``-1``:
      none, padding side or stride);
    - ``q``: ``(ho*wo, taps)``, the input pixel each tap of an output pixel reads (``-1``:
      padding);
    - ``slot_of``: ``(ho*wo,)``, the slot of each output pixel: its pooling window
      (``i2*w2 + j2``) in window mode, else the pixel itself; ``-1`` for pixels outside the
      windows (a 'valid' pool drops them); ``slot_pix``: ``(slots, sub)``, the output pixels
      of each slot, row-major within a window.
    """

    def __init__(self, plan, hw, out_hw, window):
        a = plan.op.attrs
        kh, kw = plan.kernel.shape[:2]
        s, d = a["strides"], a["dilation_rate"]
        (h, w), (ho, wo) = hw, out_hw
        pb = kernels.conv_geometry(h, kh, s[0], a["padding"], d[0])[1]
        pl = kernels.conv_geometry(w, kw, s[1], a["padding"], d[1])[1]
        # output -> input: input i = output i * s + tap * d - pad
        ii = (np.arange(ho) * s[0])[:, None] + (np.arange(kh) * d[0] - pb)[None, :]  # (ho, kh)
        jj = (np.arange(wo) * s[1])[:, None] + (np.arange(kw) * d[1] - pl)[None, :]  # (wo, kw)
        ok = ((ii >= 0) & (ii < h))[:, None, :, None] & ((jj >= 0) & (jj < w))[None, :, None, :]
        q = np.where(ok, ii[:, None, :, None] * w + jj[None, :, None, :], -1)
        self.q = np.ascontiguousarray(q.reshape(ho * wo, kh * kw), dtype=np.int64)
        # input -> output: output i = (input i + pad - tap * d) / s where divisible
        ri = (np.arange(h) + pb)[:, None] - (np.arange(kh) * d[0])[None, :]  # (h, kh)
        rj = (np.arange(w) + pl)[:, None] - (np.arange(kw) * d[1])[None, :]  # (w, kw)
        oki = (ri >= 0) & (ri % s[0] == 0) & (ri // s[0] < ho)
        okj = (rj >= 0) & (rj % s[1] == 0) & (rj // s[1] < wo)
        r = (ri // s[0])[:, None, :, None] * wo + (rj // s[1])[None, :, None, :]
        r = np.where(oki[:, None, :, None] & okj[None, :, None, :], r, -1)  # (h, w, kh, kw)
        self.reach = np.ascontiguousarray(r.reshape(h * w, kh * kw), dtype=np.int64)
        pix = np.arange(ho * wo).reshape(ho, wo)
        if window is None:
            self.slots, self.sub = ho * wo, 1
            self.slot_of = pix.reshape(-1)
            self.slot_pix = pix.reshape(-1, 1)
        else:
            p0, p1 = window
            h2, w2 = ho // p0, wo // p1
            self.slots, self.sub = h2 * w2, p0 * p1
            oi, oj = np.divmod(pix.reshape(-1), wo)
            inside = (oi < h2 * p0) & (oj < w2 * p1)
            self.slot_of = np.where(inside, (oi // p0) * w2 + oj // p1, -1)
            self.slot_pix = np.ascontiguousarray(
                pix[:h2 * p0, :w2 * p1].reshape(h2, p0, w2, p1).transpose(0, 2, 1, 3)
            ).reshape(h2 * w2, p0 * p1)


def _geometry(plan, hw, out_hw, window) -> _Geometry:
    cache = plan.__dict__.setdefault("_compiled_geometry", {})
    key = (hw, window)
    geo = cache.get(key)  # (one lookup: another thread may clear the cache meanwhile)
    if geo is None:
        if len(cache) >= 4:  # many image sizes: memory stays bounded
            cache.clear()
        geo = cache[key] = _Geometry(plan, hw, out_hw, window)
    return geo


def _weights(plan, dtype):
    """The kernel as ``(taps, cin, cout)`` in ``dtype`` (cached)."""
    cache = plan.__dict__.setdefault("_compiled_weights", {})
    key = np.dtype(dtype).str
    wts = cache.get(key)
    if wts is None:
        k = plan.kernel
        wts = cache[key] = np.ascontiguousarray(k.reshape(-1, k.shape[2], k.shape[3]),
                                                dtype=dtype)
    return wts


#: :func:`conv_events`' answer when its cost model prefers the dense kernel.
DENSE = "dense"


def conv_events(plan, x: np.ndarray, window=None, decide=None, nnz=None):
    """Exact conv2d accumulators of the kept rows (:class:`fixedq.engine.events.RowAcc`);
    ``None`` when it cannot run (numba missing, or the batch's bound needs more than int64);
    :data:`DENSE` when ``decide(events, kept_rows)`` (a cost model) is false, i.e. the dense
    kernel is estimated cheaper.

    ``window``: ``(p0, p1)`` to keep whole pooling windows (the caller checked that pooling the
    accumulators is exact, :func:`fixedq.engine.events._window_mode`), else ``None``. ``nnz``:
    the number of non-zero elements of ``x`` when the caller already counted them.
    """
    from fixedq.engine.events import RowAcc  # (events imports this module lazily)

    nb = backend()
    if nb is None:
        return None
    a = plan.op.attrs
    kh, kw, c, cout = plan.kernel.shape
    s, d = a["strides"], a["dilation_rate"]
    n, h, w, _ = x.shape
    ho = kernels.conv_geometry(h, kh, s[0], a["padding"], d[0])[0]
    wo = kernels.conv_geometry(w, kw, s[1], a["padding"], d[1])[0]
    geo = _geometry(plan, (h, w), (ho, wo), window)
    xf = np.ascontiguousarray(x, dtype=np.int64).reshape(-1)
    live = np.zeros(n * geo.slots, dtype=np.bool_)
    ptr = np.zeros(n * h * w + 1, dtype=np.int64)
    nnz = int(np.count_nonzero(xf)) if nnz is None else nnz
    chs = np.empty(nnz, dtype=np.int32)
    vals = np.empty(nnz, dtype=np.int64)
    cmax = np.zeros(c, dtype=np.int64)
    nev = nb.collect(xf, c, h * w, geo.reach, geo.slot_of, geo.slots, live, ptr, chs, vals,
                     cmax)
    # no partial sum exceeds max_o sum_c sum_t |w| * cmax_c * 2^align_c
    total = float(np.max((plan.abs_w * (cmax * np.ldexp(1.0, plan.align))[:, None]).sum(axis=0),
                         initial=0.0))
    if total >= INT64_EXACT:
        return None
    kept = np.flatnonzero(live)
    if decide is not None and not decide(int(nev), kept.size * geo.sub):
        return DENSE
    dt = np.int32 if total < INT32_EXACT else np.int64
    acc = np.zeros((kept.size * geo.sub, cout), dtype=dt)
    if kept.size:
        wts = _weights(plan, dt)
        cuts = _split(kept.size)
        _run_parts([(nb.gather, (kept[cuts[i]:cuts[i + 1]], geo.slots, h * w, geo.q,
                                 geo.slot_pix, ptr, chs, vals, plan.align, wts,
                                 acc[cuts[i] * geo.sub:cuts[i + 1] * geo.sub]))
                    for i in range(len(cuts) - 1)])
    shape = (n, ho, wo, cout)
    if window is not None:
        return RowAcc(acc, shape, windows=kept)
    return RowAcc(acc, shape, rows=kept)
