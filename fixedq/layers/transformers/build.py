"""How ``quantize`` maps the float transformer layers to their quantized versions.

``KINDS`` maps each float class to a kind name (``fixedq.models.builders.kind_of``);
``REQUANTIZING`` lists the kinds whose outputs are calibrated; :func:`build_quantized` makes the
quantized layer and its output spec.

Example:
    >>> KINDS[Attention]
    'attention'
"""

from __future__ import annotations

from fixedq.layers.spec import QSpec
from fixedq.layers.transformers import quantized as q
from fixedq.layers.transformers.float_layers import (
    AddPositionEmbs,
    Attention,
    ClassToken,
    ExtractToken,
    LayerMadNormalization,
    Shiftmax,
)

KINDS = {Attention: "attention", Shiftmax: "shiftmax", LayerMadNormalization: "madnorm",
         ClassToken: "class_token", AddPositionEmbs: "add_pos", ExtractToken: "extract_token"}
REQUANTIZING = {"attention", "madnorm", "class_token", "add_pos"}


def build_quantized(node, kind: str, in_specs: list[QSpec], ctx):
    """``(layer, output_spec)`` of a transformer node; ``ValueError`` if it cannot be quantized."""
    from fixedq.models import builders as b

    name, cfg = node.name, node.config
    spec0 = in_specs[0]
    qp = ctx.qparams
    if kind == "shiftmax":
        if cfg.get("axis", -1) != -1:
            raise ValueError(f"Shiftmax over axis {cfg.get('axis')} is not supported (only -1)")
        bits = ctx.override(name, "activation_bits", qp.activation_bits)
        spec = QSpec(bits, False, (bits,))
        return q.QuantizedShiftmax(input_specs=[spec0], output_spec=spec, name=name), spec
    if kind == "extract_token":
        return q.QuantizedExtractToken(cfg.get("token", 0), input_specs=[spec0],
                                       output_spec=spec0, name=name), spec0
    spec, bits = b._output_spec(node, ctx, signed=True)
    common = dict(output_spec=spec, name=name,
                  qconfig=b._entry(name, ctx, activation_bits=bits))
    if kind == "attention":
        if cfg.get("softmax", "shiftmax") != "shiftmax":
            raise ValueError("Attention(softmax='softmax') has no integer path; train with "
                             "softmax='shiftmax' (fixedq.models.vit_adapt converts models)")
        if len(in_specs) != 3:
            raise ValueError(f"Attention needs 3 inputs, got {len(in_specs)}")
        layer = q.QuantizedAttention(cfg["num_heads"], prob_bits=max(bits, 8),
                                     buffer_bits=qp.buffer_bits, scale_bits=qp.scale_bits,
                                     input_specs=in_specs, **common)
    elif kind == "madnorm":
        layer = q.QuantizedLayerMadNormalization(cfg.get("epsilon", 1e-3),
                                                 scale_bits=qp.scale_bits,
                                                 input_specs=[spec0], **common)
    elif kind == "class_token":
        layer = q.QuantizedClassToken(input_specs=[spec0], **common)
    elif kind == "add_pos":
        layer = q.QuantizedAddPositionEmbs(input_specs=[spec0], **common)
    else:
        raise ValueError(f"unknown transformer kind {kind!r}")
    return layer, spec
