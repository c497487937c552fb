"""Keras 3 layers of fixedq: quantized layers and float building blocks users train with.

Importing this package registers every layer with Keras serialization (package ``"fixedq"``).
"""

from fixedq.layers.depthwise_conv2d_transpose import DepthwiseConv2DTranspose

__all__ = [
    "DepthwiseConv2DTranspose",
]
