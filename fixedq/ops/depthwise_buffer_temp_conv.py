"""DepthwiseBufferTempConv -> QuantizedDepthwiseBufferTempConv -> engine ``buffer_conv`` op
with ``depthwise: true`` (per-channel temporal FIFO convolution, docs/numerics.md eq. 40).

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("depthwise_buffer_temp_conv").kind
    'neural'
"""

from __future__ import annotations

import keras

from fixedq.layers.temporal import DepthwiseBufferTempConv
from fixedq.layers.temporal.quantized import QuantizedDepthwiseBufferTempConv
from fixedq.ops.streaming import register_buffer_conv


def _example(rng):
    """A 1-frame FIFO (stateless for the shared harness) after a conv."""
    x = keras.Input((4, 4, 3))
    y = keras.layers.Conv2D(4, 1)(x)
    y = DepthwiseBufferTempConv(1, use_bias=True)(y)
    return keras.Model(x, y), rng.normal(size=(32, 4, 4, 3)).astype("float32")


SPEC = register_buffer_conv(
    "depthwise_buffer_temp_conv", DepthwiseBufferTempConv, QuantizedDepthwiseBufferTempConv,
    lambda node, common: QuantizedDepthwiseBufferTempConv(node.config["kernel_size"], **common),
    "per-channel temporal convolution over an integer FIFO of the last k frames + bias + "
    "requantize (+ fused ReLU); streaming", _example)
