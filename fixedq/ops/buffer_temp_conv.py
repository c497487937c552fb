"""BufferTempConv -> QuantizedBufferTempConv -> engine ``buffer_conv`` op (a streaming op:
an integer FIFO of the last ``kernel_size - 1`` input frames, docs/numerics.md eq. 40).

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("buffer_temp_conv").engine_kinds
    ('buffer_conv',)
"""

from __future__ import annotations

import keras

from fixedq.layers.temporal import BufferTempConv
from fixedq.layers.temporal.quantized import QuantizedBufferTempConv
from fixedq.ops.streaming import register_buffer_conv


def _example(rng):
    """A 1-frame FIFO (stateless, so the shared harness' frame-by-frame parity holds) with a
    fused ReLU; tests/temporal checks deeper FIFOs frame by frame."""
    x = keras.Input((4, 4, 3))
    y = BufferTempConv(5, 1, use_bias=True)(x)
    y = keras.layers.ReLU()(y)
    return keras.Model(x, y), rng.normal(size=(32, 4, 4, 3)).astype("float32")


SPEC = register_buffer_conv(
    "buffer_temp_conv", BufferTempConv, QuantizedBufferTempConv,
    lambda node, common: QuantizedBufferTempConv(node.config["filters"],
                                                 node.config["kernel_size"], **common),
    "temporal convolution over an integer FIFO of the last k frames (all channels) + bias + "
    "requantize (+ fused ReLU); streaming", _example)
