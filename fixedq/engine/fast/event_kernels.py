"""Loop bodies of the compiled event kernels (numba, compiled in :mod:`.events`).

An *event* is a non-zero input integer. These kernels visit the events only: each one is
multiplied by the weight rows it reaches and added into integer accumulators (scatter,
input-stationary); the accumulators of the outputs some event reached are requantized with
the compiled dense path's epilogue (:func:`fixedq.engine.fast.kernels.requant_rows`, the same
int64 scalar steps), every other output gets ``requant(0)`` (``const``), the value the dense
path computes from an all-zero accumulator. The weights come with each input channel's
alignment folded in (``w * 2^a_c``), in the accumulator dtype (int32 when the caller's bound
is below 2^31, else int64), so every partial sum is an exact integer.

Example:
    >>> import numpy as np
    >>> x = np.array([[0, 3, 0]], np.uint8); w = np.array([[1, 1], [2, -1], [5, 5]], np.int32)
    >>> one, zero = np.ones(2, np.int64), np.zeros(2, np.int64)
    >>> out = np.empty((1, 2), np.int8); acc = np.zeros(2, np.int32)
    >>> dense_events(x, w, acc, np.array([7, 7]), zero, False, 0, 0, one, zero, zero, zero,
    ...              np.full(2, -128), np.full(2, 127), out)
    >>> out.tolist()   # 3 * [2, -1]
    [[6, -3]]
"""

from __future__ import annotations

import numpy as np


