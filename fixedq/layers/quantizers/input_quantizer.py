"""InputQuantizer: the only float-to-integer step of a quantized model (eq. 4).

Example:
    >>> import numpy as np
    >>> from fixedq.layers.spec import QSpec
    >>> q = InputQuantizer(output_spec=QSpec(8, False, (6,)))
    >>> float(q(np.array([[3.14159]], "float32"))[0, 0])
    3.140625
"""

from __future__ import annotations

import keras
from keras import ops

from fixedq.layers.base import (
    QuantizedLayer,
    from_integers,
    output_bounds,
    saturate_float,
    straight_through,
)
from fixedq.tensors import kops


@keras.saving.register_keras_serializable(package="fixedq")
class InputQuantizer(QuantizedLayer):
    """Quantize float inputs to ``output_spec``: ``v = sat(round_half_up(x * 2^f))``."""

    def build(self, input_shape):
        self.channels = int(input_shape[-1])
        self._f = self.output_spec.frac_array(self.channels)
        self._lo, self._hi = output_bounds(self.output_spec, self.channels)
        super().build(input_shape)

    def call(self, inputs, training=None):
        v = kops.quantize_float(inputs, self._f, self._lo, self._hi)
        out = from_integers(v, self._f, self.compute_dtype)
        if not training:
            return out
        return straight_through(saturate_float(ops.cast(inputs, self.compute_dtype),
                                               self.output_spec, self.channels), out)

    def integer_params(self) -> dict:
        return {"frac": self._f, "lo": self._lo, "hi": self._hi}

