"""fixedq LayerMadNormalization -> QuantizedLayerMadNormalization -> engine ``madnorm`` op.

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("layer_mad_normalization").kind
    'madnorm'
"""

from __future__ import annotations

from fixedq.layers.transformers.float_layers import LayerMadNormalization
from fixedq.layers.transformers.quantized import QuantizedLayerMadNormalization
from fixedq.ops.transformer import requantizing_builder, transformer_op


def _make(node, in_specs, ctx, bits, common):
    return QuantizedLayerMadNormalization(node.config.get("epsilon", 1e-3),
                                          scale_bits=ctx.qparams.scale_bits,
                                          input_specs=[in_specs[0]], **common)


SPEC = transformer_op("layer_mad_normalization", "madnorm", LayerMadNormalization,
                      QuantizedLayerMadNormalization, requantizing_builder(_make), True,
                      "layer normalization by mean absolute deviation, integer division")
