"""PReLU with one alpha per channel (``shared_axes`` covering every axis but the last) ->
QuantizedPReLU -> engine ``table`` op with one table per channel (eq. 38).

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("prelu").weighted, by_name("prelu").engine_kinds
    (False, ('table',))
"""

from __future__ import annotations

import keras
import numpy as np

from fixedq.layers.table import QuantizedPReLU
from fixedq.ops.registry import OpSpec, register
from fixedq.ops.table import table_builder, table_to_engine


def _accepts(node) -> str | None:
    alpha = node.weight("alpha")
    if alpha is None or any(int(d) != 1 for d in np.shape(alpha)[:-1]):
        shape = None if alpha is None else list(np.shape(alpha))
        return (f"alpha of shape {shape} (one alpha per channel only: set shared_axes to every "
                "axis but the channels, e.g. shared_axes=[1, 2])")
    return None


def _make(node, common):
    return QuantizedPReLU(**common)


def _set_weights(layer, node) -> None:
    layer.set_weights([np.asarray(node.weight("alpha"), np.float32).reshape(-1)])


def _example(rng):
    L = keras.layers
    x = keras.Input((5, 5, 2))
    y = L.PReLU(shared_axes=[1, 2])(L.Conv2D(4, 3)(x))
    y = L.Flatten()(y)
    model = keras.Model(x, L.PReLU()(L.Dense(3)(y)))
    for layer in model.layers:
        if isinstance(layer, L.PReLU):
            c = layer.alpha.shape
            layer.set_weights([rng.uniform(-0.5, 1.5, c).astype("float32")])
    return model, rng.normal(size=(32, 5, 5, 2)).astype("float32")


SPEC = register(OpSpec(
    name="prelu", kind="table", float_layers=(keras.layers.PReLU,),
    quantized_layers=(QuantizedPReLU,), engine_kinds=("table",), accepts=_accepts,
    requantizes=True, build=table_builder(_make, lambda node: True),
    set_weights=_set_weights, to_engine=table_to_engine,
    description="PReLU (one alpha per channel) as one integer table per channel; alpha "
                "trains with QAT", example=_example))
