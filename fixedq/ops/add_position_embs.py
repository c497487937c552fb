"""fixedq AddPositionEmbs -> QuantizedAddPositionEmbs -> engine ``add_pos`` op.

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("add_position_embs").kind
    'add_pos'
"""

from __future__ import annotations

from fixedq.layers.transformers.float_layers import AddPositionEmbs
from fixedq.layers.transformers.quantized import QuantizedAddPositionEmbs
from fixedq.ops.transformer import requantizing_builder, transformer_op

SPEC = transformer_op(
    "add_position_embs", "add_pos", AddPositionEmbs, QuantizedAddPositionEmbs,
    requantizing_builder(lambda node, in_specs, ctx, bits, common: QuantizedAddPositionEmbs(
        input_specs=[in_specs[0]], **common)),
    True, "add learned position embeddings + rounding shift")
