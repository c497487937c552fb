"""Temporal convolutions over a FIFO of past frames: one output frame per input frame.

``BufferTempConv(filters, kernel_size)`` keeps the last ``kernel_size - 1`` input frames in a
FIFO; at each frame it stacks them with the new frame (oldest first) and mixes all
``kernel_size x channels`` values into ``filters`` outputs per pixel::

    y_t = sum_{j=0}^{k-1} x_{t-k+1+j} @ kernel[j]      (kernel: (k, C, filters))

which is exactly a causal ``Conv3D`` with kernel ``(k, 1, 1)`` evaluated at time ``t``
(``kernel[j] = conv3d_kernel[j, 0, 0]``). ``DepthwiseBufferTempConv(kernel_size)`` does the
same per channel (kernel ``(k, C)``). Frames before the first one are zeros; the FIFO is
explicit state (:mod:`fixedq.layers.temporal.state`): ``reset_buffers()`` clears it.

Inputs are frames ``(N, ..., C)`` (any number of spatial axes).

Example:
    >>> import numpy as np
    >>> layer = DepthwiseBufferTempConv(2)
    >>> layer.build((None, 1)); layer.set_weights([np.array([[1.0], [10.0]], "float32")])
    >>> [float(layer(np.full((1, 1), v, "float32"))[0, 0]) for v in (1, 2, 3)]
    [10.0, 21.0, 32.0]
"""

from __future__ import annotations

import keras
from keras import ops

from fixedq.layers.temporal.state import StreamingLayerMixin


def check_kernel_size(kernel_size, layer: str) -> int:
    """``kernel_size`` as a positive int, else a ``ValueError`` naming the layer class."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
        raise ValueError(f"{layer}: kernel_size must be a positive integer (frames), got "
                         f"{kernel_size!r}")
    return kernel_size


class FifoMixin(StreamingLayerMixin):
    """A FIFO of the last ``kernel_size - 1`` input frames (float and quantized buffer convs).

    The quantized layers store their on-grid inputs (``v * 2^-f``, exactly the integers the
    engine keeps in its integer FIFO).
    """

    def build_fifo(self, input_shape) -> None:
        if len(input_shape) < 2 or any(d is None for d in input_shape[1:]):
            raise ValueError(f"{type(self).__name__} {self.name!r} needs frames (N, ..., C) "
                             f"with known sizes, got {tuple(input_shape)}")
        self.supports_jit = False  # the batch size of the state is free
        self.fifo = self.add_frame_state("fifo", (self.kernel_size - 1, *input_shape[1:]))

    def window(self, x):
        """The last ``kernel_size`` frames ``(N, k, ..., C)``, oldest first; updates the FIFO."""
        old = self.fifo.read(ops.shape(x)[0])
        full = ops.concatenate([ops.cast(old, x.dtype), x[:, None]], axis=1)
        self.fifo.write(full[:, 1:])
        return full


class _FifoLayer(FifoMixin, keras.layers.Layer):
    """Base of the two float buffer convolutions."""

    def __init__(self, kernel_size, use_bias=False, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = check_kernel_size(kernel_size, type(self).__name__)
        self.use_bias = bool(use_bias)

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size,
                "use_bias": self.use_bias}


@keras.saving.register_keras_serializable(package="fixedq")
class BufferTempConv(_FifoLayer):
    """Temporal convolution over the last ``kernel_size`` frames, all channels mixed.

    Args:
        filters: output channels.
        kernel_size: frames in the window (``1``: a per-frame 1x1 convolution).
        use_bias: add a bias per filter.
    """

    def __init__(self, filters, kernel_size, use_bias=False, **kwargs):
        super().__init__(kernel_size, use_bias, **kwargs)
        if isinstance(filters, bool) or not isinstance(filters, int) or filters < 1:
            raise ValueError(f"BufferTempConv: filters must be a positive integer, got "
                             f"{filters!r}")
        self.filters = filters

    def build(self, input_shape):
        self.build_fifo(input_shape)
        c = int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=(self.kernel_size, c, self.filters),
                                      initializer="glorot_uniform")
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    def call(self, inputs):
        full = self.window(inputs)  # (N, k, ..., C)
        k, c = self.kernel_size, int(inputs.shape[-1])
        stacked = ops.reshape(ops.moveaxis(full, 1, -2), (*ops.shape(inputs)[:-1], k * c))
        y = ops.matmul(stacked, ops.reshape(self.kernel, (k * c, self.filters)))
        return y + self.bias if self.use_bias else y

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@keras.saving.register_keras_serializable(package="fixedq")
class DepthwiseBufferTempConv(_FifoLayer):
    """Per-channel temporal convolution over the last ``kernel_size`` frames.

    Args:
        kernel_size: frames in the window.
        use_bias: add a bias per channel.
    """

    def build(self, input_shape):
        self.build_fifo(input_shape)
        c = int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=(self.kernel_size, c),
                                      initializer="glorot_uniform")
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(c,), initializer="zeros")

    def call(self, inputs):
        full = self.window(inputs)
        kernel = ops.reshape(self.kernel, (1, self.kernel_size, *[1] * (len(inputs.shape) - 2),
                                           -1))
        y = ops.sum(full * kernel, axis=1)
        return y + self.bias if self.use_bias else y

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)
