"""Softmax over the last axis (a ``Softmax`` layer; ``Activation("softmax")`` and fused
``activation="softmax"`` become one in ``sanitize``) -> QuantizedSoftmax -> engine ``softmax``
op: exp table, exact sum, rounded integer division (eq. 39). Unsigned output with all
activation bits fractional (``output_bits`` at a model output).

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("softmax").engine_kinds
    ('softmax',)
"""

from __future__ import annotations

import keras

from fixedq.engine.ops import Op
from fixedq.layers.softmax import QuantizedSoftmax
from fixedq.layers.spec import QSpec
from fixedq.ops.common import i64, out_attrs
from fixedq.ops.registry import OpSpec, register


def _accepts(node) -> str | None:
    axis = node.config.get("axis", -1)
    rank = len(node.output_shapes[0]) if node.output_shapes else None
    axes = axis if isinstance(axis, list | tuple) else [axis]
    if len(axes) != 1 or (axes[0] != -1 and (rank is None or axes[0] != rank - 1)):
        return f"axis {axis!r} (only the last axis)"
    return None


def _build(node, in_specs, ctx):
    default = ctx.qparams.output_bits if node.name in ctx.outputs \
        else ctx.qparams.activation_bits
    bits = int(ctx.override(node.name, "activation_bits", default))
    spec = QSpec(bits, False, (bits,))
    layer = QuantizedSoftmax(input_specs=[in_specs[0]], output_spec=spec, name=node.name,
                             qconfig={"layer": node.name, "activation_bits": bits})
    return layer, spec, [None]


def _to_engine(layer, node, ins, specs, channels) -> Op:
    p = layer.integer_params()
    attrs = {**out_attrs(layer, channels), "shift": int(p["shift"]),
             "prob_frac": int(p["out_frac"]), "out_lo": int(p["out_lo"]),
             "out_hi": int(p["out_hi"])}
    return Op(node.name, "softmax", ins, attrs,
              {"exp_table": i64(p["exp_table"]), "in_align": i64(p["in_align"])})


def _example(rng):
    L = keras.layers
    x = keras.Input((9,))
    h = L.Dense(6, activation="softmax")(x)  # fused: split, then a Softmax layer
    y = L.Activation("softmax")(L.Dense(10)(L.Concatenate()([x, h])))
    return keras.Model(x, y), (rng.normal(size=(64, 9)) * 3).astype("float32")


SPEC = register(OpSpec(
    name="softmax", kind="softmax", float_layers=(keras.layers.Softmax,),
    quantized_layers=(QuantizedSoftmax,), engine_kinds=("softmax",), accepts=_accepts,
    build=_build, to_engine=_to_engine,
    description="softmax over the last axis: exp table, exact sum, rounded integer division",
    example=_example))

