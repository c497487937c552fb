"""Integer kernels of the transformer layers written with ``keras.ops`` (int64 throughout).

Twins of :mod:`fixedq.engine.transformer_ops` (NumPy); both implement docs/numerics.md
eqs. 29-31 and are bit-identical (``tests/parity/test_transformer_parity.py``).

Example:
    >>> import numpy as np
    >>> exp2_table(2, 4).tolist()     # round_half_up(2^(r/4) * 2^4), r = 0..3
    [16, 19, 23, 27]
"""

from __future__ import annotations

import numpy as np
from keras import ops

from fixedq.tensors import kops
from fixedq.tensors.rounding import round_half_up

#: Largest frac_bits of the shiftmax exponent table (a table of 2^12 entries).
MAX_SCORE_FRAC = 12


def exp2_table(score_frac: int, exp_bits: int) -> np.ndarray:
    """Eq. 29b: ``T[r] = round_half_up(2^(r / 2^fs) * 2^P)`` for ``r = 0 .. 2^fs - 1`` (int64).

    A static table (like a weight); ``T[0] = 2^P`` and ``T[r] < 2^(P+1)``.
    """
    r = np.arange(1 << score_frac, dtype=np.float64)
    return round_half_up(np.exp2(r / (1 << score_frac) + exp_bits)).astype(np.int64)


def shiftmax_k_max(length: int, exp_bits: int) -> int:
    """Bit bound of the exponent sum: ``E < 2^k_max`` for ``length`` terms (eq. 29d).

    Raises ``ValueError`` when ``E^2`` could pass int64 (sequences longer than ~2^14 tokens).
    """
    k_max = exp_bits + 1 + int(np.ceil(np.log2(max(int(length), 1))))
    if 2 * k_max + 1 > 62:
        raise ValueError(f"shiftmax over {length} elements with exp_bits={exp_bits} overflows "
                         "int64; use fewer elements or a smaller exp_bits")
    return k_max


def ilog2_round(total, k_max: int):
    """Eq. 29d: ``round(log2 E)`` of int64 ``1 <= E < 2^k_max`` by comparisons only."""
    total = ops.cast(total, "int64")
    k = ops.zeros_like(total)
    for i in range(1, k_max + 1):
        k = k + ops.cast(total >= (1 << i), "int64")
    bump = ops.cast(total * total >= ops.left_shift(ops.ones_like(k), 2 * k + 1), "int64")
    return k + bump


def shiftmax_int(d, score_frac: int, table: np.ndarray, exp_bits: int, k_max: int,
                 out_frac: int, out_hi: int):
    """Eq. 29 on int64 ``d`` (frac_bits ``score_frac``) along the last axis -> unsigned ints."""
    d = ops.cast(d, "int64")
    d = d - ops.max(d, axis=-1, keepdims=True)
    q = ops.floor_divide(d, np.int64(1 << score_frac))
    r = d - q * np.int64(1 << score_frac)
    t = ops.take(ops.convert_to_tensor(table, dtype="int64"), r)
    e = kops.shift_round_dynamic(t, ops.minimum(-q, exp_bits + 2))
    k = ilog2_round(ops.sum(e, axis=-1, keepdims=True), k_max)
    y = kops.shift_round_dynamic(e, k - out_frac)
    return ops.clip(y, 0, out_hi)


def round_div(num, den):
    """``round_half_up(num / den)`` for int64 ``den > 0``: ``floor((2 num + den) / (2 den))``."""
    return ops.floor_divide(2 * num + den, 2 * den)


def softmax_int(s, table: np.ndarray, out_frac: int, out_hi: int):
    """Eq. 39 (eq. 30b) on int64 scores ``s`` along the last axis, table grid = their frac_bits:
    ``e = X[min(max s - s, L - 1)]``, ``p = sat(round_half_up(e 2^g / sum e))``."""
    s = ops.cast(s, "int64")
    d = ops.max(s, axis=-1, keepdims=True) - s
    e = ops.take(ops.convert_to_tensor(table, dtype="int64"),
                 ops.minimum(d, np.int64(table.size - 1)))
    total = ops.sum(e, axis=-1, keepdims=True)
    p = ops.floor_divide(e * np.int64(1 << (out_frac + 1)) + total, 2 * total)
    return ops.clip(p, 0, out_hi)
