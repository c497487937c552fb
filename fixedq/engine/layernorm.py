"""Engine kernel of the ``layernorm`` op (NumPy only): layer normalization over the last axis
in integers, the twin of :class:`fixedq.layers.layer_normalization.QuantizedLayerNormalization`
(docs/numerics.md eq. 47).

Example:
    >>> import numpy as np
    >>> isqrt_newton(np.array([2**60, 2**61, 2**62 - 1])).tolist()
    [1073741824, 1518500249, 2147483647]
"""

from __future__ import annotations

import numpy as np

from fixedq.tensors.rounding import shift_round

#: Integer Newton steps of the square root (the Keras twin uses the same number).
NEWTON_STEPS = 6


def isqrt_newton(n: np.ndarray) -> np.ndarray:
    """``floor(sqrt(n))`` of int64 ``n`` in ``[2^60, 2^62)`` (eq. 47c): Newton steps from
    ``2^31``, then one comparison."""
    n = np.asarray(n, dtype=np.int64)
    x = np.full_like(n, 1 << 31)
    for _ in range(NEWTON_STEPS):
        x = (x + n // x) // 2
    return x - (x * x > n)


def floor_log2(w: np.ndarray) -> np.ndarray:
    """``floor(log2 w)`` of int64 ``1 <= w < 2^62`` by comparisons (eq. 47b)."""
    k = np.zeros_like(w)
    for i in range(1, 62):
        k += w >= (np.int64(1) << i)
    return k


def normalized(v: np.ndarray, eps_int: int, norm_frac: int) -> np.ndarray:
    """Eq. 47a-d: the normalized integers ``z`` (frac_bits ``norm_frac``) of aligned ``v``.

    Raises:
        ValueError: ``D^4·max|v|^2 + eps_int >= 2^62`` (the sums would leave the exact int64
            range; ``quantize`` never builds such a layer, a crafted program can).
    """
    dim = v.shape[-1]
    top = int(np.abs(v).max(initial=0))
    if dim**4 * top * top + int(eps_int) >= 1 << 62 or int(eps_int) < 0:
        raise ValueError(f"layernorm over {dim} channels: inputs up to |v| = {top} with "
                         f"eps_int {eps_int} leave the exact int64 range (needs "
                         "D^4·max|v|^2 + eps_int < 2^62, eq. 47)")
    c = dim * v - v.sum(axis=-1, keepdims=True)
    w = np.maximum(dim * (c * c).sum(axis=-1, keepdims=True) + np.int64(eps_int), 1)
    a = (61 - floor_log2(w)) // 2
    r = isqrt_newton(np.left_shift(w, 2 * a))
    num = c * np.int64(dim) * np.left_shift(np.int64(1), a + norm_frac)
    return (2 * num + r) // (2 * r)


def run_layernorm(op, xs: list[np.ndarray]) -> np.ndarray:
    """Eq. 47: layer normalization of a ``layernorm`` op's input, then the affine (eq. 28)."""
    a, r = op.attrs, op.arrays
    align = np.asarray(r["in_align"], dtype=np.int64)
    v = np.left_shift(xs[0].astype(np.int64), align) if np.any(align) else xs[0].astype(np.int64)
    z = normalized(v, int(a["eps_int"]), int(a["norm_frac"]))
    y = shift_round(z * r["multiplier"] + r["offset"], r["shift"])
    return np.clip(y, r["out_lo"], r["out_hi"])
