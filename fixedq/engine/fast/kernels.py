"""Loop bodies of the compiled engine kernels (compiled by numba in :mod:`.jit`).

Each function is plain Python over NumPy arrays so that it can also be read (and, slowly, run)
without numba. Every integer step is the reference equation in ``int64``
(:mod:`fixedq.tensors.rounding`). The requantization of one value is :func:`requant_value`,
which every kernel calls (:mod:`.jit` compiles it first and hands it to the kernels): the
rounding right shift ``((v >> (s-1)) + 1) >> 1`` (eq. 5) is written branch-free with
per-channel constants ``s1 = max(s-1, 0)``, ``up = [s > 0]`` and ``left = max(-s, 0)``:
``((((v << left) >> s1) + up) >> up)`` is ``shift_round(v, s)`` for every ``-63 < s < 64``
(the plans hand other shifts to the reference kernels); the rounding rule of eq. 5b (an
integer code, :data:`RULES`) then corrects the ties, or selects eq. 7b's second stage or
eq. 7c's float32 product. Outputs are written into caller-provided arrays of the narrowest
dtype holding ``[lo, hi]`` (minus the output offset).

The per-channel constants travel as one ``(8, C)`` int64 array ``q`` (rows :data:`Q_ROWS`:
multiplier, left, s1, up, second shift ``r2`` of eq. 7b, ``lo``, ``hi``, output offset
``post``) and a float32 vector ``sc`` (eq. 7c's scale).

Example:
    >>> import numpy as np
    >>> acc = np.array([[5.0, -5.0]]); out = np.empty((1, 2), np.int8)
    >>> q = np.array([[1, 1], [0, 0], [0, 0], [1, 1], [0, 0], [-128, -128], [127, 127],
    ...               [0, 0]])
    >>> zero = np.zeros(2, np.int64)
    >>> requant_rows(acc, 0, zero, False, 0, 0, q, np.zeros(2, np.float32), 0, NO_TABLE,
    ...              zero, out)
    >>> out.tolist()                                     # half up: 5/2 -> 3, -5/2 -> -2
    [[3, -2]]
    >>> requant_rows(acc, 0, zero, False, 0, 0, q, np.zeros(2, np.float32), 2, NO_TABLE,
    ...              zero, out)
    >>> out.tolist()                                     # half away: 3, -3
    [[3, -3]]
"""

from __future__ import annotations

import numpy as np

try:  # numba's parallel range when compiled; plain range when read as Python
    from numba import prange
except ImportError:  # pragma: no cover - depends on the environment
    prange = range

#: Rounding rule codes (eq. 5b, 7b, 7c) of :func:`requant_value`.
RULES = {"half_up": 0, "half_even": 1, "half_away": 2, "tflite": 3, "fp32": 4}
#: Rows of the per-channel constant array ``q``.
Q_ROWS = ("mult", "left", "s1", "up", "r2", "lo", "hi", "post")
#: eq. 7c's clip of the float32 product before rounding (``rounding.ROUND_LIMIT``).
LIMIT32 = np.float32(2.0**62)
#: The ``tab`` argument of a requantizing kernel without a fused table (:func:`emit`).
NO_TABLE = np.zeros(0, np.int64)
#: Largest int64: :func:`absmax_channels`' value for ``|-2^63|``.
INT64_MAX = np.int64(2**63 - 1)

def rq_half_up(v, j, m, left, s1, up, r2, lo, hi, post, sc, rule):
    """Eq. 5/7: ``clip(shift_round(v * M, S), lo, hi) - post`` (rule 0)."""
    w = (v * m[j]) << left[j]
    p = ((w >> s1[j]) + up[j]) >> up[j]
    return min(max(p, lo[j]), hi[j]) - post[j]


