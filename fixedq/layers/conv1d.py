"""Quantized Conv1D: the neural-layer computation (docs/numerics.md eqs. 14-21) with a
``(k, in, filters)`` kernel over ``(N, steps, channels)`` inputs.

The engine runs it as a ``conv2d`` over a ``(1, steps)`` image (kernel ``(1, k, in,
filters)``): the same integer sums, so both executors agree bit for bit. ``causal`` padding is
not supported (``quantize`` keeps such a Conv1D float, with the reason in its warning).

Example:
    >>> layer = QuantizedConv1D(4, 3)
    >>> layer.kernel_size, layer.strides, layer.padding
    ((3,), (1,), 'valid')
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from fixedq.layers.neural import QuantizedNeuralLayer


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedConv1D(QuantizedNeuralLayer):
    """Integer Conv1D (kernel ``(k, in, filters)``, scale per filter)."""

    _scale_axes = (0, 1)

    def __init__(self, filters, kernel_size, strides=1, padding="valid", dilation_rate=1,
                 **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = tuple(int(k) for k in np.broadcast_to(kernel_size, (1,)))
        self.strides = tuple(int(s) for s in np.broadcast_to(strides, (1,)))
        self.dilation_rate = tuple(int(d) for d in np.broadcast_to(dilation_rate, (1,)))
        self.padding = str(padding).lower()
        if self.padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same' (causal is not supported), "
                             f"got {padding!r}")

    def _kernel_shape(self, input_shape):
        return (*self.kernel_size, int(input_shape[-1]), self.filters)

    def fan_in(self):
        return self.kernel_size[0] * self._in_channels

    def _linear(self, x, kernel):
        return ops.conv(x, kernel, strides=self.strides, padding=self.padding,
                        dilation_rate=self.dilation_rate)

    def compute_output_shape(self, input_shape):
        return keras.layers.Conv1D(self.filters, self.kernel_size, self.strides, self.padding,
                                   dilation_rate=self.dilation_rate).compute_output_shape(
                                       input_shape)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "strides": self.strides,
                "padding": self.padding, "dilation_rate": self.dilation_rate}
