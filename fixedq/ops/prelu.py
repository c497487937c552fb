"""PReLU -> QuantizedPReLU -> engine ``table`` op (eq. 38): with one alpha per channel
(``shared_axes`` covering every axis but the last) one table per channel; with alpha per
element (Keras' default ``shared_axes=None``: alpha of shape ``(H, W, C)``, or any other
``shared_axes``) one table per distinct alpha and channel, and a ``base`` array of alpha's
shape. More than :data:`fixedq.layers.table.MAX_TABLE_ENTRIES` entries: the layer falls back
with that reason (its name in the warning).

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("prelu").weighted, by_name("prelu").engine_kinds
    (False, ('table',))
"""

from __future__ import annotations

import keras
import numpy as np

from fixedq.layers.table import MAX_TABLE_ENTRIES, QuantizedPReLU, table_input_size
from fixedq.ops.registry import OpSpec, register
from fixedq.ops.table import table_builder, table_to_engine


def _alpha_shape(node) -> tuple[int, ...] | None:
    """``None`` for one alpha per channel, else alpha's shape (1 on shared axes)."""
    shape = tuple(int(d) for d in np.shape(node.weight("alpha")))
    return None if all(d == 1 for d in shape[:-1]) else shape


def _accepts(node) -> str | None:
    alpha = node.weight("alpha")
    in_shape = node.output_shapes[0] if node.output_shapes else None
    if alpha is None or in_shape is None or np.ndim(alpha) != len(in_shape) - 1:
        shape = None if alpha is None else list(np.shape(alpha))
        return f"alpha of shape {shape} for an output of shape {in_shape}"
    if _alpha_shape(node) is not None and None in tuple(in_shape)[1:]:
        return (f"alpha per element (shape {list(np.shape(alpha))}) on a dynamic input shape "
                f"{tuple(in_shape)}")
    return None


def _make(node, common):
    shape = _alpha_shape(node)
    if shape is not None:  # one table per distinct (alpha, channel): bound the entries
        alpha = np.asarray(node.weight("alpha"), np.float32)
        chan = np.broadcast_to(np.arange(shape[-1]), shape)
        distinct = len(np.unique(np.stack([alpha.ravel(), chan.ravel()]), axis=1)[0])
        size = table_input_size(common["input_specs"][0], shape[-1])
        if distinct * size > MAX_TABLE_ENTRIES:
            raise ValueError(
                f"PReLU {node.name!r}: {distinct} distinct (alpha, channel) pairs x {size} "
                f"table entries exceed {MAX_TABLE_ENTRIES}; share alpha over the spatial axes "
                "(shared_axes=[1, 2]) or use fewer activation bits before it")
    return QuantizedPReLU(alpha_shape=shape, **common)


def _set_weights(layer, node) -> None:
    alpha = np.asarray(node.weight("alpha"), np.float32)
    layer.set_weights([alpha.reshape(layer.alpha.shape)])


def _example(rng):
    L = keras.layers
    x = keras.Input((5, 5, 2))
    y = L.PReLU(shared_axes=[1, 2])(L.Conv2D(4, 3)(x))
    y = L.PReLU()(L.Conv2D(3, 1)(y))  # alpha per element: (3, 3, 3)
    y = L.PReLU(shared_axes=[1])(L.Conv2D(3, 1)(y))  # alpha (1, 3, 3)
    y = L.Flatten()(y)
    model = keras.Model(x, L.PReLU()(L.Dense(3)(y)))
    for layer in model.layers:
        if isinstance(layer, L.PReLU):
            c = layer.alpha.shape  # 0.5 / 0.25 give exact ties
            alpha = rng.choice([-0.5, 0.25, 0.5, 1.3], size=c) if len(c) > 1 else \
                rng.uniform(-0.5, 1.5, c)
            layer.set_weights([alpha.astype("float32")])
    return model, rng.normal(size=(32, 5, 5, 2)).astype("float32")


SPEC = register(OpSpec(
    name="prelu", kind="table", float_layers=(keras.layers.PReLU,),
    quantized_layers=(QuantizedPReLU,), engine_kinds=("table",), accepts=_accepts,
    requantizes=True, build=table_builder(_make, lambda node: True),
    set_weights=_set_weights, to_engine=table_to_engine,
    description="PReLU as integer tables: one per channel, or per distinct alpha and "
                "channel (alpha per element); alpha trains with QAT", example=_example))
