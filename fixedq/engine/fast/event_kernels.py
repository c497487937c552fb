"""Loop bodies of the compiled event kernels (numba, compiled in :mod:`.events`).

An *event* is a non-zero input integer. These kernels visit the events only: each one is
multiplied by the weight rows it reaches and added into integer accumulators (scatter,
input-stationary); the accumulators of the outputs some event reached are requantized with
the compiled dense path's epilogue (the int64 scalar steps of
:func:`fixedq.engine.fast.kernels.requant_rows`, :func:`requant_value`), every other output
gets ``requant(0)`` (``const``), the value the dense path computes from an all-zero
accumulator. The weights come with each input channel's alignment folded in (``w * 2^a_c``),
in the accumulator dtype (int32 when the caller's bound is below 2^31, else int64), so every
partial sum is an exact integer.

The events of a row of inputs are found by :func:`nonzero_positions`, which reads the row
also as 64-bit words (``words``: the same memory, given by the caller when the row's bytes
are a multiple of 8) and skips every all-zero word without looking at its elements: a
zero word holds no event, so the skip changes no sum.

Example:
    >>> import numpy as np
    >>> x = np.array([[[[0, 3, 0]]]], np.uint8)   # (n, k, rows, c): one row of 3 inputs
    >>> w = np.array([[1, 1], [2, -1], [5, 5]], np.int32)
    >>> one, zero = np.ones(2, np.int64), np.zeros(2, np.int64)
    >>> out = np.empty((1, 2), np.int8); acc = np.zeros((1, 2), np.int32)
    >>> mark, touched = np.zeros(1, np.bool_), np.empty(1, np.int64)
    >>> words = np.empty((1, 1, 1, 0), np.uint64)
    >>> window_events(x, words, w, acc, mark, touched, np.array([7, 7]), zero, False, 0, 0,
    ...               one, zero, zero, zero, np.full(2, -128), np.full(2, 127), out)
    >>> out.tolist()   # 3 * [2, -1]
    [[6, -3]]
"""

from __future__ import annotations

import numpy as np

try:  # callable from the compiled kernels (inlined: no call, no array reference counts)
    from numba.extending import register_jitable  # and from Python alike

    inline = register_jitable(inline="always")
except ImportError:  # pragma: no cover - depends on the environment
    def inline(fn):
        return fn


def word_view(x: np.ndarray, row_axes: int) -> np.ndarray:
    """``x`` (C-contiguous) with its last ``row_axes`` axes flattened into rows of 64-bit
    words, or an empty last axis when a row's bytes are not a multiple of 8 (then
    :func:`nonzero_positions` reads every element).

    Example:
        >>> word_view(np.zeros((2, 3, 8), np.uint8), 1).shape, word_view(
        ...     np.zeros((2, 3, 3), np.uint8), 1).shape
        ((2, 3, 1), (2, 3, 0))
    """
    lead = x.shape[:x.ndim - row_axes]
    row = int(np.prod(x.shape[x.ndim - row_axes:])) * x.itemsize
    if row % 8 or not x.flags.c_contiguous:
        return np.empty((*lead, 0), np.uint64)
    return x.reshape(*lead, -1).view(np.uint64)


@inline
def word_shift(size, nw):
    """``log2`` of the elements per 64-bit word of a row of ``size`` elements held in ``nw``
    words (1, 2, 4 or 8 elements), or ``-1`` when ``nw`` is 0 (no word view)."""
    if nw == 0:
        return -1
    g, gs = size // nw, 0
    while (1 << gs) < g:
        gs += 1
    return gs


@inline
def nonzero_positions(x, base, size, words, gs, idx):
    """The positions (from ``base``) of the non-zero elements of the row ``x[base:base +
    size]`` of the flat array ``x`` into ``idx``; returns their count. ``words``: the flat
    array of 64-bit words of ``x`` (:func:`word_view`, flattened) when ``gs >= 0`` (``2^gs``
    elements per word, :func:`word_shift`): every all-zero word is skipped. Flat indices and
    shifts only: a view or an integer division per row cost more than the scan itself."""
    n = 0
    if gs < 0:
        for e in range(size):
            if x[base + e] != 0:
                idx[n] = e
                n += 1
        return n
    w0 = base >> gs
    for q in range(size >> gs):
        if words[w0 + q] == 0:
            continue
        for e in range(q << gs, (q + 1) << gs):
            if x[base + e] != 0:
                idx[n] = e
                n += 1
    return n


