"""NumPy kernels of the integer engine: exact linear ops on integer-valued arrays.

Every kernel takes integer-valued arrays and returns the exact integer result as ``int64``.
The linear ops (conv, depthwise conv, transposed conv, matmul) run integer data through float
BLAS whenever a static bound proves the float result exact (``float32`` below 2^24, ``float64``
below 2^53, docs/numerics.md eq. 12) and through ``int64`` arithmetic otherwise. Padding follows
TensorFlow's rule (``same``: extra padding at the end).

Example:
    >>> import numpy as np
    >>> x = np.arange(9, dtype=np.int64).reshape(1, 3, 3, 1)
    >>> k = np.ones((2, 2, 1, 1), dtype=np.int64)
    >>> conv2d(x, k, (1, 1), "valid", (1, 1), "float32")[0, :, :, 0].tolist()
    [[8, 12], [20, 24]]
"""

from __future__ import annotations

import math

import numpy as np

FLOAT32_EXACT = 2**24
FLOAT64_EXACT = 2**53
#: Largest int64: :func:`channel_absmax`'s value for ``|-2^63|`` (which int64 cannot hold).
INT64_MAX = 2**63 - 1

#: Largest im2col matrix (elements) built at once; larger batches are processed in chunks.
IM2COL_ELEMENTS = 1 << 23


def exact_dtype(bound: int) -> str:
    """Cheapest dtype computing sums bounded by ``bound`` exactly.

    Example:
        >>> exact_dtype(1000), exact_dtype(2**30), exact_dtype(2**60)
        ('float32', 'float64', 'int64')
    """
    if bound < FLOAT32_EXACT:
        return "float32"
    if bound < FLOAT64_EXACT:
        return "float64"
    return "int64"


