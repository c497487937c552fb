"""What the transformer ops share: their quantized layers compute their own engine op
(``engine_op()``) and copy their float variables by name (``set_float_weights``); the
requantizing ones have a calibrated signed output spec.

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("attention").engine_kinds
    ('attention', 'attention_softmax')
"""

from __future__ import annotations

from fixedq.engine.ops import Op
from fixedq.ops.common import out_attrs
from fixedq.ops.registry import MAXPOOL_RELU, RELU, OpSpec, register


def to_engine(layer, node, ins, specs, channels) -> Op:
    """The engine op the quantized transformer layer describes itself."""
    kind, extra, arrays = layer.engine_op()
    return Op(node.name, kind, ins, {**out_attrs(layer, channels), **extra}, arrays)


def set_weights(layer, node) -> None:
    """Copy the float layer's variables by name."""
    layer.set_float_weights(node)


def requantizing_builder(make):
    """A ``build`` for a requantizing transformer op: ``make(node, in_specs, ctx, bits,
    common)`` creates the layer; ``common`` holds ``output_spec``, ``name``, ``qconfig``."""

    def build(node, in_specs, ctx):
        spec, bits = ctx.output_spec(node, signed=True)
        common = dict(output_spec=spec, name=node.name,
                      qconfig=ctx.entry(node.name, activation_bits=bits))
        return make(node, in_specs, ctx, bits, common), spec, [None] * len(in_specs)

    return build


def transformer_op(name: str, kind: str, float_layer: type, quantized_layer: type, build,
                   requantizes: bool, description: str, accepts=None,
                   extra_kinds: tuple[str, ...] = (), example=None) -> OpSpec:
    """Register a transformer op (engine kind = ``kind``, plus ``extra_kinds`` it may give)."""
    return register(OpSpec(
        name=name, kind=kind, float_layers=(float_layer,), quantized_layers=(quantized_layer,),
        engine_kinds=(kind, *extra_kinds), accepts=accepts, requantizes=requantizes,
        fuses=(RELU, MAXPOOL_RELU) if requantizes else (), build=build,
        set_weights=set_weights, to_engine=to_engine, description=description,
        example=example))
