"""Loop bodies of the compiled transformer kernels (numba, compiled in :mod:`.transformer`).

Four kernels, each the reference equation in exact integers, one row (token) at a time so
that every intermediate stays in cache:

- :func:`layernorm_rows`: eq. 47 (:mod:`fixedq.engine.layernorm`) and its affine. The only
  per-element division, ``z = floor((2·num + r) / (2r))``, is a float64 product by ``1/(2r)``
  followed by one exact integer correction step (``exact``): :mod:`.transformer` proves
  ``|2·num + r| < 2^52`` for the op (then the float estimate is within one of the quotient,
  the divisor being above 2^30), else it hands ``exact=False`` (integer ``//``, as the
  reference).
- :func:`attention_rows`: eq. 30b (``attention_softmax``, Keras ``MultiHeadAttention``) per
  sample and head: ``Q·K^T`` and ``P·V`` as integer dot products in the accumulator dtypes the
  caller proves exact (int32 below 2^31, else int64; blocks of 4 queries share each key and
  value load), the score requantization, the integer softmax of eq. 39 (same float-estimate
  division with an exact correction) and the output requantization fused.
  The ``attention`` op (eq. 30, shiftmax probabilities of eq. 29) runs the same kernel with
  :func:`shiftmax_row` in place of eq. 39.
- :func:`madnorm_rows`: eq. 31 (layer MAD normalization), the same division scheme.
- :func:`add_pos_rows`: eq. 33, the position embeddings added, rounding shift, clip.

The rounding right shift of eq. 5 is written as in :mod:`.kernels`: with ``left = max(-S, 0)``,
``s1 = max(S - 1, 0)`` and ``up = [S > 0]``, ``shift_round(v, S)`` is
``(((v << left) >> s1) + up) >> up`` (half up, the rule of both reference kernels).

Example:
    >>> import numpy as np
    >>> x = np.array([[1, 2, 3, 4]], np.int8); z4 = np.zeros(4, np.int64)
    >>> out = np.empty((1, 4), np.int8)
    >>> layernorm_rows(x, z4, 0, 4, np.ones(4, np.int64), z4, z4, z4, z4,
    ...                np.full(4, -128), np.full(4, 127), True, 6, out)
    >>> out.tolist()   # (x - 2.5) / 1.118 at 4 fractional bits
    [[-21, -7, 7, 21]]
"""

from __future__ import annotations

import numpy as np

#: Queries per block of :func:`attention_rows` (the kernel is written for 4).
BLOCK = 4
#: Accumulator dtypes of ``Q·K^T`` and ``P·V``: :mod:`.transformer` compiles one variant of
#: :func:`attention_rows` per pair (int32 where its bound allows, else int64).
ACC_Q = np.int64
ACC_O = np.int64


def floor_log2_scalar(w):
    """``floor(log2 w)`` of ``1 <= w < 2^62`` (counts the powers ``2^i <= w``, ``i`` in
    1..61, as :func:`fixedq.engine.layernorm.floor_log2`)."""
    k = 0
    for i in range(1, 62):
        if w >= (np.int64(1) << i):
            k += 1
    return k


