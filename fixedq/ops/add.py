"""Add -> QuantizedAdd -> engine ``add`` op (inputs aligned to a common grid, exact sum).

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("add").requantizes
    True
"""

from __future__ import annotations

import keras
import numpy as np

from fixedq.engine.ops import Op
from fixedq.layers.base import output_bounds
from fixedq.layers.merge import QuantizedAdd
from fixedq.ops.common import i64, out_attrs
from fixedq.ops.registry import MAXPOOL_RELU, RELU, OpSpec, register


def _build(node, in_specs, ctx):
    if len(in_specs) < 2:
        raise ValueError("Add needs at least two inputs")
    spec, bits = ctx.output_spec(node, signed=any(s.signed for s in in_specs))
    layer = QuantizedAdd(input_specs=in_specs, output_spec=spec, name=node.name,
                         qconfig=ctx.entry(node.name, activation_bits=bits))
    return layer, spec, [None] * len(in_specs)


def _to_engine(layer, node, ins, specs, channels) -> Op:
    p = layer.integer_params()
    lo, hi = output_bounds(layer.output_spec, channels)
    arrays = {"shift": i64(np.broadcast_to(p["shift"], (channels,))), "out_lo": lo,
              "out_hi": hi}
    for i, s in enumerate(layer.input_specs):
        arrays[f"align{i}"] = i64(int(p["in_frac"]) - s.frac_array(channels))
    return Op(node.name, "add", ins, out_attrs(layer, channels), arrays)


SPEC = register(OpSpec(
    name="add", kind="add", output_sign="any_input", float_layers=(keras.layers.Add,),
    quantized_layers=(QuantizedAdd,),
    engine_kinds=("add",), requantizes=True, fuses=(RELU, MAXPOOL_RELU), build=_build,
    to_engine=_to_engine, channel_homogeneous=True,
    description="elementwise sum of aligned inputs + rounding shift"))