def rq_half_even(v, j, m, left, s1, up, r2, lo, hi, post, sc, rule):
    """Eq. 5b, half to even (rule 1): half up, one less on the ties it rounds to odd."""
    w = (v * m[j]) << left[j]
    s = s1[j]
    p = ((w >> s) + up[j]) >> up[j]
    # branch-free (a branch here stopped the loops vectorizing: 40x slower)
    tie = np.int64((w & ((np.int64(2) << s) - 1)) == (np.int64(1) << s)) & up[j]
    p -= tie & p
    return min(max(p, lo[j]), hi[j]) - post[j]


def rq_half_away(v, j, m, left, s1, up, r2, lo, hi, post, sc, rule):
    """Eq. 5b, half away from zero (rule 2): half up, one less on the negative ties."""
    w = (v * m[j]) << left[j]
    s = s1[j]
    p = ((w >> s) + up[j]) >> up[j]
    tie = np.int64((w & ((np.int64(2) << s) - 1)) == (np.int64(1) << s)) & up[j]
    p -= tie & np.int64(w < 0)
    return min(max(p, lo[j]), hi[j]) - post[j]


def rq_tflite(v, j, m, left, s1, up, r2, lo, hi, post, sc, rule):
    """Eq. 7b (rule 3): ``h = (v << l) * M / 2^31`` half up (``left``/``s1``/``up`` hold
    ``l``, 30, 1), then ``h / 2^r2`` half away from zero."""
    w = (v * m[j]) << left[j]
    h = ((w >> s1[j]) + up[j]) >> up[j]
    r = r2[j]
    if r > 0:  # (one branch per channel, taken or not for all rows)
        p = ((h >> (r - 1)) + 1) >> 1
        tie = np.int64((h & ((np.int64(1) << r) - 1)) == (np.int64(1) << (r - 1)))
        p -= tie & np.int64(h < 0)
    else:
        p = h
    return min(max(p, lo[j]), hi[j]) - post[j]


def rq_fp32(v, j, m, left, s1, up, r2, lo, hi, post, sc, rule):
    """Eq. 7c (rule 4): ``rint(float32(float32(v) * sc[j]))`` (float32 by design)."""
    f = np.float32(v) * sc[j]
    f = min(max(f, -LIMIT32), LIMIT32)
    p = np.int64(np.rint(f))
    return min(max(p, lo[j]), hi[j]) - post[j]


#: The one-value requantization of each rule code (:data:`RULES` order).
RULE_FUNCTIONS = (rq_half_up, rq_half_even, rq_half_away, rq_tflite, rq_fp32)


def requant_value(v, j, m, left, s1, up, r2, lo, hi, post, sc, rule):
    """``clip(round_rule(v * M[j] / 2^S[j]), lo[j], hi[j]) - post[j]`` for one int64 ``v``
    under the rule code ``rule`` (:data:`RULE_FUNCTIONS`). :mod:`.jit` compiles each kernel
    once per rule with this name bound to that rule's function (straight-line code the loops
    vectorize); read as Python, it dispatches here."""
    return RULE_FUNCTIONS[rule](v, j, m, left, s1, up, r2, lo, hi, post, sc, rule)


def emit_plain(buf, orow, tab, tbase):
    """Write one row of requantized integers ``buf`` to the output row ``orow`` (:func:`emit`
    without a table)."""
    for j in range(buf.shape[0]):
        orow[j] = buf[j]


def emit_table(buf, orow, tab, tbase):
    """Eq. 38 fused into the epilogue: ``orow[j] = tab[clip(buf[j] + tbase[j], 0, len - 1)]``
    (the ``table`` op consuming the producer's output, as :func:`table_rows`): the indices
    first, then the gather (one loop with both ran 10x slower: the gather stops the
    requantization vectorizing)."""
    top = tab.shape[0] - 1
    for j in range(buf.shape[0]):
        buf[j] = min(max(buf[j] + tbase[j], 0), top)
    for j in range(buf.shape[0]):
        orow[j] = tab[buf[j]]


