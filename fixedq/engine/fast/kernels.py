"""Loop bodies of the compiled engine kernels (compiled by numba in :mod:`.jit`).

Each function is plain Python over NumPy arrays so that it can also be read (and, slowly, run)
without numba. Every integer step is the reference equation in ``int64``
(:mod:`fixedq.tensors.rounding`): the rounding right shift ``((v >> (s-1)) + 1) >> 1`` (eq. 5)
is written branch-free with per-channel constants ``s1 = max(s-1, 0)``, ``up = [s > 0]`` and
``left = max(-s, 0)``: ``((((v << left) >> s1) + up) >> up)`` is ``shift_round(v, s)`` for every
``-63 < s < 64`` (the plans hand other shifts to the reference kernels). Outputs are written
into caller-provided arrays of the narrowest dtype holding ``[lo, hi]``.

Example:
    >>> import numpy as np
    >>> acc = np.array([[5.0, -5.0]]); out = np.empty((1, 2), np.int8)
    >>> one, zero = np.ones(2, np.int64), np.zeros(2, np.int64)
    >>> requant_rows(acc, 0, zero, False, 0, 0, one, zero, zero, one,
    ...              np.full(2, -128), np.full(2, 127), out)   # 5/2 -> 3, -5/2 -> -2
    >>> out.tolist()
    [[3, -2]]
"""

from __future__ import annotations

import numpy as np

try:  # numba's parallel range when compiled; plain range when read as Python
    from numba import prange
except ImportError:  # pragma: no cover - depends on the environment
    prange = range


def requant_rows(acc, accshift, bias, clip_acc, acc_lo, acc_hi, mult, left, s1, up, lo, hi,
                 out):
    """``out[r, c] = clip(shift_round(clip?((acc[r, c] << accshift) + bias[c]) * M[c], S[c]),
    lo, hi)`` (eqs. 7, 10-14); ``acc`` is float (holding exact integers) or integer,
    ``(rows, C)``; ``accshift`` is a group's common power of two (exact)."""
    rows, c = acc.shape
    for r in prange(rows):
        for j in range(c):
            v = (np.int64(acc[r, j]) << accshift) + bias[j]
            if clip_acc:
                v = min(max(v, acc_lo), acc_hi)
            p = (((v * mult[j]) << left[j]) >> s1[j])
            p = (p + up[j]) >> up[j]
            out[r, j] = min(max(p, lo[j]), hi[j])


def add_rows(x0, x1, a0, a1, left, s1, up, lo, hi, out):
    """Two-input ``add`` (eq. 8 aligned sum + eq. 5 shift + clip), ``(rows, C)`` arrays."""
    rows, c = x0.shape
    for r in prange(rows):
        for j in range(c):
            v = (np.int64(x0[r, j]) << a0[j]) + (np.int64(x1[r, j]) << a1[j])
            p = ((v << left[j]) >> s1[j])
            p = (p + up[j]) >> up[j]
            out[r, j] = min(max(p, lo[j]), hi[j])


def affine_rows(x, mult, offset, left, s1, up, lo, hi, out):
    """Per-channel integer affine: ``clip(shift_round(x*M + O, S), lo, hi)``."""
    rows, c = x.shape
    for r in prange(rows):
        for j in range(c):
            v = np.int64(x[r, j]) * mult[j] + offset[j]
            p = ((v << left[j]) >> s1[j])
            p = (p + up[j]) >> up[j]
            out[r, j] = min(max(p, lo[j]), hi[j])


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
    """Largest ``|x|`` per channel of a ``(rows, C)`` integer array (int64 ``out``)."""
    rows, c = x.shape
    for j in range(c):
        out[j] = 0
    for r in range(rows):
        for j in range(c):
            v = np.int64(x[r, j])
            if v < 0:
                v = -v
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


def im2col_u8(x, shifts, add, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, out):
    """:func:`im2col` into uint8 columns for an integer GEMM: ``(x[..., c] << shifts[c]) +
    add`` (``add`` = 128 for signed inputs, read back through the GEMM's zero point; 0 for
    unsigned ones); positions outside the image hold ``add`` (the value 0). The caller proves
    that every shifted value fits 8 bits."""
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
                            out[r, base + t] = add
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


def requant_planes(acc_hi, acc_lo, accshift, bias, clip_acc, acc_lo_, acc_hi_, mult, left, s1,
                   up, lo, hi, out):
    """:func:`requant_rows` of ``acc = (256 * acc_hi + acc_lo) << accshift`` (two byte-plane
    GEMMs combined in int64)."""
    rows, c = acc_hi.shape
    for r in prange(rows):
        for j in range(c):
            v = (((np.int64(acc_hi[r, j]) << 8) + acc_lo[r, j]) << accshift) + bias[j]
            if clip_acc:
                v = min(max(v, acc_lo_), acc_hi_)
            p = (((v * mult[j]) << left[j]) >> s1[j])
            p = (p + up[j]) >> up[j]
            out[r, j] = min(max(p, lo[j]), hi[j])


def depthwise_rows(x, k, accz, sh, sw, dh, dw, pt, pl, ho, wo, bias, clip_acc, acc_lo,
                   acc_hi, mult, left, s1, up, lo, hi, out):
    """Depthwise conv (channel multiplier 1) with the requantization fused: ``k`` is the
    ``(kh, kw, C)`` kernel with each channel's alignment folded in (``w * 2^a_c``, exact),
    ``accz`` a zero of the accumulator dtype (int32 when the bound allows, else int64)."""
    n, h, w, c = x.shape
    kh, kw = k.shape[0], k.shape[1]
    for row in prange(n * ho):
        b0 = row // ho
        i = row % ho
        acc = np.zeros((wo, c), dtype=accz.dtype)
        for a in range(kh):
            ih = i * sh - pt + a * dh
            if ih < 0 or ih >= h:
                continue
            for j in range(wo):
                for b in range(kw):
                    iw = j * sw - pl + b * dw
                    if iw < 0 or iw >= w:
                        continue
                    for t in range(c):
                        acc[j, t] += x[b0, ih, iw, t] * k[a, b, t]
        for j in range(wo):
            for t in range(c):
                v = np.int64(acc[j, t]) + bias[t]
                if clip_acc:
                    v = min(max(v, acc_lo), acc_hi)
                p = (((v * mult[t]) << left[t]) >> s1[t])
                p = (p + up[t]) >> up[t]
                out[b0, i, j, t] = min(max(p, lo[t]), hi[t])


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
