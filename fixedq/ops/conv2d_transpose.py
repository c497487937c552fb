"""Conv2DTranspose -> QuantizedConv2DTranspose -> engine ``neural`` op (type ``transpose``).

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("conv2d_transpose").neural_type
    'transpose'
"""

from __future__ import annotations

import keras

from fixedq.layers.neural import QuantizedConv2DTranspose
from fixedq.ops.neural import conv_args, neural_op

SPEC = neural_op(
    "conv2d_transpose", keras.layers.Conv2DTranspose, QuantizedConv2DTranspose, "transpose",
    lambda node, common: QuantizedConv2DTranspose(node.config["filters"], **conv_args(node),
                                                  **common),
    "transposed 2-D convolution + bias + requantize", in_channel_axis=3)
