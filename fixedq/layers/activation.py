"""QuantizedReLU: clip an on-grid tensor at 0 and at an on-grid ``max_value`` (eq. 3).

The frac_bits do not change; the output is unsigned with the input's value_bits. A ReLU that
directly follows a neural layer is fused into that layer's output bounds by ``quantize`` and
never appears on its own.

Example:
    >>> import numpy as np
    >>> from fixedq.layers.spec import QSpec
    >>> r = QuantizedReLU(input_specs=[QSpec(7, True, (4,))],
    ...                   output_spec=QSpec(7, False, (4,), hi=(96,)))
    >>> np.asarray(r(np.array([[-1.0, 2.5, 7.0]], "float32"))).tolist()
    [[0.0, 2.5, 6.0]]
"""

from __future__ import annotations

import keras
from keras import ops

from fixedq.layers.base import QuantizedLayer, from_integers, output_bounds


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedReLU(QuantizedLayer):
    """``y = clip(v, 0, hi_c)`` on integers, computed exactly on the on-grid floats."""

    def build(self, input_shape):
        self.channels = int(input_shape[-1])
        f = self.output_spec.frac_array(self.channels)
        lo, hi = output_bounds(self.output_spec, self.channels)
        self._lo_f = from_integers(lo, f)
        self._hi_f = from_integers(hi, f)
        super().build(input_shape)

    def call(self, inputs):
        return ops.clip(inputs, self._lo_f, self._hi_f)

    def integer_params(self) -> dict:
        lo, hi = output_bounds(self.output_spec, self.channels)
        return {"lo": lo, "hi": hi}


def relu_output_spec(spec, max_value):
    """Spec after a ReLU with optional ``max_value``: unsigned, same frac_bits (eq. 25)."""
    import math

    from fixedq.layers.spec import QSpec

    hi = spec.hi
    value_bits = spec.value_bits
    if spec.lo is not None:  # asymmetric window: keep its non-negative part (all n bits)
        hi, value_bits = tuple(int(h) for h in spec.hi_array()), spec.value_bits + 1
    if max_value is not None:
        top = tuple(int(math.floor(float(max_value) * 2.0**f)) for f in spec.frac_bits)
        hi = top if hi is None else tuple(min(a, b) for a, b in zip(top, hi, strict=True))
    return QSpec(value_bits, False, spec.frac_bits, hi)