def emit(buf, orow, tab, tbase):
    """Write the requantized row ``buf`` (int64) to ``orow``: the integers themselves, or
    their table entries when a ``table`` op is fused (``tab`` not empty). :mod:`.jit` compiles
    the kernels with this name bound to :func:`emit_plain` or :func:`emit_table` (no branch
    in the loops); read as Python, it dispatches here."""
    (emit_table if tab.shape[0] else emit_plain)(buf, orow, tab, tbase)


def requant_rows(acc, accshift, bias, clip_acc, acc_lo, acc_hi, q, sc, rule, tab, tbase, out):
    """``out[r, c] = emit(requant_value(clip?((acc[r, c] << accshift) + bias[c])))`` (eqs. 7,
    10-14; :func:`emit`: a fused table, eq. 38); ``acc`` is float (holding exact integers) or
    integer, ``(rows, C)``; ``accshift`` is a group's common power of two (exact)."""
    rows, c = acc.shape
    m, left, s1, up, r2, lo, hi, post = q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]
    buf = np.empty(c, np.int64)
    for r in range(rows):
        for j in range(c):
            v = (np.int64(acc[r, j]) << accshift) + bias[j]
            if clip_acc:
                v = min(max(v, acc_lo), acc_hi)
            buf[j] = requant_value(v, j, m, left, s1, up, r2, lo, hi, post, sc, rule)
        emit(buf, out[r], tab, tbase)


def add_rows(x0, x1, a0, a1, q, sc, rule, out):
    """Two-input ``add`` (eq. 8 aligned sum + eq. 5 shift + clip; ``q``'s multiplier is 1),
    ``(rows, C)`` arrays."""
    rows, c = x0.shape
    m, left, s1, up, r2, lo, hi, post = q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]
    for r in prange(rows):
        for j in range(c):
            v = (np.int64(x0[r, j]) << a0[j]) + (np.int64(x1[r, j]) << a1[j])
            out[r, j] = requant_value(v, j, m, left, s1, up, r2, lo, hi, post, sc, rule)


def add_scaled_rows(x0, x1, n_in, off0, off1, al, scaled, qi, sci, q, sc, rule, out):
    """``add`` with rescaled inputs (imported programs, e.g. TFLite's ADD): each input
    ``v_i = (x_i + off_i) << al[i]``, requantized by its own constants ``qi[i]`` when
    ``scaled[i]`` (eq. 7/7b/7c without a clip), summed, and the sum requantized by ``q``;
    ``n_in`` is 1 or 2 (``x1`` unused for 1)."""
    rows, c = x0.shape
    m, left, s1, up, r2, lo, hi, post = q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]
    ma, la, sa, ua, ra, loa, hia, pa = (qi[0, 0], qi[0, 1], qi[0, 2], qi[0, 3], qi[0, 4],
                                        qi[0, 5], qi[0, 6], qi[0, 7])
    mb, lb, sb, ub, rb, lob, hib, pb = (qi[1, 0], qi[1, 1], qi[1, 2], qi[1, 3], qi[1, 4],
                                        qi[1, 5], qi[1, 6], qi[1, 7])
    sca, scb = sci[0], sci[1]
    for r in prange(rows):
        for j in range(c):
            v = (np.int64(x0[r, j]) + off0) << al[0, j]
            if scaled[0]:
                v = requant_value(v, j, ma, la, sa, ua, ra, loa, hia, pa, sca, rule)
            if n_in == 2:
                u = (np.int64(x1[r, j]) + off1) << al[1, j]
                if scaled[1]:
                    u = requant_value(u, j, mb, lb, sb, ub, rb, lob, hib, pb, scb, rule)
                v += u
            out[r, j] = requant_value(v, j, m, left, s1, up, r2, lo, hi, post, sc, rule)


def affine_rows(x, mult, offset, q, sc, rule, out):
    """Per-channel integer affine: ``clip(shift_round(x*M + O, S), lo, hi)`` (``q``'s
    multiplier is 1, the product is taken here)."""
    rows, c = x.shape
    m, left, s1, up, r2, lo, hi, post = q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]
    for r in prange(rows):
        for j in range(c):
            v = np.int64(x[r, j]) * mult[j] + offset[j]
            out[r, j] = requant_value(v, j, m, left, s1, up, r2, lo, hi, post, sc, rule)


