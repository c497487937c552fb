"""LeakyReLU(negative_slope) -> QuantizedLeakyReLU -> engine ``table`` op (eq. 38; the slope
rounded to float32, as the float model multiplies by it).

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("leaky_relu").engine_kinds
    ('table',)
"""

from __future__ import annotations

import keras

from fixedq.layers.table import QuantizedLeakyReLU
from fixedq.ops.registry import OpSpec, register
from fixedq.ops.table import table_builder, table_to_engine


def _slope(node) -> float:
    cfg = node.config
    return float(cfg.get("negative_slope", cfg.get("alpha", 0.3)))


def _make(node, common):
    return QuantizedLeakyReLU(params={"negative_slope": _slope(node)}, **common)


def _example(rng):
    L = keras.layers
    x = keras.Input((5, 5, 2))
    y = L.LeakyReLU(negative_slope=0.5)(L.Conv2D(4, 3)(x))  # ties: 0.5 * odd integers
    y = L.LeakyReLU(negative_slope=0.1)(L.Conv2D(3, 1)(y))
    return keras.Model(x, y), rng.normal(size=(32, 5, 5, 2)).astype("float32")


SPEC = register(OpSpec(
    name="leaky_relu", kind="table", float_layers=(keras.layers.LeakyReLU,),
    quantized_layers=(QuantizedLeakyReLU,), engine_kinds=("table",), requantizes=True,
    build=table_builder(_make, lambda node: _slope(node) > 0),
    to_engine=table_to_engine,
    description="LeakyReLU as an integer table (output requantized to the calibrated grid)",
    example=_example))