def conv_geometry(size: int, k: int, stride: int, padding: str, dilation: int = 1):
    """``(out, pad_before, pad_after)`` of one spatial axis with TensorFlow's padding rule.

    Example:
        >>> conv_geometry(5, 3, 2, "same"), conv_geometry(5, 3, 2, "valid")
        ((3, 1, 1), (2, 0, 0))
    """
    eff = (k - 1) * dilation + 1
    if padding == "same":
        out = -(-size // stride)
        total = max((out - 1) * stride + eff - size, 0)
        return out, total // 2, total - total // 2
    out = (size - eff) // stride + 1
    if out <= 0:
        raise ValueError(f"input size {size} is smaller than the kernel extent {eff}")
    return out, 0, 0


def _pad(x: np.ndarray, ph: tuple[int, int], pw: tuple[int, int], value=0) -> np.ndarray:
    if ph == (0, 0) and pw == (0, 0):
        return x
    return np.pad(x, ((0, 0), ph, pw, (0, 0)), constant_values=value)


def taps(xp: np.ndarray, k: tuple[int, int], s: tuple[int, int], d: tuple[int, int],
         out: tuple[int, int]):
    """Yield ``((a, b), view)`` for each kernel tap: the strided input window of that tap."""
    for a in range(k[0]):
        for b in range(k[1]):
            r0, c0 = a * d[0], b * d[1]
            yield (a, b), xp[:, r0:r0 + (out[0] - 1) * s[0] + 1:s[0],
                             c0:c0 + (out[1] - 1) * s[1] + 1:s[1], :]


def _matmul(a: np.ndarray, b: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "int64":
        return np.einsum("...i,ij->...j", a.astype(np.int64), b.astype(np.int64))
    return np.matmul(a.astype(dtype, copy=False), b.astype(dtype, copy=False))


def _to_int(y: np.ndarray) -> np.ndarray:
    return y if y.dtype == np.int64 else y.astype(np.int64)


def conv2d(x, kernel, strides, padding, dilation, dtype) -> np.ndarray:
    """Exact NHWC conv (kernel ``(kh, kw, cin, cout)``) by im2col + matmul in ``dtype``."""
    n, h, w, c = x.shape
    kh, kw, _, cout = kernel.shape
    ho, *ph = conv_geometry(h, kh, strides[0], padding, dilation[0])
    wo, *pw = conv_geometry(w, kw, strides[1], padding, dilation[1])
    cast = np.int64 if dtype == "int64" else dtype
    kmat = kernel.reshape(kh * kw * c, cout).astype(cast)
    out = np.empty((n, ho, wo, cout), dtype=np.int64)
    rows = max(1, IM2COL_ELEMENTS // max(1, ho * wo * kh * kw * c))
    for start in range(0, n, rows):
        xp = _pad(x[start:start + rows].astype(cast, copy=False), tuple(ph), tuple(pw))
        m = xp.shape[0]
        if kh == kw == 1:
            cols = xp[:, ::strides[0], ::strides[1], :][:, :ho, :wo, :]
        else:
            cols = np.empty((m, ho, wo, kh * kw, c), dtype=cast)
            for (a, b), view in taps(xp, (kh, kw), strides, dilation, (ho, wo)):
                cols[:, :, :, a * kw + b, :] = view
        res = _matmul(cols.reshape(m * ho * wo, kh * kw * c), kmat, dtype)
        out[start:start + m] = res.reshape(m, ho, wo, cout)
    return out


def depthwise_conv2d(x, kernel, strides, padding, dilation, dtype) -> np.ndarray:
    """Exact NHWC depthwise conv (kernel ``(kh, kw, c, mult)``, output channel ``c*mult + m``)."""
    n, h, w, c = x.shape
    kh, kw, _, mult = kernel.shape
    ho, *ph = conv_geometry(h, kh, strides[0], padding, dilation[0])
    wo, *pw = conv_geometry(w, kw, strides[1], padding, dilation[1])
    cast = np.int64 if dtype == "int64" else dtype
    xp = _pad(x.astype(cast, copy=False), tuple(ph), tuple(pw))
    k = kernel.astype(cast)
    acc = np.zeros((n, ho, wo, c, mult), dtype=cast)
    for (a, b), view in taps(xp, (kh, kw), strides, dilation, (ho, wo)):
        acc += view[..., None] * k[a, b]
    return _to_int(acc.reshape(n, ho, wo, c * mult))


def transpose_geometry(size: int, k: int, stride: int, padding: str, dilation: int = 1):
    """``(out, pad_before)`` of a transposed conv axis (Keras/TensorFlow semantics).

    Example:
        >>> transpose_geometry(4, 3, 2, "same"), transpose_geometry(4, 3, 2, "valid")
        ((8, 0), (9, 0))
    """
    eff = (k - 1) * dilation + 1
    out = size * stride if padding == "same" else size * stride + max(eff - stride, 0)
    total = max((size - 1) * stride + eff - out, 0)
    return out, total // 2


def conv2d_transpose(x, kernel, strides, padding, dilation, dtype) -> np.ndarray:
    """Exact NHWC transposed conv (Keras kernel layout ``(kh, kw, cout, cin)``)."""
    n, h, w, c = x.shape
    kh, kw, cout, _ = kernel.shape
    ho, pb = transpose_geometry(h, kh, strides[0], padding, dilation[0])
    wo, pl = transpose_geometry(w, kw, strides[1], padding, dilation[1])
    cast = np.int64 if dtype == "int64" else dtype
    kmat = np.transpose(kernel, (3, 0, 1, 2)).reshape(c, kh * kw * cout)
    y = _matmul(x.reshape(n * h * w, c), kmat, dtype).reshape(n, h, w, kh, kw, cout)
    full_h = max((h - 1) * strides[0] + (kh - 1) * dilation[0] + 1, pb + ho)
    full_w = max((w - 1) * strides[1] + (kw - 1) * dilation[1] + 1, pl + wo)
    full = np.zeros((n, full_h, full_w, cout), dtype=cast)
    for a in range(kh):
        for b in range(kw):
            r0, c0 = a * dilation[0], b * dilation[1]
            full[:, r0:r0 + (h - 1) * strides[0] + 1:strides[0],
                 c0:c0 + (w - 1) * strides[1] + 1:strides[1], :] += y[:, :, :, a, b, :]
    return _to_int(full[:, pb:pb + ho, pl:pl + wo, :])


def dense(x, kernel, dtype) -> np.ndarray:
    """Exact matmul on the last axis (any leading shape)."""
    return _to_int(_matmul(x, kernel, dtype))


def max_pool2d(x, pool, strides, padding) -> np.ndarray:
    """Max pooling; ``same`` padding never wins (pads with the dtype minimum or ``-inf``)."""
    n, h, w, c = x.shape
    ho, *ph = conv_geometry(h, pool[0], strides[0], padding)
    wo, *pw = conv_geometry(w, pool[1], strides[1], padding)
    if pool == strides and (padding == "valid" or (h % pool[0] == 0 and w % pool[1] == 0)):
        # non-overlapping windows: pairwise maxima of strided views (no padding needed)
        v = x[:, :ho * pool[0], :wo * pool[1], :]
        v = v.reshape(n, ho, pool[0], wo * pool[1], c)
        out = v[:, :, 0].copy()
        for i in range(1, pool[0]):
            np.maximum(out, v[:, :, i], out=out)
        out = out.reshape(n, ho, wo, pool[1], c)
        res = out[:, :, :, 0].copy()
        for j in range(1, pool[1]):
            np.maximum(res, out[:, :, :, j], out=res)
        return res
    low = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    xp = _pad(x, tuple(ph), tuple(pw), low)
    out = None
    for _, view in taps(xp, pool, strides, (1, 1), (ho, wo)):
        out = view.copy() if out is None else np.maximum(out, view, out=out)
    return out


def avg_pool_sum(x, pool, strides, padding) -> np.ndarray:
    """Exact integer window sums of average pooling (``same``: zero padding, so a border
    window sums its valid elements only; the divisor is folded into the requantization).

    Example:
        >>> avg_pool_sum(np.arange(4).reshape(1, 2, 2, 1), (2, 2), (2, 2), "valid").ravel()
        array([6])
    """
    _, h, w, _ = x.shape
    ho, *ph = conv_geometry(h, pool[0], strides[0], padding)
    wo, *pw = conv_geometry(w, pool[1], strides[1], padding)
    xp = _pad(np.asarray(x, dtype=np.int64), tuple(ph), tuple(pw))
    out = None
    for _, view in taps(xp, pool, strides, (1, 1), (ho, wo)):
        out = view.copy() if out is None else np.add(out, view, out=out)
    return out


def linear_bound(kernel: np.ndarray, kind: str, in_max_abs) -> int:
    """Static bound on every partial sum of the linear op: ``max_o sum |w_o,c| * max|x_c|``.

    ``in_max_abs`` is one bound for every input or a per-input-channel array (aligned
    magnitudes of per-axis inputs).

    Example:
        >>> linear_bound(np.full((3, 3, 512, 1), 127), "conv2d", 255)
        149230080
    """
    k = np.abs(kernel.astype(np.int64))
    m = np.asarray(in_max_abs, dtype=np.int64)
    if kind == "depthwise":  # (kh, kw, c, mult): each output reads one channel
        per_out = k.sum(axis=(0, 1)) * np.broadcast_to(m, (k.shape[2],))[:, None]
    elif kind == "transpose":  # (kh, kw, out, in)
        per_out = (k * m).sum(axis=(0, 1, 3))
    elif kind == "conv2d":  # (kh, kw, in, out)
        per_out = (k * m[:, None] if m.ndim else k * m).sum(axis=(0, 1, 2))
    else:  # dense (in, out)
        per_out = (k * m[:, None] if m.ndim else k * m).sum(axis=0)
    return int(np.max(per_out)) if per_out.size else 0


def channel_absmax(x2: np.ndarray) -> np.ndarray:
    """Largest ``|x|`` per column of integer rows ``x2`` ``(rows, C)``, as int64 (0 without
    rows). ``|-2^63|`` saturates at :data:`INT64_MAX`, still past every bound the kernels
    are chosen by (2^24, 2^31, 2^53, 2^62); ``np.abs`` wraps it to ``-2^63``, and the column's
    maximum would be its largest other magnitude.

    Example:
        >>> channel_absmax(np.array([[-2**63, 3], [5, -4]])).tolist()
        [9223372036854775807, 4]
    """
    if x2.shape[0] == 0:
        return np.zeros(x2.shape[1], np.int64)
    hi = x2.max(axis=0)
    if x2.dtype.kind == "u":
        return np.minimum(hi.astype(np.uint64), np.uint64(INT64_MAX)).astype(np.int64)
    lo = x2.min(axis=0).astype(np.int64)
    return np.maximum(hi.astype(np.int64), -np.maximum(lo, -INT64_MAX))


def ceil_log2(value: int) -> int:
    """Bits needed for ``value`` (``ceil(log2(value + 1))``)."""
    return int(math.ceil(math.log2(int(value) + 1))) if value > 0 else 0


# ---------------------------------------------------------------------------------------------
# Fast exact execution of a whole neural op (linear + bias + requantize + fused max-pool)
# ---------------------------------------------------------------------------------------------

def float_requant_ok(amax, multiplier, shift) -> bool:
    """Whether :func:`requantize_float` is exact for accumulators ``|acc| <= amax``.

    ``shift_round(acc*M, S)`` is ``floor(acc*M*2^-S + 1/2)`` (S > 0: adding ``2^(S-1)`` and
    shifting right is flooring; S <= 0: an exact left shift, and ``floor(v + 1/2) = v`` for an
    integer ``v``). In float64, ``M*2^-S`` is exact (``M < 2^53``; a power of two only moves
    the exponent), so ``t = acc * (M*2^-S)`` is exactly ``P*2^-S`` with ``P = acc*M`` whenever
    that value has at most 53 significant bits, and ``floor`` is exact. The one rounding left
    is ``t + 1/2 = Q*2^-max(S,1)`` with the integer ``Q = P + 2^(S-1)`` (S > 0) or
    ``Q = 2*P*2^-S + 1`` (S <= 0): it is exact when ``|Q| <= 2^53``, which is the test made
    here per output channel (it also covers ``t`` itself). Past it the identity fails
    (``tests/engine/test_kernels.py`` checks both sides of the boundary).

    Example:
        >>> float_requant_ok(2**30, 2**8, 16), float_requant_ok(2**45, 2**8, 16)
        (True, False)
    """
    amax = np.asarray(amax, dtype=object)
    m = np.asarray(multiplier, dtype=np.int64).astype(object)
    s = np.asarray(shift, dtype=np.int64)
    amax, m, s = np.broadcast_arrays(amax, m, s)
    for a, mm, ss in zip(amax.ravel(), m.ravel(), s.ravel(), strict=True):
        p = int(a) * int(mm)
        need = p + (1 << (int(ss) - 1)) if ss > 0 else (p << int(1 - ss)) + 1
        if need > FLOAT64_EXACT:
            return False
    return True


def requantize_float(acc, scale, lo, hi) -> np.ndarray:
    """``clip(floor(acc * scale + 1/2), lo, hi)`` in float64, in place when ``acc`` is float64.

    ``scale = M * 2^-S`` (float64); exact under :func:`float_requant_ok`. Returns int64.
    """
    acc = acc if acc.dtype == np.float64 else acc.astype(np.float64)
    np.multiply(acc, scale, out=acc)
    acc += 0.5
    np.floor(acc, out=acc)
    np.clip(acc, lo, hi, out=acc)
    return acc.astype(np.int64)


def _windows(xp: np.ndarray, k, s, d, out) -> np.ndarray:
    """im2col of a padded NHWC array: ``(n*ho*wo, kh*kw*c)`` with columns ordered tap-major
    ``(a, b, c)`` (the row order of ``kernel.reshape(kh*kw*c, cout)``).

    Tap-major keeps each copied run ``c`` elements long: 3-5x faster than channel-major columns
    for ``c > 1``; a single channel is copied tap by tap (contiguous rows).
    """
    from numpy.lib.stride_tricks import sliding_window_view

    n, c = xp.shape[0], xp.shape[3]
    rows = n * out[0] * out[1]
    if k == (1, 1):
        v = xp[:, :(out[0] - 1) * s[0] + 1:s[0], :(out[1] - 1) * s[1] + 1:s[1], :]
        return np.ascontiguousarray(v).reshape(rows, c)
    if c == 1:
        cols = np.empty((n, out[0], out[1], k[0] * k[1]), dtype=xp.dtype)
        for (a, b), view in taps(xp, k, s, d, out):
            cols[..., a * k[1] + b] = view[..., 0]
        return cols.reshape(rows, k[0] * k[1])
    eff = ((k[0] - 1) * d[0] + 1, (k[1] - 1) * d[1] + 1)
    v = sliding_window_view(xp, eff, axis=(1, 2))  # (n, H', W', c, effh, effw)
    v = v[:, :(out[0] - 1) * s[0] + 1:s[0], :(out[1] - 1) * s[1] + 1:s[1], :, ::d[0], ::d[1]]
    return np.ascontiguousarray(v.transpose(0, 1, 2, 4, 5, 3)).reshape(rows, k[0] * k[1] * c)


class NeuralPlan:
    """Precomputed fast execution of one ``neural`` op; outputs identical to
    :func:`fixedq.engine.ops.neural_output` of the exact linear result.

    - **Linear part** (conv2d, dense): one im2col (``sliding_window_view``) and float32 BLAS
      GEMMs. Input channels are sorted by their alignment shift ``a_c`` and split into as few
      contiguous groups as possible such that, with the *batch's* per-channel maxima ``m_c``,
      ``max_o sum_{c in g} sum_taps |w| * m_c * 2^(a_c - base_g) < 2^24``: each group's GEMM is
      exact in float32, and the groups are combined as ``sum_g 2^base_g * P_g`` in float64
      (exact while the whole bound is ``< 2^53``); beyond that, int64. Depthwise: per-tap
      broadcast multiply-add per channel (channels never mix, so alignment is a per-channel
      power-of-two scale, exact in float). Transposed conv: the :func:`conv2d_transpose` kernel.
    - **Fused max-pool first**: ``+bias``, the accumulator clip and ``floor(acc*M*2^-S + 1/2)``
      followed by a clip are each non-decreasing per channel (``M >= 0``), so max-pooling the
      accumulators before them gives the same result on 4x fewer values.
    - **Requantization in float64** when :func:`float_requant_ok` proves it exact, else int64.
    """

    def __init__(self, op):
        a, r = op.attrs, op.arrays
        self.op = op
        self.type = a["type"]
        self.kernel = np.asarray(r["kernel"], dtype=np.int64)
        align = r.get("in_align")
        cin = self.kernel.shape[0] if self.type == "dense" else (
            self.kernel.shape[3] if self.type == "transpose" else self.kernel.shape[2])
        self.align = (np.zeros(cin, np.int64) if align is None
                      else np.broadcast_to(np.asarray(align, np.int64), (cin,)).copy())
        self.bias = np.asarray(r["bias"], dtype=np.int64)
        mult = np.asarray(r["multiplier"], dtype=np.int64)
        shift = np.asarray(r["shift"], dtype=np.int64)
        self.out_lo = np.asarray(r["out_lo"], dtype=np.int64).astype(np.float64)
        self.out_hi = np.asarray(r["out_hi"], dtype=np.int64).astype(np.float64)
        bound = int(a.get("accum_bound", 1 << 62))
        top = bound + int(np.abs(self.bias).max(initial=0))
        self.acc_clip = top > a["acc_hi"] or -top < a["acc_lo"]
        self.acc_lo, self.acc_hi = float(a["acc_lo"]), float(a["acc_hi"])
        amax = min(top, max(abs(int(a["acc_lo"])), abs(int(a["acc_hi"])))) if self.acc_clip \
            else top
        # float64 requantization is eq. 5's half-up rounding: other rules (eq. 5b, imported
        # programs) run the reference tail
        self.float_requant = bool(np.all(mult >= 0)) and float_requant_ok(amax, mult, shift) \
            and top < FLOAT64_EXACT and max(abs(a["acc_lo"]), abs(a["acc_hi"])) < FLOAT64_EXACT \
            and a.get("rounding", "half_up") == "half_up"
        self.scale = mult.astype(np.float64) * np.ldexp(1.0, -shift)
        # without an accumulator clip, (acc + b)*scale + 1/2 == acc*scale + (b*scale + 1/2):
        # b*scale + 1/2 and acc*scale are exact and so is their sum (see requant)
        self.offset = self.bias * self.scale + 0.5
        self.unsigned_out = bool(np.all(self.out_lo >= 0))
        self.pool = a.get("pool")
        # a bias map (asymmetric input, eq. 37) varies over positions: pool after requantizing
        self.pool_first = bool(self.pool) and bool(np.all(mult >= 0)) and self.bias.ndim == 1
        if self.type in ("conv2d", "dense"):
            k = self.kernel if self.type == "dense" else self.kernel.transpose(2, 0, 1, 3)
            cout = self.cout = k.shape[-1]
            # summed in float64: an int64 sum of crafted weights near 2^60 wraps (float64 is
            # exact below 2^53 and its rounding monotone: no bound >= 2^53 comes out below)
            self.abs_w = np.abs(k.astype(np.float64)).reshape(cin, -1, cout).sum(axis=1)
            self.perm = np.argsort(self.align, kind="stable")
            self.sorted_align = self.align[self.perm]
            # kernel with input channels in sorted order, taps first: (taps, cin, cout)
            self.ksorted = k[self.perm].reshape(cin, -1, cout).transpose(1, 0, 2)
            self._kmats = {}
            # column ranges of the distinct alignment values (in sorted channel order)
            edges = np.flatnonzero(np.diff(self.sorted_align)) + 1
            self.ranges = list(zip(np.r_[0, edges].tolist(), np.r_[edges, cin].tolist(),
                                   strict=True))

    # -------------------------------------------------------------- linear part
    def _groups(self, m: np.ndarray):
        """Merge the alignment ranges into float32-exact groups for channel maxima ``m``
        (sorted order). Returns ``([(c0, c1, base, dtype)], total_bound)``."""
        a = self.sorted_align
        w = self.abs_w[self.perm] * m[:, None]  # (cin, cout), float64 (exact: < 2^53)
        total = float(np.max((w * np.ldexp(1.0, a)[:, None]).sum(axis=0), initial=0.0))
        groups = []
        c0, base = self.ranges[0][0], int(a[self.ranges[0][0]]) if a.size else 0
        c1 = c0
        for r0, r1 in self.ranges:
            cand = (w[c0:r1] * np.ldexp(1.0, a[c0:r1] - base)[:, None]).sum(axis=0).max()
            if c1 == c0 or cand < FLOAT32_EXACT:
                c1 = r1
                continue
            groups.append((c0, c1, base))
            c0, c1, base = r0, r1, int(a[r0])
        groups.append((c0, c1, base))
        out = []
        for g0, g1, b in groups:
            gb = (w[g0:g1] * np.ldexp(1.0, a[g0:g1] - b)[:, None]).sum(axis=0).max()
            out.append((g0, g1, b, "float32" if gb < FLOAT32_EXACT else "float64"))
        return out, total

    def kmat(self, g0: int, g1: int, dtype) -> np.ndarray:
        """GEMM matrix of sorted input channels ``g0:g1``: rows tap-major ``(tap, channel)``
        (matches :func:`_windows`), in ``dtype`` (cached)."""
        key = (g0, g1, np.dtype(dtype).str)
        km = self._kmats.get(key)
        if km is None:
            km = self._kmats[key] = np.ascontiguousarray(
                self.ksorted[:, g0:g1].reshape(-1, self.cout)).astype(dtype)
        return km

    def linear(self, x: np.ndarray) -> np.ndarray:
        """Exact linear part (before bias) of the op on int64 input ``x`` (not yet aligned):
        float32/float64 holding exact integers, or int64."""
        t = self.type
        if t == "depthwise":
            return self._depthwise(x)
        if t == "transpose":
            xa = np.left_shift(x, self.align) if np.any(self.align) else x
            return conv2d_transpose(xa, self.kernel, *self._conv_args(),
                                    self.op.attrs["accum_dtype"])
        c = x.shape[-1]
        m = channel_absmax(x.reshape(-1, c)) if x.size else np.zeros(c, np.int64)
        groups, total = self._groups(m[self.perm].astype(np.float64))
        if total >= FLOAT64_EXACT:  # exact only in integers
            xa = np.left_shift(x, self.align) if np.any(self.align) else x
            if t == "dense":
                return dense(xa, self.kernel, "int64")
            return conv2d(xa, self.kernel, *self._conv_args(), "int64")
        one32 = len(groups) == 1 and groups[0][3] == "float32"
        rel = np.zeros(c, np.int64)
        for g0, g1, b, _ in groups:
            rel[g0:g1] = self.sorted_align[g0:g1] - b
        dt = np.float32 if all(g[3] == "float32" for g in groups) else np.float64
        xf = x.astype(dt)
        if np.any(self.perm != np.arange(c)):
            xf = xf[..., self.perm]
        if np.any(rel):
            xf *= np.ldexp(1.0, rel).astype(dt)
        if t == "dense":
            lead = xf.shape[:-1]
            cols, shape = xf.reshape(-1, c), (*lead, self.cout)
        else:
            a = self.op.attrs
            n, h, w_, _ = x.shape
            kh, kw = self.kernel.shape[:2]
            s, d = tuple(a["strides"]), tuple(a["dilation_rate"])
            ho, *ph = conv_geometry(h, kh, s[0], a["padding"], d[0])
            wo, *pw = conv_geometry(w_, kw, s[1], a["padding"], d[1])
            shape = (n, ho, wo, self.cout)
            per = max(1, IM2COL_ELEMENTS // max(1, ho * wo * kh * kw * c))
            if n > per:  # chunk the batch: im2col memory stays bounded
                return np.concatenate([self.linear(x[i:i + per]) for i in range(0, n, per)])
            xp = _pad(xf, tuple(ph), tuple(pw))

            def cols_of(g0, g1):
                return _windows(xp[..., g0:g1], (kh, kw), s, d, (ho, wo))
        if one32:
            cols = cols_of(0, c) if t != "dense" else cols
            y = cols @ self.kmat(0, c, np.float32)
            if groups[0][2]:
                y *= np.float32(2.0 ** groups[0][2])
            return y.reshape(shape)
        acc = None
        for g0, g1, b, gdt in groups:
            gc = cols[:, g0:g1] if t == "dense" else cols_of(g0, g1)
            part = gc.astype(gdt, copy=False) @ self.kmat(g0, g1, gdt)
            part = part.astype(np.float64, copy=False)
            if b:
                part *= 2.0 ** b
            if acc is None:
                acc = part
            else:
                acc += part
        return acc.reshape(shape)

    def _conv_args(self):
        a = self.op.attrs
        return tuple(a["strides"]), a["padding"], tuple(a["dilation_rate"])

    def _depthwise(self, x):
        a = self.op.attrs
        n, h, w, c = x.shape
        kh, kw, _, mult = self.kernel.shape
        s, d = tuple(a["strides"]), tuple(a["dilation_rate"])
        ho, *ph = conv_geometry(h, kh, s[0], a["padding"], d[0])
        wo, *pw = conv_geometry(w, kw, s[1], a["padding"], d[1])
        m = channel_absmax(x.reshape(-1, c)) if x.size else np.zeros(c, np.int64)
        # in float64: int64 sums and products wrap on crafted weights and inputs, float64
        # rounding is monotone (a bound of 2^53 or more never comes out below it)
        per_ch = (np.abs(self.kernel.astype(np.float64)).sum(axis=(0, 1))
                  * m.astype(np.float64)[:, None]).max(initial=0)
        if per_ch >= FLOAT64_EXACT:
            xa = np.left_shift(x, self.align) if np.any(self.align) else x
            return depthwise_conv2d(xa, self.kernel, s, a["padding"], d, "int64")
        dt = np.float32 if per_ch < FLOAT32_EXACT else np.float64
        xp = _pad(x.astype(dt), tuple(ph), tuple(pw))
        k = self.kernel.astype(dt)
        acc = np.zeros((n, ho, wo, c, mult), dtype=dt)
        for (ta, tb), view in taps(xp, (kh, kw), s, d, (ho, wo)):
            acc += view[..., None] * k[ta, tb]
        if np.any(self.align):  # per-channel power of two: exact in float
            acc *= np.ldexp(1.0, self.align).astype(dt)[:, None]
        return acc.reshape(n, ho, wo, c * mult)

    # -------------------------------------------------------------- bias, requantize, pool
    def requant(self, acc: np.ndarray) -> np.ndarray:
        """Bias, accumulator clip and float64 requantization (needs ``float_requant``);
        channels on the last axis. Returns int64.

        Without an accumulator clip the bias is folded into the rounding offset:
        ``floor(acc*s + (b*s + 1/2))`` with ``s = M*2^-S``. Under :func:`float_requant_ok`
        (checked with ``amax >= |acc|, |b|``) ``acc*s`` is exactly ``acc*M*2^-S``,
        ``b*s + 1/2`` is exactly ``(b*M + 2^(S-1))*2^-S`` (S > 0; ``(2*b*M*2^-S + 1)/2``
        otherwise), and their exact sum is ``Q*2^-max(S,1)`` with ``|Q| <= 2^53``: representable,
        so the float64 addition returns it exactly, as in :func:`requantize_float`. The clip to
        ``[lo, hi]`` (integers) commutes with ``floor``; for ``lo >= 0`` the clipped value is
        non-negative and the int64 conversion (truncation) is the floor.
        """
        if not self.acc_clip:
            y = np.multiply(acc, self.scale, dtype=np.float64)  # a new array
            y += self.offset
            np.maximum(y, self.out_lo, out=y)  # (faster than np.clip)
            np.minimum(y, self.out_hi, out=y)
            if not self.unsigned_out:
                np.floor(y, out=y)
            return y.astype(np.int64)
        acc = acc.astype(np.float64)  # a copy: safe to work in place
        acc += self.bias
        if self.acc_clip:
            np.clip(acc, self.acc_lo, self.acc_hi, out=acc)
        return requantize_float(acc, self.scale, self.out_lo, self.out_hi)

    def finish(self, acc: np.ndarray, fallback) -> np.ndarray:
        """Bias, accumulator clip, requantization and fused pooling of exact accumulators
        ``acc`` (float holding integers, or int64). ``fallback(acc_int64)`` is the reference
        tail (:func:`fixedq.engine.ops.neural_output`) used when float64 is not provably exact.
        """
        if not self.float_requant:
            return fallback(acc if acc.dtype == np.int64 else acc.astype(np.int64))
        p = self.pool
        if self.pool_first:
            acc = max_pool2d(acc, tuple(p["pool_size"]), tuple(p["strides"]), p["padding"])
        y = self.requant(acc)
        if p and not self.pool_first:
            y = max_pool2d(y, tuple(p["pool_size"]), tuple(p["strides"]), p["padding"])
        return y