def gap_sum(x, out):
    """Exact per-sample, per-channel sums over the middle axis of ``(N, S, C)`` (int64)."""
    n, s, c = x.shape
    for b in prange(n):
        for j in range(c):
            out[b, j] = 0
        for i in range(s):
            for j in range(c):
                out[b, j] += np.int64(x[b, i, j])


def quantize_rows(x, scale, lo, hi, out):
    """The input quantizer (eq. 4) as :func:`fixedq.tensors.rounding.quantize_input` computes
    it: ``t = clip(float64(x) * 2^f, lo, hi)``, then ``floor(t) + [t - floor(t) >= 1/2]``
    (``scale = 2^f`` exactly; ``±inf`` saturate; NaN rejected before)."""
    rows, c = x.shape
    for r in prange(rows):
        for j in range(c):
            t = np.float64(x[r, j]) * scale[j]
            t = min(max(t, lo[j]), hi[j])
            d = np.floor(t)
            v = np.int64(d)
            if t - d >= 0.5:
                v += 1
            out[r, j] = v


def absmax_channels(x, out):
    """Largest ``|x|`` per channel of a ``(rows, C)`` integer array (int64 ``out``);
    ``|-2^63|`` saturates at :data:`INT64_MAX` (as
    :func:`fixedq.engine.kernels.channel_absmax`: ``-v`` would wrap to ``-2^63``)."""
    rows, c = x.shape
    for j in range(c):
        out[j] = 0
    for r in range(rows):
        for j in range(c):
            v = np.int64(x[r, j])
            if v < 0:
                v = -max(v, -INT64_MAX)
            if v > out[j]:
                out[j] = v


def im2col(x, chans, scl, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, out):
    """Columns of a conv2d over NHWC ``x``: row ``(n, i, j)``, column ``(a, b, g)`` holds
    ``x[n, i*sh - pt + a*dh, j*sw - pl + b*dw, chans[g]] * scl[g]`` (0 outside the image);
    ``out`` is float32/float64 (the products by powers of two are exact)."""
    n, h, w, _ = x.shape
    g = chans.shape[0]
    for row in prange(n * ho):
        b0 = row // ho
        i = row % ho
        for j in range(wo):
            r = (b0 * ho + i) * wo + j
            for a in range(kh):
                ih = i * sh - pt + a * dh
                for b in range(kw):
                    iw = j * sw - pl + b * dw
                    base = (a * kw + b) * g
                    if ih < 0 or ih >= h or iw < 0 or iw >= w:
                        for t in range(g):
                            out[r, base + t] = 0
                    else:
                        for t in range(g):
                            out[r, base + t] = x[b0, ih, iw, chans[t]] * scl[t]


def im2col_u8(x, shifts, add, pad, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, out):
    """:func:`im2col` into uint8 columns for an integer GEMM: ``(x[..., c] << shifts[c]) +
    add`` (``add`` = 128 for signed inputs, read back through the GEMM's zero point; 0 for
    unsigned ones); positions outside the image hold ``pad`` (the GEMM's zero point: the value
    0, also for an input offset folded into it). The caller proves that every shifted value
    fits 8 bits."""
    n, h, w, c = x.shape
    for row in prange(n * ho):
        b0 = row // ho
        i = row % ho
        for j in range(wo):
            r = (b0 * ho + i) * wo + j
            for a in range(kh):
                ih = i * sh - pt + a * dh
                for b in range(kw):
                    iw = j * sw - pl + b * dw
                    base = (a * kw + b) * c
                    if ih < 0 or ih >= h or iw < 0 or iw >= w:
                        for t in range(c):
                            out[r, base + t] = pad
                    else:
                        for t in range(c):
                            out[r, base + t] = (np.int64(x[b0, ih, iw, t]) << shifts[t]) + add


