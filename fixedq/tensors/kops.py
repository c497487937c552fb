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


def round_half_up(x):
    """Eq. 2: ``floor(x + 1/2)`` on float64, returned as int64, saturated at ``±2^62``."""
    y = ops.clip(ops.cast(x, "float64") + 0.5, -_ROUND_LIMIT, _ROUND_LIMIT)
    return ops.cast(ops.floor(y), "int64")


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
    """Eq. 5: arithmetic shift with rounding, half up; ``shift`` is a static int or int array."""
    s = np.asarray(shift, dtype=np.int64)
    right = np.maximum(s, 0)
    left = np.maximum(-s, 0)
    half = np.where(right > 0, np.left_shift(np.int64(1), np.maximum(right - 1, 0)), 0)
    v = ops.cast(v, "int64")
    if np.any(left):
        v = v * np.left_shift(np.int64(1), left)
    if np.any(right):
        v = ops.floor_divide(v + half, np.left_shift(np.int64(1), right))
    return v


def shift_round_dynamic(v, shift):
    """Eq. 5 with a shift held in an int64 tensor (used when scales are computed in-graph)."""
    v = ops.cast(v, "int64")
    shift = ops.cast(shift, "int64")
    right = ops.maximum(shift, 0)
    left = ops.maximum(-shift, 0)
    one = ops.ones_like(shift)
    v = v * ops.left_shift(one, left)
    half = ops.where(right > 0, ops.left_shift(one, ops.maximum(right - 1, 0)), 0)
    return ops.floor_divide(v + half, ops.left_shift(one, right))


def frexp_exponent(x):
    """Exponent ``e`` with ``x = m * 2^e``, ``m`` in [0.5, 1), read from float64 bits (exact)."""
    bits = ops.view(ops.cast(x, "float64"), "int64")
    return ops.bitwise_and(ops.right_shift(bits, 52), _EXP_MASK) - _EXP_BIAS


def to_multiplier_shift(scale, scale_bits: int = 8):
    """Eq. 6 in-graph: positive float64 scales to int64 ``(M, S)`` with ``scale ~ M * 2^-S``.

    Only normal, non-negative float64 scales are supported (the callers' scales are).
    """
    scale = ops.cast(scale, "float64")
    shift = scale_bits - frexp_exponent(scale)
    mult = round_half_up(ops.multiply(scale, ops.power(2.0, ops.cast(shift, "float64"))))
    overflow = mult >= (1 << scale_bits)
    mult = ops.where(overflow, ops.right_shift(mult, 1), mult)
    shift = ops.where(overflow, shift - 1, shift)
    zero = scale <= 0
    return ops.where(zero, 0, mult), ops.where(zero, 0, shift)


def requantize(acc, multiplier, shift, lo, hi):
    """Eq. 7: ``sat(shift_round(acc * M, S))`` in int64, static ``M`` and ``S``."""
    prod = ops.cast(acc, "int64") * np.asarray(multiplier, dtype=np.int64)
    return saturate(shift_round(prod, shift), lo, hi)


def requantize_dynamic(acc, multiplier, shift, lo, hi):
    """Eq. 7 with ``M`` and ``S`` held in int64 tensors."""
    prod = ops.cast(acc, "int64") * ops.cast(multiplier, "int64")
    return saturate(shift_round_dynamic(prod, shift), lo, hi)
