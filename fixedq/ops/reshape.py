"""Flatten, Reshape, Permute -> QuantizedFlatten/Reshape/Permute -> engine ``reshape`` /
``permute`` ops (two registry entries of kind ``reshape``). The output spec follows the
channels (per-axis frac_bits are remapped).

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("reshape").engine_kinds, by_name("permute").engine_kinds
    (('reshape',), ('permute',))
"""

from __future__ import annotations

import keras

from fixedq.engine.ops import Op
from fixedq.layers.reshaping import (
    QuantizedFlatten,
    QuantizedPermute,
    QuantizedReshape,
    remap_spec,
)
from fixedq.ops.common import out_attrs
from fixedq.ops.registry import OpSpec, register

L = keras.layers


def _build(node, in_specs, ctx):
    spec = in_specs[0]
    in_shape = ctx.graph.input_shape(node)[1:]
    cfg, name = node.config, node.name
    if node.cls is L.Flatten:
        out = remap_spec(spec, in_shape, lambda a: a.reshape(-1))
        return QuantizedFlatten(input_specs=[spec], output_spec=out, name=name), out, [None]
    if node.cls is L.Reshape:
        target = tuple(cfg["target_shape"])
        out = remap_spec(spec, in_shape, lambda a: a.reshape(target))
        return QuantizedReshape(target, input_specs=[spec], output_spec=out, name=name), out, \
            [None]
    dims = tuple(cfg["dims"])
    out = remap_spec(spec, in_shape, lambda a: a.transpose([d - 1 for d in dims]))
    return QuantizedPermute(dims, input_specs=[spec], output_spec=out, name=name), out, [None]


def _to_engine(layer, node, ins, specs, channels) -> Op:
    attrs = out_attrs(layer, channels)
    if isinstance(layer, QuantizedPermute):
        return Op(node.name, "permute", ins, {**attrs, "dims": list(layer.dims)})
    shape = [int(d) for d in node.output_shapes[0][1:]]
    return Op(node.name, "reshape", ins, {**attrs, "target_shape": shape})


SPEC = register(OpSpec(
    name="reshape", kind="reshape", output_sign="input", float_layers=(L.Flatten, L.Reshape),
    quantized_layers=(QuantizedFlatten, QuantizedReshape), engine_kinds=("reshape",),
    build=_build, to_engine=_to_engine,
    description="Flatten / Reshape: integers move, frac_bits follow"))
PERMUTE = register(OpSpec(
    name="permute", kind="reshape", output_sign="input", float_layers=(L.Permute,),
    quantized_layers=(QuantizedPermute,), engine_kinds=("permute",), build=_build,
    to_engine=_to_engine, description="axis permutation: integers move, frac_bits follow"))
