"""fixedq Shiftmax (axis -1) -> QuantizedShiftmax -> engine ``shiftmax`` op (unsigned output
with all activation bits fractional).

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("shiftmax").requantizes
    False
"""

from __future__ import annotations

from fixedq.layers.spec import QSpec
from fixedq.layers.transformers.float_layers import Shiftmax
from fixedq.layers.transformers.quantized import QuantizedShiftmax
from fixedq.ops.transformer import transformer_op


def _build(node, in_specs, ctx):
    axis = node.config.get("axis", -1)
    if axis != -1:
        raise ValueError(f"Shiftmax over axis {axis} is not supported (only -1)")
    bits = ctx.override(node.name, "activation_bits", ctx.qparams.activation_bits)
    spec = QSpec(bits, False, (bits,))
    return QuantizedShiftmax(input_specs=[in_specs[0]], output_spec=spec, name=node.name), \
        spec, [None]


SPEC = transformer_op("shiftmax", "shiftmax", Shiftmax, QuantizedShiftmax, _build, False,
                      "power-of-two softmax on integers")