def isqrt_scalar(n, steps):
    """:func:`fixedq.engine.layernorm.isqrt_newton` of one ``n`` in ``[2^60, 2^62)``."""
    x = np.int64(1) << 31
    for _ in range(steps):
        x = (x + n // x) // 2
    if x * x > n:
        x -= 1
    return x


def layernorm_rows(x, align, eps, norm_frac, mult, offset, left, s1, up, lo, hi, exact, steps,
                   out):
    """Eq. 47 over the last axis of ``(rows, D)`` integers ``x`` (aligned per channel by
    ``align``), then ``clip(shift_round(z·M + O, S), lo, hi)`` per channel (``left/s1/up``
    of ``S``); ``steps`` Newton steps of the square root (the reference's). ``exact``: the
    float-estimate division is proven exact."""
    rows, d = x.shape
    c = np.empty(d, np.int64)
    dd = np.int64(d)
    for r in range(rows):
        s = np.int64(0)
        for j in range(d):
            v = np.int64(x[r, j]) << align[j]
            c[j] = v
            s += v
        ss = np.int64(0)
        for j in range(d):
            cj = dd * c[j] - s
            c[j] = cj
            ss += cj * cj
        w = max(dd * ss + eps, np.int64(1))
        a = (61 - floor_log2_scalar(w)) // 2
        rt = isqrt_scalar(w << (2 * a), steps)
        scale = dd << (a + norm_frac)
        den = 2 * rt
        if exact:  # floor(num / den) from a float64 estimate, corrected once
            inv = 1.0 / np.float64(den)
            for j in range(d):
                num = 2 * (c[j] * scale) + rt
                z = np.int64(np.floor(np.float64(num) * inv))
                rem = num - z * den
                c[j] = z + np.int64(rem >= den) - np.int64(rem < 0)
        else:
            for j in range(d):
                c[j] = (2 * (c[j] * scale) + rt) // den
        for j in range(d):
            v = ((c[j] * mult[j] + offset[j]) << left[j]) >> s1[j]
            v = (v + up[j]) >> up[j]
            out[r, j] = min(max(v, lo[j]), hi[j])


def shiftmax_row(s, m, table, sm, phi, p):
    """Eq. 29 of one row of scores ``s`` (int64, overwritten) with maximum ``m`` into ``p``:
    ``d = s - m``, ``q = floor(d / 2^f)``, ``e = shift_round(table[d - q·2^f], min(-q,
    E + 2))``, ``k = round(log2 sum e)`` (eq. 29d, up to ``k_max``), ``p = clip(shift_round(e,
    k - prob_frac), 0, phi)``; ``sm = (f, E + 2, k_max, prob_frac)``."""
    sf, eb2, kmax, pfrac = sm[0], sm[1], sm[2], sm[3]
    total = np.int64(0)
    for j in range(s.shape[0]):
        d = s[j] - m
        qd = d >> sf
        sh = min(-qd, eb2)
        t = table[d - (qd << sf)]
        if sh > 0:
            t = ((t >> (sh - 1)) + 1) >> 1
        s[j] = t
        total += t
    k = np.int64(0)
    for i in range(1, kmax + 1):
        if total >= (np.int64(1) << i):
            k += 1
    if total * total >= (np.int64(1) << (2 * k + 1)):
        k += 1
    sh = k - pfrac
    for j in range(s.shape[0]):
        t = s[j]
        if sh > 0:
            t = ((t >> (sh - 1)) + 1) >> 1
        elif sh < 0:
            t = t << -sh
        p[j] = min(max(t, np.int64(0)), phi)


def attention_rows(q, k, v, a0, a1, a2, heads, smult, sleft, ss1, sup, acc_lo, acc_hi, table,
                   pf1, phi, exact, shiftmax, oleft, os1, oup, olo, ohi, out):
    """Eq. 30b of ``(B, Nq, Cq)`` queries, ``(B, Nk, Cq)`` keys and ``(B, Nk, Cv)`` values
    (``heads`` heads; channels aligned by ``a0/a1/a2``): per sample, head and query the
    scores ``q·k`` (accumulated in ``ACC_Q``), ``s = clip(shift_round(score·M, S), acc_lo,
    acc_hi)``, eq. 39's ``p = clip(floor((e·2^(f+1) + E) / 2E), 0, phi)`` with
    ``e = table[min(max s - s, len - 1)]``, ``E = max(sum e, 1)`` (``pf1 = 2^(f+1)``), then
    ``o = p·v`` (in ``ACC_O``) and ``out = clip(shift_round(o, S_c), lo_c, hi_c)``.
    ``exact``: the float-estimate division of eq. 39 is proven exact. ``shiftmax`` (eq. 30,
    the ``attention`` op): the probabilities are :func:`shiftmax_row`'s instead, with
    ``shiftmax = (score_frac, exp_bits + 2, k_max, prob_frac)`` (a length-4 array; empty
    for eq. 39). Queries run in blocks of :data:`BLOCK` (a short last block repeats its last
    query, not written twice)."""
    b, nq, cq = q.shape
    nk, cv = k.shape[1], v.shape[2]
    dq, dv = cq // heads, cv // heads
    top = table.shape[0] - 1
    kt = np.empty((dq, nk), ACC_Q)
    vh = np.empty((nk, dv), ACC_O)
    sc = np.empty((BLOCK, nk), ACC_Q)
    e = np.empty(nk, np.int64)
    p = np.empty((BLOCK, nk), ACC_O)
    o = np.empty((BLOCK, dv), ACC_O)
    rows = np.empty(BLOCK, np.int64)
    for bi in range(b):
        for h in range(heads):
            for j in range(nk):
                for t in range(dq):
                    kt[t, j] = k[bi, j, h * dq + t] << a1[h * dq + t]
                for t in range(dv):
                    vh[j, t] = v[bi, j, h * dv + t] << a2[h * dv + t]
            for i0 in range(0, nq, BLOCK):
                for r in range(BLOCK):
                    rows[r] = min(i0 + r, nq - 1)
                sc[:] = 0
                for t in range(dq):
                    c = h * dq + t
                    q0 = ACC_Q(q[bi, rows[0], c] << a0[c])
                    q1 = ACC_Q(q[bi, rows[1], c] << a0[c])
                    q2 = ACC_Q(q[bi, rows[2], c] << a0[c])
                    q3 = ACC_Q(q[bi, rows[3], c] << a0[c])
                    for j in range(nk):
                        kv = kt[t, j]
                        sc[0, j] += q0 * kv
                        sc[1, j] += q1 * kv
                        sc[2, j] += q2 * kv
                        sc[3, j] += q3 * kv
                for r in range(BLOCK):
                    m = acc_lo
                    for j in range(nk):
                        s = ((np.int64(sc[r, j]) * smult) << sleft) >> ss1
                        s = min(max((s + sup) >> sup, acc_lo), acc_hi)
                        e[j] = s
                        m = max(m, s)
                    if shiftmax.shape[0]:
                        shiftmax_row(e, m, table, shiftmax, phi, p[r])
                        continue
                    total = np.int64(0)
                    for j in range(nk):
                        ev = table[min(m - e[j], top)]
                        e[j] = ev
                        total += ev
                    total = max(total, np.int64(1))
                    den = 2 * total
                    if exact:  # floor(num / den) from a float64 estimate, corrected once
                        inv = 1.0 / np.float64(den)
                        for j in range(nk):
                            num = e[j] * pf1 + total
                            pj = np.int64(np.floor(np.float64(num) * inv))
                            rem = num - pj * den
                            pj += np.int64(rem >= den) - np.int64(rem < 0)
                            p[r, j] = min(max(pj, np.int64(0)), phi)
                    else:
                        for j in range(nk):
                            pj = (e[j] * pf1 + total) // den
                            p[r, j] = min(max(pj, np.int64(0)), phi)
                o[:] = 0
                for j in range(nk):
                    p0, p1, p2, p3 = p[0, j], p[1, j], p[2, j], p[3, j]
                    for t in range(dv):
                        vv = vh[j, t]
                        o[0, t] += p0 * vv
                        o[1, t] += p1 * vv
                        o[2, t] += p2 * vv
                        o[3, t] += p3 * vv
                for r in range(min(BLOCK, nq - i0)):
                    for t in range(dv):
                        ch = h * dv + t
                        w = (np.int64(o[r, t]) << oleft[ch]) >> os1[ch]
                        w = (w + oup[ch]) >> oup[ch]
                        out[bi, i0 + r, ch] = min(max(w, olo[ch]), ohi[ch])


def add_pos_rows(x, align, pos, left, s1, up, lo, hi, out):
    """Eq. 33 over ``(B, T, C)`` integers: ``clip(shift_round((x << align_c) + pos[t, c],
    S_c), lo_c, hi_c)`` (``left/s1/up`` of ``S``)."""
    b, n, c = x.shape
    for bi in range(b):
        for t in range(n):
            for j in range(c):
                v = ((np.int64(x[bi, t, j]) << align[j]) + pos[t, j]) << left[j]
                v = ((v >> s1[j]) + up[j]) >> up[j]
                out[bi, t, j] = min(max(v, lo[j]), hi[j])


def madnorm_rows(x, align, eps, norm_frac, mult, offset, left, s1, up, lo, hi, exact, out):
    """Eq. 31 (layer MAD normalization) over the last axis of ``(rows, D)`` integers:
    ``c = D·v - sum v``, ``den = max(sum |c| + eps, 1)``, ``z = floor((c·(2D << f) + den) /
    2·den)``, then ``clip(shift_round(z·M + O, S), lo, hi)`` per channel. ``exact``: the
    float-estimate division is proven exact (numerators below 2^52)."""
    rows, d = x.shape
    c = np.empty(d, np.int64)
    dd = np.int64(d)
    scale = (2 * dd) << norm_frac
    for r in range(rows):
        s = np.int64(0)
        for j in range(d):
            v = np.int64(x[r, j]) << align[j]
            c[j] = v
            s += v
        den = np.int64(0)
        for j in range(d):
            cj = dd * c[j] - s
            c[j] = cj
            den += abs(cj)
        den = max(den + eps, np.int64(1))
        den2 = 2 * den
        if exact:  # floor(num / den2) from a float64 estimate, corrected once
            inv = 1.0 / np.float64(den2)
            for j in range(d):
                num = c[j] * scale + den
                z = np.int64(np.floor(np.float64(num) * inv))
                rem = num - z * den2
                c[j] = z + np.int64(rem >= den2) - np.int64(rem < 0)
        else:
            for j in range(d):
                c[j] = (c[j] * scale + den) // den2
        for j in range(d):
            v = ((c[j] * mult[j] + offset[j]) << left[j]) >> s1[j]
            v = (v + up[j]) >> up[j]
            out[r, j] = min(max(v, lo[j]), hi[j])
