"""Engine kernels of the integer tables (NumPy only): elementwise functions (eq. 38) and
softmax (eq. 39).

They are the NumPy twins of :class:`fixedq.layers.table.QuantizedTable` and
:class:`fixedq.layers.softmax.QuantizedSoftmax`; ``tests/parity/test_activation_parity.py``
proves them bit-exact.

Example:
    >>> import numpy as np
    >>> table_lookup(np.array([[-2, 0, 1]]), np.array([4, 5, 6, 7]), np.array([2])).tolist()
    [[4, 6, 7]]
"""

from __future__ import annotations

import numpy as np

from fixedq.tensors.rounding import shift_round


def table_lookup(v: np.ndarray, table: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Eq. 38: ``table[v + base_c]`` (indices clipped to the table: a valid program never
    needs it, a damaged one cannot read outside the array)."""
    return np.take(table, v + base, mode="clip")


def softmax_int(v: np.ndarray, table: np.ndarray, align: np.ndarray, shift: int, out_frac: int,
                lo: int, hi: int) -> np.ndarray:
    """Eq. 39 over the last axis of input integers ``v``."""
    if np.any(align):
        v = np.left_shift(v, align)
    d = v.max(axis=-1, keepdims=True) - v
    t = np.minimum(shift_round(d, shift), table.size - 1)
    e = np.take(table, t)
    total = np.maximum(e.sum(axis=-1, keepdims=True), 1)  # >= 2^E unless the table is damaged
    p = np.floor_divide(e * np.int64(1 << (out_frac + 1)) + total, 2 * total)
    return np.clip(p, lo, hi)


def run_table(op, xs):
    """The ``table`` op: eq. 38."""
    return table_lookup(xs[0], op.arrays["table"], op.arrays["base"])


def run_softmax(op, xs):
    """The ``softmax`` op: eq. 39."""
    a, r = op.attrs, op.arrays
    return softmax_int(xs[0], r["exp_table"], r["in_align"], int(a["shift"]),
                       int(a["prob_frac"]), int(a["out_lo"]), int(a["out_hi"]))