def im2col_u8x2(x, shifts, add, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, lo, hi):
    """:func:`im2col_u8` of values up to 16 bits as two byte planes: ``v = x << shift`` is
    ``256 * hi + lo`` with ``lo = v & 255`` (unsigned) and ``hi = v >> 8`` (+ ``add``)."""
    n, h, w, c = x.shape
    for row in prange(n * ho):
        b0 = row // ho
        i = row % ho
        for j in range(wo):
            r = (b0 * ho + i) * wo + j
            for a in range(kh):
                ih = i * sh - pt + a * dh
                for b in range(kw):
                    iw = j * sw - pl + b * dw
                    base = (a * kw + b) * c
                    if ih < 0 or ih >= h or iw < 0 or iw >= w:
                        for t in range(c):
                            lo[r, base + t] = 0
                            hi[r, base + t] = add
                    else:
                        for t in range(c):
                            v = np.int64(x[b0, ih, iw, t]) << shifts[t]
                            lo[r, base + t] = v & 255
                            hi[r, base + t] = (v >> 8) + add


def requant_planes(acc_hi, acc_lo, accshift, bias, clip_acc, acc_lo_, acc_hi_, q, sc, rule,
                   tab, tbase, out):
    """:func:`requant_rows` of ``acc = (256 * acc_hi + acc_lo) << accshift`` (two byte-plane
    GEMMs combined in int64)."""
    rows, c = acc_hi.shape
    m, left, s1, up, r2, lo, hi, post = q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]
    buf = np.empty(c, np.int64)
    for r in range(rows):
        for j in range(c):
            v = (((np.int64(acc_hi[r, j]) << 8) + acc_lo[r, j]) << accshift) + bias[j]
            if clip_acc:
                v = min(max(v, acc_lo_), acc_hi_)
            buf[j] = requant_value(v, j, m, left, s1, up, r2, lo, hi, post, sc, rule)
        emit(buf, out[r], tab, tbase)


def depthwise_rows(x, xoff, k, accz, sh, sw, dh, dw, pt, pl, ho, wo, bias, clip_acc, acc_lo,
                   acc_hi, q, sc, rule, tab, tbase, out):
    """Depthwise conv (channel multiplier 1) of ``x + xoff`` (an input offset, eq. 37;
    padding is 0 after it) with the requantization fused: ``k`` is the ``(kh, kw, C)`` kernel
    with each channel's alignment folded in (``w * 2^a_c``, exact), ``accz`` a zero of the
    accumulator dtype (int32 when the bound allows, else int64); ``tab``/``tbase``: a fused
    table (:func:`emit`)."""
    n, h, w, c = x.shape
    kh, kw = k.shape[0], k.shape[1]
    m, left, s1, up, r2, lo, hi, post = q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]
    buf = np.empty(c, np.int64)
    acc = np.empty(c, dtype=accz.dtype)  # one output pixel's sums (stays in L1)
    for row in range(n * ho):
        b0 = row // ho
        i = row % ho
        for j in range(wo):
            for t in range(c):
                acc[t] = 0
            for a in range(kh):
                ih = i * sh - pt + a * dh
                if ih < 0 or ih >= h:
                    continue
                for b in range(kw):
                    iw = j * sw - pl + b * dw
                    if iw < 0 or iw >= w:
                        continue
                    for t in range(c):
                        acc[t] += (x[b0, ih, iw, t] + xoff) * k[a, b, t]
            for t in range(c):
                v = np.int64(acc[t]) + bias[t]
                if clip_acc:
                    v = min(max(v, acc_lo), acc_hi)
                buf[t] = requant_value(v, t, m, left, s1, up, r2, lo, hi, post, sc, rule)
            emit(buf, out[b0, i, j], tab, tbase)


