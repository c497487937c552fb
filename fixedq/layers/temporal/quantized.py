"""Quantized buffer convolutions: an integer FIFO of input frames, the neural-layer arithmetic.

``QuantizedBufferTempConv`` and ``QuantizedDepthwiseBufferTempConv`` are neural layers
(docs/numerics.md eqs. 14-21: per-output-channel weight scale, exact integer accumulator,
multiplier/shift requantization, saturating clip) whose linear op reads a window of the last
``kernel_size`` input frames (docs/numerics.md "Streaming ops", eq. 40)::

    acc_t = b_q + sum_{j=0}^{k-1} sum_c v_{t-k+1+j, c} w_q[j, c, o]     (depthwise: c = o)

The FIFO holds the input frames as received: on-grid values ``v * 2^-f`` of the input's
``value_bits`` (the engine keeps the integers ``v`` themselves), so its width is the input
activation width (8 bits by default, 4 with 4-bit activations). Frames before the first one
are zeros. ``reset_buffers()`` clears the FIFO; a new batch size starts clean.

Example:
    >>> layer = QuantizedBufferTempConv(4, 3)
    >>> layer.kernel_size, layer.filters
    (3, 4)
"""

from __future__ import annotations

import keras
from keras import ops

from fixedq.layers.neural import QuantizedNeuralLayer
from fixedq.layers.temporal.buffer_conv import FifoMixin, check_kernel_size


class _QuantizedFifoConv(FifoMixin, QuantizedNeuralLayer):
    def __init__(self, kernel_size, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = check_kernel_size(kernel_size, type(self).__name__)

    def build(self, input_shape):
        self.build_fifo(input_shape)
        super().build(input_shape)

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size}


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedBufferTempConv(_QuantizedFifoConv):
    """Integer ``BufferTempConv`` (kernel ``(k, C, filters)``, scale per filter)."""

    _scale_axes = (0, 1)

    def __init__(self, filters, kernel_size, **kwargs):
        super().__init__(kernel_size, **kwargs)
        self.filters = int(filters)

    def _kernel_shape(self, input_shape):
        return (self.kernel_size, int(input_shape[-1]), self.filters)

    def fan_in(self):
        return self.kernel_size * self._in_channels

    def _linear(self, x, kernel):
        # x: the window (N, k, ..., C) -> (N, ..., k*C) against the (k*C, F) kernel
        k, c = self.kernel_size, self._in_channels
        shape = ops.shape(x)
        stacked = ops.reshape(ops.moveaxis(x, 1, -2), (shape[0], *x.shape[2:-1], k * c))
        return ops.matmul(stacked, ops.reshape(kernel, (k * c, self.filters)))

    def call(self, inputs, training=None):
        return super().call(self.window(inputs), training=training)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedDepthwiseBufferTempConv(_QuantizedFifoConv):
    """Integer ``DepthwiseBufferTempConv`` (kernel ``(k, C)``, scale per channel)."""

    _scale_axes = (0,)

    def _kernel_shape(self, input_shape):
        return (self.kernel_size, int(input_shape[-1]))

    def fan_in(self):
        return self.kernel_size

    def _linear(self, x, kernel):
        shape = (1, self.kernel_size, *[1] * (len(x.shape) - 3), self._in_channels)
        return ops.sum(x * ops.reshape(kernel, shape), axis=1)

    def call(self, inputs, training=None):
        return super().call(self.window(inputs), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)
