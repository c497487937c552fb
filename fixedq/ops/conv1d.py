"""Conv1D -> QuantizedConv1D -> engine ``neural`` op (type ``conv2d`` with ``conv1d: true``:
a conv2d over a ``(1, steps)`` image, kernel ``(1, k, in, filters)``). ``causal`` padding is
refused (the layer stays float, the warning gives the reason).

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("conv1d").float_layers[0].__name__, by_name("conv1d").neural_type
    ('Conv1D', 'conv2d')
"""

from __future__ import annotations

import keras

from fixedq.layers.conv1d import QuantizedConv1D
from fixedq.ops.neural import conv_args, neural_op


def _example(rng):
    """Two Conv1D ('same' strided, then dilated 'valid') with a fused ReLU."""
    L = keras.layers
    x = keras.Input((16, 3))
    y = L.Conv1D(6, 3, strides=2, padding="same")(x)
    y = L.ReLU()(y)
    y = L.Conv1D(4, 2, dilation_rate=2)(y)
    return keras.Model(x, y), rng.normal(size=(32, 16, 3)).astype("float32")


SPEC = neural_op(
    "conv1d", keras.layers.Conv1D, QuantizedConv1D, "conv2d",
    lambda node, common: QuantizedConv1D(node.config["filters"], **conv_args(node), **common),
    "1-D convolution (a conv2d over a (1, W) image) + bias + requantize (+ fused ReLU); "
    "not 'causal'", example=_example, weight_rows="conv1d")
