"""OutputQuantizer: move an on-grid tensor to a coarser grid / fewer bits (eqs. 5, 3).

``y_c = sat(shift_round(v_c, f_in_c - f_out_c))``: a pure shift per channel, with the one
rounding rule. Neural layers carry their own output quantization (multiplier + shift); this
layer is for tensors that need re-gridding on their own (e.g. after a Concatenate of inputs
with different frac_bits when activations are per-tensor).

Example:
    >>> import numpy as np
    >>> from fixedq.layers.spec import QSpec
    >>> q = OutputQuantizer(input_specs=[QSpec(8, False, (4,))], output_spec=QSpec(4, False, (2,)))
    >>> float(q(np.array([[2.6875]], "float32"))[0, 0])    # 43/16 -> 11/4
    2.75
"""

from __future__ import annotations

import keras
from keras import ops

from fixedq.layers.base import (
    QuantizedLayer,
    saturate_float,
    shift_requantize,
    straight_through,
    to_channel_integers,
)


@keras.saving.register_keras_serializable(package="fixedq")
class OutputQuantizer(QuantizedLayer):
    """Requantize an on-grid input to ``output_spec`` by per-channel rounding shifts."""

    def build(self, input_shape):
        self.channels = int(input_shape[-1])
        f_in = self.input_spec0.frac_array(self.channels)
        self._shift = f_in - self.output_spec.frac_array(self.channels)
        super().build(input_shape)

    def call(self, inputs, training=None):
        v = ops.cast(to_channel_integers(inputs, self.input_spec0), "int64")
        out = shift_requantize(v, self._shift, self.output_spec, self.channels)
        if not training:
            return out
        return straight_through(saturate_float(inputs, self.output_spec, self.channels), out)

    def integer_params(self) -> dict:
        return {"shift": self._shift}

