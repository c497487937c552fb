"""Quantized skip connections: Add (exact aligned sum, then a shift) and Concatenate.

Add: every input is aligned to the common ``F`` (exact left shifts), summed exactly, and the sum
is requantized to the output spec by a rounding shift ``F - f_out`` (eq. 27). In training
(QAT), the gradient is that of the float sum saturated at the output range, like the neural
layers' (eq. 24): a sum the integers clip passes no gradient (the same for a Concatenate that
re-grids its inputs).
Concatenate on the last axis keeps values and concatenates per-channel frac_bits; on another axis
every input is shifted to the common per-channel frac_bits of the output spec.

Example:
    >>> import numpy as np
    >>> from fixedq.layers.spec import QSpec
    >>> add = QuantizedAdd(input_specs=[QSpec(7, True, (2,)), QSpec(7, True, (4,))],
    ...                    output_spec=QSpec(7, True, (3,)))
    >>> np.asarray(add([np.array([[0.25]], "float32"), np.array([[0.0625]], "float32")])).tolist()
    [[0.375]]
"""

from __future__ import annotations

import keras
from keras import ops

from fixedq.layers.base import (
    QuantizedLayer,
    exact_float_dtype,
    saturate_float,
    shift_requantize,
    straight_through,
    to_channel_integers,
)


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedAdd(QuantizedLayer):
    """Sum of on-grid inputs, requantized to ``output_spec`` (eq. 27)."""

    def build(self, input_shape):
        self.channels = int(input_shape[0][-1])
        self._big_f = max(s.max_frac for s in self.input_specs)
        bound = sum(s.aligned_max_abs() << (self._big_f - s.max_frac) for s in self.input_specs)
        self._dtype_exact = exact_float_dtype(bound, f"layer {self.name!r}")
        self._shift = self._big_f - self.output_spec.frac_array(self.channels)
        super().build(input_shape)

    def call(self, inputs, training=None):
        acc = None
        for x in inputs:
            v = ops.cast(x, self._dtype_exact) * float(2.0**self._big_f)
            acc = v if acc is None else acc + v
        out = shift_requantize(ops.cast(acc, "int64"), self._shift, self.output_spec,
                               self.channels)
        if not training:
            return out
        total = inputs[0]
        for x in inputs[1:]:
            total = total + x
        return straight_through(saturate_float(total, self.output_spec, self.channels), out)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def integer_params(self) -> dict:
        return {"in_frac": self._big_f, "shift": self._shift}


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedConcatenate(QuantizedLayer):
    """Concatenate on-grid inputs; see the module docstring for the frac_bits rule."""

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.axis = int(axis)

    def build(self, input_shape):
        rank = len(input_shape[0])
        self._last = self.axis in (-1, rank - 1)
        self.channels = sum(int(s[-1]) for s in input_shape) if self._last \
            else int(input_shape[0][-1])
        super().build(input_shape)

    def call(self, inputs, training=None):
        if self._last:
            return ops.concatenate(inputs, axis=self.axis)
        if training:
            exact = self.call(inputs, training=False)
            return straight_through(saturate_float(ops.concatenate(inputs, axis=self.axis),
                                                   self.output_spec, self.channels), exact)
        parts = []
        f_out = self.output_spec.frac_array(self.channels)
        for x, spec in zip(inputs, self.input_specs, strict=True):
            v = ops.cast(to_channel_integers(x, spec), "int64")
            shift = spec.frac_array(self.channels) - f_out
            parts.append(shift_requantize(v, shift, self.output_spec, self.channels))
        return ops.concatenate(parts, axis=self.axis)

    def compute_output_shape(self, input_shape):
        return keras.layers.Concatenate(axis=self.axis).compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}



