"""GlobalAveragePooling2D (keepdims=False) -> QuantizedGlobalAveragePooling2D -> engine ``gap``.

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("global_average_pooling2d").kind
    'gap'
"""

from __future__ import annotations

import keras

from fixedq.engine.ops import Op
from fixedq.layers.pooling import QuantizedGlobalAveragePooling2D
from fixedq.ops.common import i64, out_attrs
from fixedq.ops.registry import MAXPOOL_RELU, RELU, OpSpec, register


def _accepts(node) -> str | None:
    return "keepdims=True" if node.config.get("keepdims") else None


def builder(layer_cls: type):
    """The ``build`` of a global average pooling op that makes a ``layer_cls`` layer (its
    output as signed as its input, calibrated frac_bits)."""

    def build(node, in_specs, ctx):
        spec0 = in_specs[0]
        spec, bits = ctx.output_spec(node, signed=spec0.signed)
        layer = layer_cls(scale_bits=ctx.qparams.scale_bits, input_specs=[spec0],
                          output_spec=spec, name=node.name,
                          qconfig=ctx.entry(node.name, activation_bits=bits))
        return layer, spec, [None]

    return build


def _to_engine(layer, node, ins, specs, channels) -> Op:
    p = layer.integer_params()
    arrays = {k: i64(p[k]) for k in ("multiplier", "shift", "out_lo", "out_hi")}
    return Op(node.name, "gap", ins, out_attrs(layer, channels), arrays)


SPEC = register(OpSpec(
    name="global_average_pooling2d", kind="gap", output_sign="input",
    float_layers=(keras.layers.GlobalAveragePooling2D,),
    quantized_layers=(QuantizedGlobalAveragePooling2D,), engine_kinds=("gap",),
    accepts=_accepts, requantizes=True, fuses=(RELU, MAXPOOL_RELU),
    build=builder(QuantizedGlobalAveragePooling2D),
    to_engine=_to_engine, channel_homogeneous=True, size_dependent=True,
    description="global average pooling: exact sum, 1/(H*W) folded into the requantization"))
