"""Quantized elementwise product of two tensors (``Multiply``, ``x * y``), broadcasting like
NumPy: the squeeze-and-excitation gate ``(B, H, W, C) * (B, 1, 1, C)``, MobileNetV3's
hard-swish ``x * hard_sigmoid(x)``.

In integers (docs/numerics.md eq. 46): with inputs ``v_a`` (frac_bits ``f_a``) and ``v_b``
(``f_b``), per channel ``c`` (either input's frac_bits may be one for all channels)::

    p = v_a * v_b                              exact, frac_bits f_a + f_b
    y = sat(shift_round(p, f_a + f_b - f_out))

(a negative shift is an exact left shift). The product is exact in the Keras layer (float32
or float64, chosen from the static bound ``max|v_a| * max|v_b|``) and in the engine (int64).

Example:
    >>> import numpy as np
    >>> from fixedq.layers.spec import QSpec
    >>> mul = QuantizedMultiply(input_specs=[QSpec(7, True, (4,)), QSpec(8, False, (8,))],
    ...                         output_spec=QSpec(7, True, (4,)))
    >>> np.asarray(mul([np.array([[1.5, -2.0]], "float32"),
    ...                 np.array([[0.5, 0.25]], "float32")])).tolist()
    [[0.75, -0.5]]
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from fixedq.layers.base import (
    QuantizedLayer,
    exact_float_dtype,
    from_integers,
    output_bounds,
    saturate_float,
    straight_through,
)
from fixedq.tensors import kops

__all__ = ["QuantizedMultiply"]


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedMultiply(QuantizedLayer):
    """Product of two on-grid inputs, requantized to ``output_spec`` (eq. 46)."""

    def build(self, input_shape):
        if len(self.input_specs) != 2 or len(input_shape) != 2:
            raise ValueError(f"layer {self.name!r}: QuantizedMultiply takes exactly two inputs, "
                             f"got {len(input_shape)}")
        self.channels = max(int(s[-1]) for s in input_shape)
        a, b = self.input_specs
        bound = int(a.max_abs_array().max()) * int(b.max_abs_array().max())
        self._dtype_exact = exact_float_dtype(bound, f"layer {self.name!r}")
        self._scales = [np.ldexp(1.0, s.frac_array()) for s in self.input_specs]
        self._shift = self.integer_params()["shift"]
        self._lo, self._hi = output_bounds(self.output_spec, self.channels)
        super().build(input_shape)

    def integer_params(self) -> dict:
        """``shift`` per output channel: ``f_a + f_b - f_out`` (int64)."""
        a, b = self.input_specs
        f_in = np.broadcast_to(a.frac_array() + b.frac_array(), (self.channels,))
        return {"shift": (f_in - self.output_spec.frac_array(self.channels)).astype(np.int64)}

    def call(self, inputs, training=None):
        x, y = inputs
        dt = self._dtype_exact
        v = (ops.cast(x, dt) * self._scales[0].astype(dt)) * \
            (ops.cast(y, dt) * self._scales[1].astype(dt))
        acc = kops.shift_round(ops.cast(v, "int64"), self._shift)
        out = from_integers(kops.saturate(acc, self._lo, self._hi),
                            self.output_spec.frac_array(self.channels), self.compute_dtype)
        if not training:
            return out
        return straight_through(saturate_float(x * y, self.output_spec, self.channels), out)

    def compute_output_shape(self, input_shape):
        return tuple(keras.layers.Multiply().compute_output_shape(list(input_shape)))