@inline
def requant_value(v, t, bias, clip_acc, acc_lo, acc_hi, mult, left, s1, up, lo, hi):
    """Output channel ``t``'s integer for accumulator ``v`` (int64): the bias, the optional
    accumulator clip, the half-up requantization and the output clip (the dense epilogue)."""
    v = v + bias[t]
    if clip_acc:
        v = min(max(v, acc_lo), acc_hi)
    p = (((v * mult[t]) << left[t]) >> s1[t])
    p = (p + up[t]) >> up[t]
    return min(max(p, lo[t]), hi[t])


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


def conv_events(x, words, c, w, narrow, ri, rj, ho, wo, const, bias, clip_acc, acc_lo, acc_hi,
                mult, left, s1, up, lo, hi, out, acc, mark, touched, idx, pool, val):
    """Event-driven conv2d of NHWC input rows ``x`` ``(n, h, w*c)`` (``c`` channels) into
    ``out`` ``(n, ho*wo, cout)``, or with a fused max pool ``(n, ho2*wo2, cout)`` when ``pool
    = (ph, pw, sh, sw, pt, pl, ho2, wo2)`` has ``ph > 0`` (positions outside the conv output
    are ignored, as in the dense maxpool; a window without a reached pixel is ``const``).

    ``words``: ``x``'s rows as 64-bit words (:func:`word_view`, or an empty last axis);
    ``w``: ``(kh, kw, cin, cout)`` aligned weights in the accumulator dtype, or int16 with
    ``narrow`` when the caller proved ``|x| * |w| < 2^15`` (every product exact in 16 bits,
    added into int32 accumulators); ``ri`` ``(h, kh)`` / ``rj`` ``(w, kw)``: the output row /
    column input row / column ``i`` reaches through tap ``a`` (``-1``: none; see
    :func:`reach`); ``acc`` ``(ho*wo, cout)`` zeros, ``mark`` ``(ho*wo,)`` False,
    ``touched`` ``(ho*wo,)`` and ``idx`` ``(w*c,)``: scratch per sample, ``acc`` and
    ``mark`` left as they came (zeros, False); ``val`` ``(ho*wo, cout)``: the requantized
    rows before pooling (scratch, with a pool)."""
    n, h, row = x.shape
    kh, kw, cout = w.shape[0], w.shape[1], w.shape[3]
    xf, wf, gs = x.reshape(-1), words.reshape(-1), word_shift(row, words.shape[2])
    for bi in range(n):
        nt = 0
        for i in range(h):
            base = (bi * h + i) * row
            for q in range(nonzero_positions(xf, base, row, wf, gs, idx)):
                e = idx[q]
                j = e // c
                ch = e - j * c
                va = np.int64(xf[base + e])
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
                dst[o, t] = requant_value(np.int64(acc[o, t]), t, bias, clip_acc, acc_lo,
                                          acc_hi, mult, left, s1, up, lo, hi)
                acc[o, t] = 0
        if pool[0] > 0:  # max pool: marked pixels hold dst, the others const
            ph, pw, psh, psw, ppt, ppl, ho2, wo2 = pool
            for pi in range(ho2):
                for pj in range(wo2):
                    po = pi * wo2 + pj
                    hit = False
                    full = True  # every pixel of the window (inside the conv output) marked
                    for a in range(ph):
                        ii = pi * psh - ppt + a
                        if ii < 0 or ii >= ho:
                            continue
                        for b in range(pw):
                            jj = pj * psw - ppl + b
                            if jj < 0 or jj >= wo:
                                continue
                            o = ii * wo + jj
                            if not mark[o]:
                                full = False
                            elif not hit:
                                hit = True
                                for t in range(cout):
                                    ob[po, t] = dst[o, t]
                            else:
                                for t in range(cout):
                                    ob[po, t] = max(ob[po, t], dst[o, t])
                    for t in range(cout):
                        if not hit:
                            ob[po, t] = const[t]
                        elif not full:  # an unmarked pixel holds const
                            ob[po, t] = max(ob[po, t], const[t])
        for k in range(nt):
            mark[touched[k]] = False


