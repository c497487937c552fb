"""fixedq ClassToken -> QuantizedClassToken -> engine ``class_token`` op.

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("class_token").kind
    'class_token'
"""

from __future__ import annotations

from fixedq.layers.transformers.float_layers import ClassToken
from fixedq.layers.transformers.quantized import QuantizedClassToken
from fixedq.ops.transformer import requantizing_builder, transformer_op

SPEC = transformer_op(
    "class_token", "class_token", ClassToken, QuantizedClassToken,
    requantizing_builder(lambda node, in_specs, ctx, bits, common: QuantizedClassToken(
        input_specs=[in_specs[0]], **common)),
    True, "prepend a learned class token (input re-gridded)")
