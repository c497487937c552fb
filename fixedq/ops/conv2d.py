"""Conv2D -> QuantizedConv2D -> engine ``neural`` op (type ``conv2d``).

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("conv2d").float_layers[0].__name__
    'Conv2D'
"""

from __future__ import annotations

import keras

from fixedq.layers.neural import QuantizedConv2D
from fixedq.ops.neural import conv_args, neural_op

SPEC = neural_op(
    "conv2d", keras.layers.Conv2D, QuantizedConv2D, "conv2d",
    lambda node, common: QuantizedConv2D(node.config["filters"], **conv_args(node), **common),
    "2-D convolution + bias + requantize (+ fused ReLU / max-pool)", in_channel_axis=2,
    weight_rows="conv2d")
