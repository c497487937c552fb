"""fixedq Attention (softmax='shiftmax') -> QuantizedAttention -> engine ``attention`` op.

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("attention").requantizes
    True
"""

from __future__ import annotations

from fixedq.layers.transformers.float_layers import Attention
from fixedq.layers.transformers.quantized import QuantizedAttention
from fixedq.ops.transformer import requantizing_builder, transformer_op


def _make(node, in_specs, ctx, bits, common):
    cfg, qp = node.config, ctx.qparams
    if cfg.get("softmax", "shiftmax") != "shiftmax":
        raise ValueError("Attention(softmax='softmax') has no integer path; train with "
                         "softmax='shiftmax' (fixedq.models.vit_adapt converts models)")
    if len(in_specs) != 3:
        raise ValueError(f"Attention needs 3 inputs, got {len(in_specs)}")
    return QuantizedAttention(cfg["num_heads"], prob_bits=max(bits, 8),
                              buffer_bits=qp.buffer_bits, scale_bits=qp.scale_bits,
                              input_specs=in_specs, **common)


SPEC = transformer_op("attention", "attention", Attention, QuantizedAttention,
                      requantizing_builder(_make), True,
                      "multi-head attention with integer shiftmax")
