"""fixedq's DepthwiseConv2DTranspose -> QuantizedDepthwiseConv2DTranspose (Keras only: it has
no engine op yet, so ``convert`` rejects it).

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("depthwise_conv2d_transpose").engine_kinds
    ()
"""

from __future__ import annotations

from fixedq.layers.depthwise_conv2d_transpose import DepthwiseConv2DTranspose
from fixedq.layers.neural import QuantizedDepthwiseConv2DTranspose
from fixedq.ops.neural import neural_op

SPEC = neural_op(
    "depthwise_conv2d_transpose", DepthwiseConv2DTranspose, QuantizedDepthwiseConv2DTranspose,
    None,
    lambda node, common: QuantizedDepthwiseConv2DTranspose(
        node.config["kernel_size"], node.config["strides"], node.config["padding"], **common),
    "depthwise transposed 2-D convolution + bias + requantize (Keras only, no engine op)")
