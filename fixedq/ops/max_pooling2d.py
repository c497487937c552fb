"""MaxPooling2D -> QuantizedMaxPool2D -> engine ``maxpool`` op (the converter folds it into a
conv-type neural op that is its only producer).

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("max_pooling2d").kind
    'maxpool'
"""

from __future__ import annotations

import keras

from fixedq.engine.ops import Op
from fixedq.layers.pooling import QuantizedMaxPool2D
from fixedq.ops.common import out_attrs
from fixedq.ops.registry import OpSpec, register


def _build(node, in_specs, ctx):
    cfg = node.config
    layer = QuantizedMaxPool2D(cfg["pool_size"], cfg["strides"], cfg["padding"],
                               input_specs=[in_specs[0]], output_spec=in_specs[0],
                               name=node.name)
    return layer, in_specs[0], [None]


def _to_engine(layer, node, ins, specs, channels) -> Op:
    return Op(node.name, "maxpool", ins, {**out_attrs(layer, channels),
                                          "pool_size": list(layer.pool_size),
                                          "strides": list(layer.strides),
                                          "padding": layer.padding})


def _epilogue(op: Op) -> dict:
    """The ``pool`` attrs a conv-type neural op takes when it absorbs this op."""
    return {"pool": {k: op.attrs[k] for k in ("pool_size", "strides", "padding")}}


SPEC = register(OpSpec(
    name="max_pooling2d", kind="maxpool", output_sign="input",
    float_layers=(keras.layers.MaxPooling2D,),
    quantized_layers=(QuantizedMaxPool2D,), engine_kinds=("maxpool",), build=_build,
    to_engine=_to_engine, epilogue=_epilogue, channel_homogeneous=True,
    description="2-D max pooling on integers"))
