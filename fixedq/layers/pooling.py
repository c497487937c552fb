"""Quantized pooling: MaxPool2D (exact on the grid) and GlobalAveragePooling2D (eq. 26).

GlobalAveragePooling2D sums the per-channel integers exactly, then requantizes the sum with
one multiplier + shift for ``2^(f_out - f_in) / (H * W)``.

Example:
    >>> import numpy as np
    >>> from fixedq.layers.spec import QSpec
    >>> gap = QuantizedGlobalAveragePooling2D(input_specs=[QSpec(8, False, (0,))],
    ...                                       output_spec=QSpec(8, False, (0,)))
    >>> np.asarray(gap(np.full((1, 2, 2, 1), 3.0, "float32"))).tolist()
    [[3.0]]
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from fixedq.layers.base import (
    QuantizedLayer,
    exact_dtype,
    from_integers,
    output_bounds,
    straight_through,
    to_channel_integers,
)
from fixedq.tensors import kops
from fixedq.tensors.rounding import to_multiplier_shift


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedMaxPool2D(QuantizedLayer):
    """MaxPool2D on on-grid floats: the max of grid values is a grid value (spec unchanged)."""

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", **kwargs):
        super().__init__(**kwargs)
        self.pool_size = tuple(int(p) for p in np.broadcast_to(pool_size, (2,)))
        self.strides = self.pool_size if strides is None else tuple(
            int(s) for s in np.broadcast_to(strides, (2,)))
        self.padding = str(padding).lower()

    def call(self, inputs):
        return ops.max_pool(inputs, self.pool_size, self.strides, self.padding)

    def compute_output_shape(self, input_shape):
        return keras.layers.MaxPooling2D(self.pool_size, self.strides,
                                         self.padding).compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "strides": self.strides,
                "padding": self.padding}


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedGlobalAveragePooling2D(QuantizedLayer):
    """Exact per-channel integer sum, then requantization by ``(M, S)`` (eq. 26)."""

    def __init__(self, scale_bits=8, **kwargs):
        super().__init__(**kwargs)
        self.scale_bits = int(scale_bits)

    def build(self, input_shape):
        h, w, c = (int(d) for d in input_shape[1:4])
        self.channels, self.pool_area = c, h * w
        spec = self.input_spec0
        f_in = spec.frac_array(c)
        self._f_out = self.output_spec.frac_array(c)
        factor = np.ldexp(1.0, self._f_out - f_in) / self.pool_area
        self._mult, self._shift = to_multiplier_shift(factor, self.scale_bits)
        bound = self.pool_area * int(spec.max_abs_array().max())
        self._dtype_exact = exact_dtype(bound, f"layer {self.name!r}")
        self._lo, self._hi = output_bounds(self.output_spec, c)
        super().build(input_shape)

    def call(self, inputs, training=None):
        v = to_channel_integers(inputs, self.input_spec0, self._dtype_exact)
        acc = ops.cast(ops.sum(v, axis=(1, 2)), "int64")
        y = kops.requantize(acc, self._mult, self._shift, self._lo, self._hi)
        out = from_integers(y, self._f_out, self.compute_dtype)
        if not training:
            return out
        lo = from_integers(self._lo, self._f_out, self.compute_dtype)
        hi = from_integers(self._hi, self._f_out, self.compute_dtype)
        return straight_through(ops.clip(ops.mean(inputs, axis=(1, 2)), lo, hi), out)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def integer_params(self) -> dict:
        return {"multiplier": self._mult, "shift": self._shift, "out_lo": self._lo,
                "out_hi": self._hi, "out_frac": self._f_out}

    def get_config(self):
        return {**super().get_config(), "scale_bits": self.scale_bits}
