"""Multiply (two tensors, broadcasting) -> QuantizedMultiply -> engine ``mul`` op: the exact
integer product requantized by a rounding shift (docs/numerics.md eq. 46). Covers the
squeeze-and-excitation gate ``x * sigmoid(se(x))`` (``(B, H, W, C) * (B, 1, 1, C)``) and
MobileNetV3's hard-swish ``x * hard_sigmoid(x)``. ``x * y`` between tensors in a Keras 3
functional model and tf-keras ``tf.math.multiply`` nodes are read as this layer.

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("multiply").engine_kinds
    ('mul',)
"""

from __future__ import annotations

import keras

from fixedq.engine.ops import Op
from fixedq.layers.base import output_bounds
from fixedq.layers.multiply import QuantizedMultiply
from fixedq.ops.common import i64, out_attrs
from fixedq.ops.registry import MAXPOOL_RELU, RELU, OpSpec, register


def _build(node, in_specs, ctx):
    if len(in_specs) != 2:
        raise ValueError(f"Multiply of {len(in_specs)} inputs (only two are supported)")
    shapes = [ctx.graph.input_shape(node, i) for i in range(2)]
    if len(shapes[0]) != len(shapes[1]):
        raise ValueError(f"Multiply of inputs of different ranks {shapes} (broadcast over "
                         "inputs of the same rank only)")
    a, b = in_specs
    spec, bits = ctx.output_spec(node, signed=a.signed or b.signed)
    layer = QuantizedMultiply(input_specs=[a, b], output_spec=spec, name=node.name,
                              qconfig=ctx.entry(node.name, activation_bits=bits))
    return layer, spec, [None, None]


def _to_engine(layer, node, ins, specs, channels) -> Op:
    lo, hi = output_bounds(layer.output_spec, channels)
    return Op(node.name, "mul", ins, out_attrs(layer, channels),
              {"shift": i64(layer.integer_params()["shift"]), "out_lo": lo, "out_hi": hi})


def _example(rng):
    """Squeeze-and-excitation: features * a per-channel gate from their global average."""
    L = keras.layers
    x = keras.Input((6, 6, 3))
    f = L.Conv2D(4, 3, padding="same")(x)
    gate = L.Reshape((1, 1, 4))(L.Dense(4)(L.GlobalAveragePooling2D()(f)))
    y = L.Multiply()([f, gate])
    z = L.Multiply()([y, L.Conv2D(4, 1)(y)])  # two full tensors, signed * signed
    return keras.Model(x, L.Conv2D(2, 1)(z)), rng.normal(size=(32, 6, 6, 3)).astype("float32")


SPEC = register(OpSpec(
    name="multiply", kind="mul", float_layers=(keras.layers.Multiply,),
    quantized_layers=(QuantizedMultiply,), engine_kinds=("mul",), requantizes=True,
    fuses=(RELU, MAXPOOL_RELU), build=_build, to_engine=_to_engine,
    description="elementwise product of two tensors (broadcasting), rounding shift",
    example=_example))
