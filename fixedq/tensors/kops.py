"""The arithmetic of :mod:`fixedq.tensors.rounding`, written with ``keras.ops`` for use in layers.

Each function implements the same numbered equation of ``docs/numerics.md`` as its NumPy twin
and gives bit-identical results (``tests/tensors/test_kops_agree.py`` proves it). Integer
tensors are ``int64``; float inputs are converted to ``float64`` before any rounding.

Example:
    >>> import numpy as np
    >>> from fixedq.tensors import kops
    >>> kops.shift_round(np.array([5, -5]), 1).numpy().tolist()
    [3, -2]
"""

from __future__ import annotations

import numpy as np
from keras import ops

_EXP_MASK = 0x7FF
_EXP_BIAS = 1022  # frexp convention: mantissa in [0.5, 1)
_ROUND_LIMIT = float(2**62)  # as rounding.ROUND_LIMIT: no float -> int64 cast overflows
_MAX_SHIFT = 62  # rounding.MAX_SHIFT (eq. 13b)
_TINY_SCALE = 2.0**-100  # rounding.TINY_SCALE (eq. 13b)


def round_half_up(x):
    """Eq. 2: ``floor(x + 1/2)`` on float64, returned as int64, saturated at ``±2^62``.

    As in the NumPy twin: ``floor(x) + [x - floor(x) >= 1/2]``, exact for every float64.
    """
    x = ops.clip(ops.cast(x, "float64"), -_ROUND_LIMIT, _ROUND_LIMIT)
    down = ops.floor(x)
    return ops.cast(down, "int64") + ops.cast(x - down >= 0.5, "int64")


def saturate(v, lo, hi):
    """Eq. 3: clip int64 values into ``[lo, hi]`` (bounds may be per-axis arrays)."""
    return ops.clip(ops.cast(v, "int64"), lo, hi)


def quantize_float(x, frac_bits, lo, hi):
    """Eq. 4: ``sat(round_half_up(x * 2^f))`` with float64 arithmetic; returns int64.

    The twin of :func:`fixedq.tensors.rounding.quantize_input`: ``x * 2^f`` is clipped to
    ``[lo, hi]`` in float before the integer conversion, so every value saturates (``±inf``
    included) and nothing overflows. NaN (which a layer inside a graph cannot reject per value)
    is quantized as 0.
    """
    scale = np.ldexp(1.0, np.asarray(frac_bits, dtype=np.int64))
    x = ops.cast(x, "float64")
    x = ops.where(ops.isnan(x), ops.zeros_like(x), x)
    lo_f = np.asarray(lo, dtype=np.float64)
    hi_f = np.asarray(hi, dtype=np.float64)
    return round_half_up(ops.clip(x * scale, lo_f, hi_f))


def shift_round(v, shift):
    """Eq. 5: arithmetic shift with rounding, half up; ``shift`` is a static int or int array.

    As in the NumPy twin a right shift is ``((v >> (s-1)) + 1) >> 1``: no overflow, any ``s``.
    """
    s = np.asarray(shift, dtype=np.int64)
    left = np.maximum(-s, 0)
    v = ops.cast(v, "int64")
    if np.any(left):
        v = v * np.left_shift(np.int64(1), left)
    if np.any(s > 0):
        first = np.minimum(np.maximum(s - 1, 0), 63)
        up = (s > 0).astype(np.int64)
        v = ops.right_shift(ops.right_shift(v, first) + up, up)
    return v


def shift_round_dynamic(v, shift):
    """Eq. 5 with a shift held in an int64 tensor (used when scales are computed in-graph)."""
    v = ops.cast(v, "int64")
    shift = ops.cast(shift, "int64")
    left = ops.maximum(-shift, 0)
    v = v * ops.left_shift(ops.ones_like(shift), left)
    first = ops.clip(shift - 1, 0, 63)
    up = ops.cast(shift > 0, "int64")
    return ops.right_shift(ops.right_shift(v, first) + up, up)