def conv_rows(x, xoff, k, accz, sh, sw, dh, dw, pt, pl, ho, wo, bias, clip_acc, acc_lo,
              acc_hi, q, sc, rule, tab, tbase, out):
    """Direct conv2d (no im2col, no GEMM call) of ``x + xoff`` (padding is 0 after the
    offset) with the requantization fused, for problems too small to pay for a GEMM
    library call (a batch-1 frame): ``k`` is the ``(kh, kw, cin, cout)`` kernel with each
    input channel's alignment folded in (``w * 2^a_c``, exact), ``accz`` a zero of the
    accumulator dtype (int32 when the bound allows, else int64); a dense layer is a 1x1
    conv over ``(1, 1, rows, cin)``. Zero inputs are skipped (no product to add).
    ``out`` is ``(n, ho, wo, cout)``; ``tab``/``tbase``: a fused table (:func:`emit`)."""
    n, h, w, c = x.shape
    kh, kw, cout = k.shape[0], k.shape[1], k.shape[3]
    m, left, s1, up, r2, lo, hi, post = q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]
    buf = np.empty(cout, np.int64)
    acc = np.empty(cout, dtype=accz.dtype)  # one output pixel's sums (stays in L1)
    for row in range(n * ho):
        b0 = row // ho
        i = row % ho
        for j in range(wo):
            for t in range(cout):
                acc[t] = 0
            for a in range(kh):
                ih = i * sh - pt + a * dh
                if ih < 0 or ih >= h:
                    continue
                for b in range(kw):
                    iw = j * sw - pl + b * dw
                    if iw < 0 or iw >= w:
                        continue
                    for g in range(c):
                        v = accz[0] + x[b0, ih, iw, g] + xoff
                        if v != 0:
                            for t in range(cout):
                                acc[t] += v * k[a, b, g, t]
            for t in range(cout):
                vv = np.int64(acc[t]) + bias[t]
                if clip_acc:
                    vv = min(max(vv, acc_lo), acc_hi)
                buf[t] = requant_value(vv, t, m, left, s1, up, r2, lo, hi, post, sc, rule)
            emit(buf, out[b0, i, j], tab, tbase)


def maxpool(x, ph, pw, sh, sw, pt, pl, out):
    """Max pooling of NHWC ``x`` into ``out`` (window positions outside the input ignored,
    TensorFlow's ``same``)."""
    n, h, w, c = x.shape
    ho, wo = out.shape[1], out.shape[2]
    for row in prange(n * ho):
        b0 = row // ho
        i = row % ho
        for j in range(wo):
            first = True
            for a in range(ph):
                ih = i * sh - pt + a
                if ih < 0 or ih >= h:
                    continue
                for b in range(pw):
                    iw = j * sw - pl + b
                    if iw < 0 or iw >= w:
                        continue
                    if first:
                        for t in range(c):
                            out[b0, i, j, t] = x[b0, ih, iw, t]
                        first = False
                    else:
                        for t in range(c):
                            if x[b0, ih, iw, t] > out[b0, i, j, t]:
                                out[b0, i, j, t] = x[b0, ih, iw, t]


def table_rows(x, table, base, out):
    """Eq. 38: ``out[r, c] = table[clip(x[r, c] + base[c], 0, len - 1)]`` (as ``np.take`` with
    ``mode="clip"``)."""
    rows, c = x.shape
    top = table.shape[0] - 1
    for r in prange(rows):
        for j in range(c):
            i = np.int64(x[r, j]) + base[j]
            out[r, j] = table[min(max(i, 0), top)]


def mul_rows(x0, x1, left, s1, up, lo, hi, out):
    """Eq. 46: ``clip(shift_round(x0 * x1, S), lo, hi)`` over ``(N, S, C)`` arrays, ``x1``
    of ``(N, S, C)`` or ``(N, 1, C)`` (one value per sample and channel, squeeze-excite)."""
    n, s, c = x0.shape
    one = x1.shape[1] == 1
    for b in prange(n):
        for i in range(s):
            k = 0 if one else i
            for j in range(c):
                v = np.int64(x0[b, i, j]) * np.int64(x1[b, k, j])
                p = ((v << left[j]) >> s1[j])
                p = (p + up[j]) >> up[j]
                out[b, i, j] = min(max(p, lo[j]), hi[j])
