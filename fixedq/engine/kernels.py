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


def _taps(xp: np.ndarray, k: tuple[int, int], s: tuple[int, int], d: tuple[int, int],
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
            for (a, b), view in _taps(xp, (kh, kw), strides, dilation, (ho, wo)):
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
    for (a, b), view in _taps(xp, (kh, kw), strides, dilation, (ho, wo)):
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
    """Max pooling on integers; ``same`` padding never wins (pads with the int64 minimum)."""
    n, h, w, c = x.shape
    ho, *ph = conv_geometry(h, pool[0], strides[0], padding)
    wo, *pw = conv_geometry(w, pool[1], strides[1], padding)
    xp = _pad(x, tuple(ph), tuple(pw), np.iinfo(np.int64).min)
    out = None
    for _, view in _taps(xp, pool, strides, (1, 1), (ho, wo)):
        out = view.copy() if out is None else np.maximum(out, view, out=out)
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


def ceil_log2(value: int) -> int:
    """Bits needed for ``value`` (``ceil(log2(value + 1))``)."""
    return int(math.ceil(math.log2(int(value) + 1))) if value > 0 else 0
