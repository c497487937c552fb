"""fixedq ExtractToken -> QuantizedExtractToken -> engine ``extract_token`` op.

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("extract_token").requantizes
    False
"""

from __future__ import annotations

from fixedq.layers.transformers.float_layers import ExtractToken
from fixedq.layers.transformers.quantized import QuantizedExtractToken
from fixedq.ops.transformer import transformer_op


def _build(node, in_specs, ctx):
    spec = in_specs[0]
    layer = QuantizedExtractToken(node.config.get("token", 0), input_specs=[spec],
                                  output_spec=spec, name=node.name)
    return layer, spec, [None]


SPEC = transformer_op("extract_token", "extract_token", ExtractToken, QuantizedExtractToken,
                      _build, False, "select one token")