def reach(size, k, stride, dilation, pad, out_size):
    """``(size, k)``: the output index input index ``i`` reaches through tap ``a``, ``(i + pad
    - a*dilation) / stride`` when it divides and falls in ``[0, out_size)``, else ``-1``.

    Example:
        >>> reach(4, 3, 2, 1, 1, 2).tolist()   # 3-tap, stride 2, 'same' on 4 -> 2 outputs
        [[-1, 0, -1], [1, -1, 0], [-1, 1, -1], [-1, -1, 1]]
    """
    r = (np.arange(size) + pad)[:, None] - (np.arange(k) * dilation)[None, :]
    ok = (r >= 0) & (r % stride == 0) & (r // stride < out_size)
    return np.ascontiguousarray(np.where(ok, r // stride, -1), dtype=np.int64)


def count_nonzero(x):
    """Number of non-zero elements of a flat integer array."""
    n = 0
    for i in range(x.size):
        if x[i] != 0:
            n += 1
    return n


def conv_events(x, w, narrow, ri, rj, ho, wo, const, bias, clip_acc, acc_lo, acc_hi, mult,
                left, s1, up, lo, hi, out, acc, mark, touched, pool, val):
    """Event-driven conv2d of NHWC ``x`` into ``out`` ``(n, ho*wo, cout)``, or with a fused
    max pool ``(n, ho2*wo2, cout)`` when ``pool = (ph, pw, sh, sw, pt, pl, ho2, wo2)`` has
    ``ph > 0`` (positions outside the conv output are ignored, as in the dense maxpool; a
    window without a reached pixel is ``const``).

    ``w``: ``(kh, kw, cin, cout)`` aligned weights in the accumulator dtype, or int16 with
    ``narrow`` when the caller proved ``|x| * |w| < 2^15`` (every product exact in 16 bits,
    added into int32 accumulators); ``ri`` ``(h,
    kh)`` / ``rj`` ``(w, kw)``: the output row / column input row / column ``i`` reaches
    through tap ``a`` (``-1``: none; see :func:`reach`); ``acc`` ``(ho*wo, cout)`` zeros,
    ``mark`` ``(ho*wo,)`` False and ``touched`` ``(ho*wo,)``: scratch per sample, left as
    they came (zeros, False); ``val`` ``(ho*wo, cout)``: the requantized rows before pooling
    (scratch, with a pool)."""
    n, h, wd, c = x.shape
    kh, kw, cout = w.shape[0], w.shape[1], w.shape[3]
    for bi in range(n):
        nt = 0
        for i in range(h):
            for j in range(wd):
                for ch in range(c):
                    v = x[bi, i, j, ch]
                    if v == 0:
                        continue
                    va = np.int64(v)
                    for a in range(kh):
                        oi = ri[i, a]
                        if oi < 0:
                            continue
                        for b in range(kw):
                            oj = rj[j, b]
                            if oj < 0:
                                continue
                            o = oi * wo + oj
                            if not mark[o]:
                                mark[o] = True
                                touched[nt] = o
                                nt += 1
                            if narrow:  # |v * w| < 2^15: 16-bit products (exact)
                                for t in range(cout):
                                    acc[o, t] += np.int16(va * w[a, b, ch, t])
                            else:
                                for t in range(cout):
                                    acc[o, t] += va * w[a, b, ch, t]
        ob = out[bi]
        dst = val if pool[0] > 0 else ob
        if pool[0] == 0:
            for o in range(ho * wo):
                if not mark[o]:
                    for t in range(cout):
                        ob[o, t] = const[t]
        for k in range(nt):
            o = touched[k]
            for t in range(cout):
                v = np.int64(acc[o, t]) + bias[t]
                if clip_acc:
                    v = min(max(v, acc_lo), acc_hi)
                p = (((v * mult[t]) << left[t]) >> s1[t])
                p = (p + up[t]) >> up[t]
                dst[o, t] = min(max(p, lo[t]), hi[t])
                acc[o, t] = 0
        if pool[0] > 0:  # max pool: marked pixels hold dst, the others const
            ph, pw, psh, psw, ppt, ppl, ho2, wo2 = pool
            for pi in range(ho2):
                for pj in range(wo2):
                    po = pi * wo2 + pj
                    hit = False
                    full = True
                    for a in range(ph):
                        ii = pi * psh - ppt + a
                        if ii < 0 or ii >= ho:
                            continue
                        for b in range(pw):
                            jj = pj * psw - ppl + b
                            if jj < 0 or jj >= wo:
                                continue
                            if mark[ii * wo + jj]:
                                hit = True
                            else:
                                full = False
                    if not hit or not full:
                        for t in range(cout):
                            ob[po, t] = const[t]
                    if not hit:
                        continue
                    first = full
                    for a in range(ph):
                        ii = pi * psh - ppt + a
                        if ii < 0 or ii >= ho:
                            continue
                        for b in range(pw):
                            jj = pj * psw - ppl + b
                            if jj < 0 or jj >= wo or not mark[ii * wo + jj]:
                                continue
                            o = ii * wo + jj
                            if first:
                                for t in range(cout):
                                    ob[po, t] = dst[o, t]
                                first = False
                            else:
                                for t in range(cout):
                                    if dst[o, t] > ob[po, t]:
                                        ob[po, t] = dst[o, t]
        for k in range(nt):
            mark[touched[k]] = False


def dense_events(x, w, acc, const, bias, clip_acc, acc_lo, acc_hi, mult, left, s1, up, lo,
                 hi, out):
    """Event-driven dense layer over rows: ``x`` ``(rows, cin)``, ``w`` ``(cin, cout)``
    aligned weights in the accumulator dtype, ``acc`` ``(cout,)`` zeros (scratch), ``out``
    ``(rows, cout)``; a row without events gets ``const``."""
    rows, c = x.shape
    cout = w.shape[1]
    for r in range(rows):
        hit = False
        for f in range(c):
            v = x[r, f]
            if v == 0:
                continue
            hit = True
            va = np.int64(v)
            wr = w[f]
            for t in range(cout):
                acc[t] += va * wr[t]
        if not hit:
            for t in range(cout):
                out[r, t] = const[t]
            continue
        for t in range(cout):
            v = np.int64(acc[t]) + bias[t]
            if clip_acc:
                v = min(max(v, acc_lo), acc_hi)
            p = (((v * mult[t]) << left[t]) >> s1[t])
            p = (p + up[t]) >> up[t]
            out[r, t] = min(max(p, lo[t]), hi[t])
            acc[t] = 0