def window_events(x, words, w, acc, mark, touched, const, bias, clip_acc, acc_lo, acc_hi,
                  mult, left, s1, up, lo, hi, out):
    """Event-driven dense layer over windows of rows: ``x`` ``(n, k, rows, c)``, output row
    ``(b, r)`` reduces the ``k`` input rows ``x[b, :, r]`` (frame ``j``'s channel ``f`` is
    weight row ``j*c + f``: a buffer conv's window of ``k`` frames; ``k = 1``: a dense
    layer); ``words``: ``x``'s rows as 64-bit words (:func:`word_view`) or an empty last
    axis; ``w`` ``(k*c, cout)`` aligned weights in the accumulator dtype; ``acc`` ``(rows,
    cout)`` zeros, ``mark`` ``(rows,)`` False and ``touched`` ``(rows,)``: scratch per
    sample, left as they came; ``out`` ``(n*rows, cout)``; a row without events gets
    ``const``. Each frame's rows are read in memory order (all-zero words skipped, one
    division per non-zero word to find its row)."""
    n, k, rows, c = x.shape
    cout = w.shape[1]
    xf, wf, gs = x.reshape(-1), words.reshape(-1), word_shift(c, words.shape[3])
    g = (1 << gs) if gs >= 0 else c  # elements per chunk: a word, or a whole row
    chunks = (rows * c) >> gs if gs >= 0 else rows
    for b in range(n):
        nt = 0
        for j in range(k):
            base = (b * k + j) * rows * c
            for q in range(chunks):
                if gs >= 0 and wf[(base >> gs) + q] == 0:
                    continue
                e0 = q * g
                r = e0 // c if gs >= 0 else q
                for f in range(e0 - r * c, e0 - r * c + g):
                    v = xf[base + r * c + f]
                    if v == 0:
                        continue
                    if not mark[r]:
                        mark[r] = True
                        touched[nt] = r
                        nt += 1
                    va = np.int64(v)
                    wr = w[j * c + f]
                    for t in range(cout):
                        acc[r, t] += va * wr[t]
        ob = out[b * rows:(b + 1) * rows]
        for r in range(rows):
            if mark[r]:
                mark[r] = False
                for t in range(cout):
                    ob[r, t] = requant_value(np.int64(acc[r, t]), t, bias, clip_acc, acc_lo,
                                             acc_hi, mult, left, s1, up, lo, hi)
                    acc[r, t] = 0
            else:
                for t in range(cout):
                    ob[r, t] = const[t]


def active_windows(x, words, flags):
    """``flags[b*rows + r]``: whether the window ``x[b, :, r]`` of ``x`` ``(n, k, rows, c)``
    holds an event (a non-zero input; ``words``: as in :func:`window_events`); returns the
    number of active windows. Each frame's rows are read in memory order, without branches."""
    n, k, rows, c = x.shape
    xf, wf, gs = x.reshape(-1), words.reshape(-1), word_shift(c, words.shape[3])
    flags[:] = False
    for b in range(n):
        for j in range(k):
            base = (b * k + j) * rows
            for r in range(rows):
                hit = False
                if gs >= 0:  # the row's words
                    w0 = ((base + r) * c) >> gs
                    for q in range(c >> gs):
                        hit |= wf[w0 + q] != 0
                else:
                    for f in range(c):
                        hit |= xf[(base + r) * c + f] != 0
                flags[b * rows + r] |= hit
    count = 0
    for o in range(flags.size):
        count += flags[o]
    return count


def place_rows(flags, y, const, out):
    """``out`` ``(rows, cout)``: the rows of ``y`` in the flagged rows (in order), ``const``
    in the others."""
    a = 0
    for o in range(flags.size):
        if flags[o]:
            for t in range(out.shape[1]):
                out[o, t] = y[a, t]
            a += 1
        else:
            for t in range(out.shape[1]):
                out[o, t] = const[t]


def gather_windows(x, sel, out):
    """The stacked rows of the selected windows: ``out[a, j*c + f] = x[b, j, r, f]`` for
    ``sel[a] = b*rows + r`` (``x`` ``(n, k, rows, c)``, ``out`` ``(len(sel), k*c)``)."""
    _, k, rows, c = x.shape
    for a in range(sel.size):
        b = sel[a] // rows
        r = sel[a] - b * rows
        for j in range(k):
            for f in range(c):
                out[a, j * c + f] = x[b, j, r, f]
