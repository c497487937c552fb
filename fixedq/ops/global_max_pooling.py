"""GlobalMaxPooling2D / GlobalMaxPooling1D (``keepdims=False``; ``keepdims=True`` is split by
sanitize into the pooling and a Reshape) -> QuantizedGlobalMaxPooling -> engine ``gmp`` op: the
largest integer per channel over the spatial axes or the steps; the spec is unchanged.

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("global_max_pooling").engine_kinds
    ('gmp',)
"""

from __future__ import annotations

import keras

from fixedq.engine.ops import Op
from fixedq.layers.global_max_pooling import QuantizedGlobalMaxPooling
from fixedq.ops.common import out_attrs
from fixedq.ops.registry import OpSpec, register

L = keras.layers


def _accepts(node) -> str | None:
    return "keepdims=True" if node.config.get("keepdims") else None


def _build(node, in_specs, ctx):
    spec = in_specs[0]
    layer = QuantizedGlobalMaxPooling(input_specs=[spec], output_spec=spec, name=node.name)
    return layer, spec, [None]


def _to_engine(layer, node, ins, specs, channels) -> Op:
    return Op(node.name, "gmp", ins, out_attrs(layer, channels))


def _example(rng):
    """Conv features max-pooled globally (2-D), and Conv1D steps max-pooled (1-D)."""
    x = keras.Input((6, 6, 3))
    a = L.GlobalMaxPooling2D()(L.Conv2D(4, 3)(x))
    b = L.GlobalMaxPooling1D()(L.Conv1D(4, 2)(L.Reshape((36, 3))(x)))
    y = L.Concatenate()([a, b])
    return keras.Model(x, L.Dense(3)(y)), rng.normal(size=(32, 6, 6, 3)).astype("float32")


SPEC = register(OpSpec(
    name="global_max_pooling", kind="gmp", float_layers=(L.GlobalMaxPooling2D,
                                                          L.GlobalMaxPooling1D),
    quantized_layers=(QuantizedGlobalMaxPooling,), engine_kinds=("gmp",), accepts=_accepts,
    build=_build, to_engine=_to_engine,
    description="global max pooling (2-D or over steps): largest integer per channel",
    example=_example))
