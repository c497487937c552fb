"""DepthwiseConv2D -> QuantizedDepthwiseConv2D -> engine ``neural`` op (type ``depthwise``).

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("depthwise_conv2d").neural_type
    'depthwise'
"""

from __future__ import annotations

import keras

from fixedq.layers.neural import QuantizedDepthwiseConv2D
from fixedq.ops.neural import conv_args, neural_op

SPEC = neural_op(
    "depthwise_conv2d", keras.layers.DepthwiseConv2D, QuantizedDepthwiseConv2D, "depthwise",
    lambda node, common: QuantizedDepthwiseConv2D(
        depth_multiplier=node.config["depth_multiplier"], **conv_args(node), **common),
    "depthwise 2-D convolution + bias + requantize (SeparableConv2D is split into it)",
    in_channel_axis=2, weight_rows="depthwise")
