"""fixedq Attention -> QuantizedAttention -> engine ``attention`` op (softmax='shiftmax', eq. 30)
or ``attention_softmax`` op (softmax='softmax', eq. 30b: the integer softmax of eq. 39). Keras
``MultiHeadAttention`` reaches it through ``sanitize`` (``fixedq.transforms.split_attention``).

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("attention").requantizes
    True
"""

from __future__ import annotations

import keras

from fixedq.layers.transformers.float_layers import Attention
from fixedq.layers.transformers.quantized import QuantizedAttention
from fixedq.ops.transformer import requantizing_builder, transformer_op


def _make(node, in_specs, ctx, bits, common):
    cfg, qp = node.config, ctx.qparams
    if len(in_specs) != 3:
        raise ValueError(f"Attention needs 3 inputs, got {len(in_specs)}")
    return QuantizedAttention(cfg["num_heads"], prob_bits=max(bits, 8),
                              buffer_bits=qp.buffer_bits, scale_bits=qp.scale_bits,
                              softmax=cfg.get("softmax", "shiftmax"), input_specs=in_specs,
                              **common)


def _example(rng):
    """fixedq ``Attention`` (shiftmax) and a Keras ``MultiHeadAttention`` (split by sanitize into
    Dense q/k/v + ``Attention(softmax="softmax")`` + Dense) on the same tokens."""
    L = keras.layers
    x = keras.Input((6, 8))
    a = L.Dense(8, name="proj")(x)
    s = Attention(2, name="att_shiftmax")([a, a, a])
    m = L.MultiHeadAttention(2, 4, name="mha")(a, a)
    model = keras.Model(x, L.Dense(3, name="head")(L.Add()([s, m])))
    return model, (rng.normal(size=(32, 6, 8)) * 2).astype("float32")


SPEC = transformer_op("attention", "attention", Attention, QuantizedAttention,
                      requantizing_builder(_make), True,
                      "multi-head attention with integer shiftmax or softmax (Keras "
                      "MultiHeadAttention via sanitize)", extra_kinds=("attention_softmax",),
                      example=_example)
