"""Dense -> QuantizedDense -> engine ``neural`` op (type ``dense``).

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("dense").weighted
    True
"""

from __future__ import annotations

import keras

from fixedq.layers.neural import QuantizedDense
from fixedq.ops.neural import neural_op

SPEC = neural_op(
    "dense", keras.layers.Dense, QuantizedDense, "dense",
    lambda node, common: QuantizedDense(node.config["units"], **common),
    "fully connected + bias + requantize (+ fused ReLU)", in_channel_axis=0,
    weight_rows="dense")