def frexp_exponent(x):
    """Exponent ``e`` with ``x = m * 2^e``, ``m`` in [0.5, 1), read from float64 bits (exact)."""
    bits = ops.view(ops.cast(x, "float64"), "int64")
    return ops.bitwise_and(ops.right_shift(bits, 52), _EXP_MASK) - _EXP_BIAS


def to_multiplier_shift(scale, scale_bits: int = 8):
    """Eqs. 6 and 13b in-graph: non-negative float64 scales to int64 ``(M, S)``,
    ``scale ~ M * 2^-S``, ``S <= 62``; scales below ``2^-100`` give ``M = S = 0``."""
    scale = ops.cast(scale, "float64")
    zero = scale < _TINY_SCALE
    scale = ops.where(zero, 1.0, scale)
    shift = scale_bits - frexp_exponent(scale)
    mult = round_half_up(ops.multiply(scale, ops.power(2.0, ops.cast(shift, "float64"))))
    overflow = mult >= (1 << scale_bits)
    mult = ops.where(overflow, ops.right_shift(mult, 1), mult)
    shift = ops.where(overflow, shift - 1, shift)
    extra = ops.clip(shift - _MAX_SHIFT, 0, scale_bits + 1)  # eq. 13b
    mult = shift_round_dynamic(mult, extra)
    shift = ops.minimum(shift, _MAX_SHIFT)
    return ops.where(zero, 0, mult), ops.where(zero, 0, shift)


def quantize_weights(kernel, axes, qmax: int):
    """Eq. 14: symmetric per-output-channel weights; returns int64 ``w_q`` and float64 ``s``.

    ``s = max|w| / qmax`` over ``axes`` (kept as size-1 axes), ``w_q = clip(round_half_up(w /
    s), -qmax, qmax)`` in float64. An all-zero channel uses ``s = 1 / qmax`` (``w_q = 0``; any
    positive scale would do), so its bias still quantizes (eq. 16) and reaches the output.

    Example:
        >>> w_q, s = quantize_weights(np.array([[0.5, 0.0], [-1.0, 0.0]]), (0,), 127)
        >>> w_q.numpy().tolist(), s.numpy().ravel().tolist()
        ([[64, 0], [-127, 0]], [0.007874015748031496, 0.007874015748031496])
    """
    k = ops.cast(kernel, "float64")
    maxabs = ops.max(ops.abs(k), axis=axes, keepdims=True)
    scale = ops.where(maxabs > 0, maxabs, 1.0) / float(qmax)
    return ops.clip(round_half_up(k / scale), -qmax, qmax), scale


def quantize_bias(bias, frac_bits: int, scale, lo: int, hi: int):
    """Eq. 16: ``b_q = sat(round_half_up(b * 2^F / s))`` into the accumulator range ``[lo, hi]``.

    Example:
        >>> b_q = quantize_bias(np.array([0.1, -0.2]), 4, np.array([0.01, 0.02]), -128, 127)
        >>> b_q.numpy().tolist()   # 160 and -160, saturated
        [127, -128]
    """
    b = ops.cast(bias, "float64") * float(2.0**frac_bits) / ops.cast(scale, "float64")
    return ops.clip(round_half_up(b), lo, hi)


def requantize(acc, multiplier, shift, lo, hi):
    """Eq. 7: ``sat(shift_round(acc * M, S))`` in int64, static ``M`` and ``S``."""
    prod = ops.cast(acc, "int64") * np.asarray(multiplier, dtype=np.int64)
    return saturate(shift_round(prod, shift), lo, hi)


def requantize_dynamic(acc, multiplier, shift, lo, hi):
    """Eq. 7 with ``M`` and ``S`` held in int64 tensors."""
    prod = ops.cast(acc, "int64") * ops.cast(multiplier, "int64")
    return saturate(shift_round_dynamic(prod, shift), lo, hi)
