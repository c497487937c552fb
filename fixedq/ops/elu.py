"""ELU(alpha) -> QuantizedELU -> engine ``table`` op (eq. 38).

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("elu").engine_kinds
    ('table',)
"""

from __future__ import annotations

import keras

from fixedq.layers.table import QuantizedELU
from fixedq.ops.registry import OpSpec, register
from fixedq.ops.table import table_builder, table_to_engine


def _make(node, common):
    return QuantizedELU(params={"alpha": float(node.config.get("alpha", 1.0))}, **common)


def _example(rng):
    L = keras.layers
    x = keras.Input((7,))
    y = L.ELU(alpha=0.7)(L.Dense(6)(x))
    return keras.Model(x, L.Dense(2)(y)), rng.normal(size=(32, 7)).astype("float32")


SPEC = register(OpSpec(
    name="elu", kind="table", float_layers=(keras.layers.ELU,),
    quantized_layers=(QuantizedELU,), engine_kinds=("table",), requantizes=True,
    build=table_builder(_make, lambda node: True), to_engine=table_to_engine,
    description="ELU as an integer table", example=_example))
