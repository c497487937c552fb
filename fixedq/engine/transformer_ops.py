"""Engine ops of the transformer layers (NumPy only): shiftmax, attention, MAD normalization,
class token, position embeddings, token extraction.

Each function is the NumPy twin of the integer path of a quantized layer in
:mod:`fixedq.layers.transformers` and implements the equation of ``docs/numerics.md`` cited in
its docstring (eqs. 29-34); ``tests/parity/test_transformer_parity.py`` proves them bit-exact.

Example:
    >>> import numpy as np
    >>> ilog2_round(np.array([1, 3, 5, 6, 1024]), 12).tolist()   # round(log2 E)
    [0, 2, 2, 3, 10]
"""

from __future__ import annotations

import numpy as np

from fixedq.engine.kernels import exact_dtype
from fixedq.engine.table_ops import softmax_int
from fixedq.tensors.rounding import shift_round


def ilog2_round(total: np.ndarray, k_max: int) -> np.ndarray:
    """``round(log2 E)`` of integers ``1 <= E < 2^k_max`` (eq. 29d), integers only:
    ``k = #{i in 1..k_max : E >= 2^i}``, plus one when ``E^2 >= 2^(2k+1)``."""
    e = np.asarray(total, dtype=np.int64)
    k = np.zeros_like(e)
    for i in range(1, k_max + 1):
        k += e >= (np.int64(1) << i)
    return k + (e * e >= np.left_shift(np.int64(1), 2 * k + 1))


def shiftmax_int(d: np.ndarray, score_frac: int, table: np.ndarray, exp_bits: int, k_max: int,
                 out_frac: int, out_hi: int) -> np.ndarray:
    """Eq. 29 on integers ``d`` with frac_bits ``score_frac`` (the last axis is normalized)."""
    d = d - d.max(axis=-1, keepdims=True)
    q = np.floor_divide(d, np.int64(1) << score_frac)
    r = d - np.left_shift(q, score_frac)
    e = shift_round(table[r], np.minimum(-q, exp_bits + 2))
    k = ilog2_round(e.sum(axis=-1, keepdims=True), k_max)
    return np.clip(shift_round(e, k - out_frac), 0, out_hi)


def _align(x: np.ndarray, align) -> np.ndarray:
    align = np.asarray(align, dtype=np.int64)
    return np.left_shift(x, align) if np.any(align) else x


def exact_matmul(a: np.ndarray, b: np.ndarray, bound: int) -> np.ndarray:
    """``a @ b`` of integer arrays, exact: float BLAS when ``bound`` allows (eq. 19)."""
    dtype = exact_dtype(bound)
    if dtype == "int64":
        return np.matmul(a.astype(np.int64), b.astype(np.int64))
    return np.matmul(a.astype(dtype), b.astype(dtype)).astype(np.int64)


def _heads(x: np.ndarray, h: int) -> np.ndarray:
    b, n, c = x.shape
    return x.reshape(b, n, h, c // h).transpose(0, 2, 1, 3)


def run_shiftmax(op, xs: list[np.ndarray]) -> np.ndarray:
    """Eq. 29: the shiftmax of a ``shiftmax`` op's re-gridded input."""
    a, r = op.attrs, op.arrays
    d = shift_round(_align(xs[0], r["in_align"]), int(a["in_shift"]))
    return shiftmax_int(d, int(a["score_frac"]), r["exp_table"], int(a["exp_bits"]),
                        int(a["k_max"]), int(a["prob_frac"]), int(a["prob_hi"]))


def run_attention(op, xs: list[np.ndarray]) -> np.ndarray:
    """Eq. 30: multi-head attention of an ``attention`` op's (q, k, v) integers."""
    a, r = op.attrs, op.arrays
    return _attention(op, xs, lambda s: shiftmax_int(
        s, int(a["score_frac"]), r["exp_table"], int(a["exp_bits"]), int(a["k_max"]),
        int(a["prob_frac"]), int(a["prob_hi"])))


def run_attention_softmax(op, xs: list[np.ndarray]) -> np.ndarray:
    """Eq. 30b: multi-head attention with the integer softmax of eq. 39 on the scores (Keras
    ``MultiHeadAttention``)."""
    a, r = op.attrs, op.arrays
    zero = np.zeros(1, dtype=np.int64)
    return _attention(op, xs, lambda s: softmax_int(
        s, r["exp_table"], zero, 0, int(a["prob_frac"]), 0, int(a["prob_hi"])))


def _attention(op, xs: list[np.ndarray], probabilities) -> np.ndarray:
    a, r = op.attrs, op.arrays
    h = int(a["num_heads"])
    q, k, v = (_heads(_align(x, r[f"align{i}"]), h) for i, x in enumerate(xs))
    scores = exact_matmul(q, k.transpose(0, 1, 3, 2), int(a["score_bound"]))
    s = shift_round(scores * np.int64(a["score_multiplier"]), int(a["score_shift"]))
    s = np.clip(s, a["acc_lo"], a["acc_hi"])
    p = probabilities(s)
    o = exact_matmul(p, v, int(a["out_bound"]))
    b, _, n, _ = o.shape
    o = o.transpose(0, 2, 1, 3).reshape(b, n, -1)
    return np.clip(shift_round(o, r["out_shift"]), r["out_lo"], r["out_hi"])


def run_madnorm(op, xs: list[np.ndarray]) -> np.ndarray:
    """Eq. 31: layer MAD normalization of a ``madnorm`` op's input."""
    a, r = op.attrs, op.arrays
    v = _align(xs[0], r["in_align"])
    dim = v.shape[-1]
    c = dim * v - v.sum(axis=-1, keepdims=True)
    den = np.abs(c).sum(axis=-1, keepdims=True) + np.int64(a["eps_int"])
    den = np.maximum(den, 1)
    z = np.floor_divide(c * np.int64(2 * dim << int(a["norm_frac"])) + den, 2 * den)
    y = shift_round(z * r["multiplier"] + r["offset"], r["shift"])
    return np.clip(y, r["out_lo"], r["out_hi"])


def run_class_token(op, xs: list[np.ndarray]) -> np.ndarray:
    """Eq. 32: the class token prepended to the re-gridded tokens."""
    r = op.arrays
    x = np.clip(shift_round(xs[0], r["shift"]), r["out_lo"], r["out_hi"])
    tok = np.broadcast_to(r["token"], (x.shape[0], 1, x.shape[-1]))
    return np.concatenate([tok, x], axis=1)


def run_add_pos(op, xs: list[np.ndarray]) -> np.ndarray:
    """Eq. 33: position embeddings added, rounding shift, clip."""
    r = op.arrays
    acc = np.left_shift(xs[0], r["in_align"]) + r["pos"]
    return np.clip(shift_round(acc, r["shift"]), r["out_lo"], r["out_hi"])


def run_extract_token(op, xs: list[np.ndarray]) -> np.ndarray:
    """Eq. 34: one token of a ``(N, tokens, C)`` input."""
    token, x = int(op.attrs["token"]), xs[0]
    if x.ndim != 3 or not 0 <= token < x.shape[1]:
        raise ValueError(f"token {token} is not one of the tokens of an input of shape "
                         f"{x.shape}")
    return x[:, token, :]
