"""ReLU (no negative slope, no threshold; optional max_value) -> QuantizedReLU -> engine
``clip`` op. After a requantizing op it is usually fused into that op's output clip (see
``fuses`` in :mod:`fixedq.ops.registry`); it stays a layer of its own otherwise.

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("relu").engine_kinds
    ('clip',)
"""

from __future__ import annotations

import keras

from fixedq.engine.ops import Op
from fixedq.layers.activation import QuantizedReLU, relu_output_spec
from fixedq.ops.common import i64, out_attrs
from fixedq.ops.registry import OpSpec, register


def _accepts(node) -> str | None:
    if node.config.get("negative_slope") or node.config.get("threshold"):
        return "negative_slope/threshold"
    return None


def _build(node, in_specs, ctx):
    spec = relu_output_spec(in_specs[0], node.config.get("max_value"))
    return QuantizedReLU(input_specs=[in_specs[0]], output_spec=spec, name=node.name), spec, \
        [None]


def _to_engine(layer, node, ins, specs, channels) -> Op:
    p = layer.integer_params()
    return Op(node.name, "clip", ins, out_attrs(layer, channels),
              {"lo": i64(p["lo"]), "hi": i64(p["hi"])})


SPEC = register(OpSpec(
    name="relu", kind="relu", output_sign="unsigned", float_layers=(keras.layers.ReLU,),
    quantized_layers=(QuantizedReLU,), engine_kinds=("clip",), accepts=_accepts,
    build=_build, to_engine=_to_engine, channel_homogeneous=True,
    description="ReLU / ReLU(max_value) as an integer clip"))
