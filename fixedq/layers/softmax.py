"""QuantizedSoftmax: softmax over the last axis with an exp table and an integer division
(docs/numerics.md eq. 39).

On input integers ``v_c`` (frac_bits ``f_c``), all aligned to ``F = max f_c``::

    V_c = v_c * 2^(F - f_c)                  d_c = max_j V_j - V_c >= 0     (exact)
    t_c = min(shift_round(d_c, F - F_t), L - 1)                              (F_t <= F)
    e_c = X[t_c],   X[i] = round_half_up(2^E * exp(-i * 2^-F_t)),   X[L - 1] = 0
    p_c = sat(floor((e_c * 2^(g + 1) + S) / (2 S))),   S = sum_j e_j        (= round(e 2^g / S))

``E = 24`` exp bits, the table grid ``F_t = min(F, g + 4, 15)`` and ``L`` the first index whose
entry rounds to 0. ``S >= 2^E`` (the largest input has ``d = 0``, ``e = 2^E``), so the division
is well defined. The output is unsigned with all its bits fractional, ``g = bits``: 1.0
saturates to ``1 - 2^-bits``. Error bound: eq. 39b.

Example:
    >>> import numpy as np
    >>> from fixedq.layers.spec import QSpec
    >>> sm = QuantizedSoftmax(input_specs=[QSpec(7, True, (4,))],
    ...                       output_spec=QSpec(8, False, (8,)))
    >>> (np.asarray(sm(np.array([[0.0, 0.0, 1.0, -8.0]], "float32"))) * 256).tolist()
    [[54.0, 54.0, 147.0, 0.0]]
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from fixedq.layers.base import (
    QuantizedLayer,
    from_integers,
    output_bounds,
    straight_through,
    to_channel_integers,
)
from fixedq.tensors import kops
from fixedq.tensors.rounding import round_half_up

__all__ = ["EXP_BITS", "QuantizedSoftmax", "exp_table"]

#: Fractional bits of the exp table (its largest entry is 2^EXP_BITS).
EXP_BITS = 24
#: Finest grid of the exp table's index (at most ~2^19.2 entries).
MAX_TABLE_FRAC = 15


def exp_table(frac: int, exp_bits: int = EXP_BITS) -> np.ndarray:
    """``X[i] = round_half_up(2^E exp(-i 2^-frac))`` up to and including the first 0 (int64).

    Example:
        >>> exp_table(0, 4).tolist()
        [16, 6, 2, 1, 0]
    """
    i0 = int(math.floor((exp_bits + 1) * math.log(2.0) * 2.0**frac)) + 1
    while True:
        i = np.arange(i0 + 1, dtype=np.float64)
        table = round_half_up(np.ldexp(np.exp(-np.ldexp(i, -frac)), exp_bits))
        if table[-1] == 0:
            stop = int(np.argmax(table == 0))
            return table[:stop + 1]
        i0 += 1 + i0 // 8  # not reached for exact exp; safe against libm differences


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedSoftmax(QuantizedLayer):
    """Softmax over the last axis on integers (eq. 39); per-tensor unsigned output."""

    def __init__(self, exp_bits: int = EXP_BITS, **kwargs):
        super().__init__(**kwargs)
        self.exp_bits = int(exp_bits)
        if not 1 <= self.exp_bits <= 30:
            raise ValueError(f"exp_bits must be in 1..30, got {exp_bits!r}")

    def build(self, input_shape):
        self.channels = int(input_shape[-1])
        spec = self.output_spec
        if spec.signed or not spec.per_tensor:
            raise ValueError(f"QuantizedSoftmax {self.name!r}: the output spec must be unsigned "
                             f"and per-tensor, got {spec}")
        f_in = self.input_spec0.frac_array(self.channels)
        top = int(f_in.max())
        self._align = (top - f_in).astype(np.int64)
        self._g = int(spec.frac_bits[0])
        table_frac = min(top, self._g + 4, MAX_TABLE_FRAC)
        self._shift = top - table_frac
        self._table = exp_table(table_frac, self.exp_bits)
        self._lo, self._hi = (int(b[0]) for b in output_bounds(spec, 1))
        super().build(input_shape)

    def integer_params(self) -> dict:
        return {"exp_table": self._table, "in_align": self._align,
                "shift": np.int64(self._shift), "out_lo": np.int64(self._lo),
                "out_hi": np.int64(self._hi), "out_frac": np.int64(self._g)}

    def integer_call(self, inputs):
        """Output integers (int64) of on-grid ``inputs``."""
        v = ops.cast(to_channel_integers(inputs, self.input_spec0), "int64")
        v = v * np.left_shift(np.int64(1), self._align)
        d = ops.max(v, axis=-1, keepdims=True) - v
        t = ops.minimum(kops.shift_round(d, self._shift), self._table.size - 1)
        e = ops.take(self._table, t)
        total = ops.sum(e, axis=-1, keepdims=True)
        p = ops.floor_divide(e * np.int64(1 << (self._g + 1)) + total, 2 * total)
        return ops.clip(p, self._lo, self._hi)

    def call(self, inputs, training=None):
        out = from_integers(self.integer_call(inputs), [self._g], self.compute_dtype)
        if not training:
            return out
        return straight_through(ops.softmax(inputs, axis=-1), out)

    def get_config(self):
        return {**super().get_config(), "exp_bits": self.exp_bits}
