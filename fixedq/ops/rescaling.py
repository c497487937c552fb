"""Rescaling -> QuantizedRescaling -> engine ``affine`` op. (A Rescaling right before a neural
layer is usually folded into it first, see :mod:`fixedq.transforms.fold_rescaling`.)

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("rescaling").engine_kinds
    ('affine',)
"""

from __future__ import annotations

import keras
import numpy as np

from fixedq.layers.affine import QuantizedRescaling
from fixedq.ops.batch_normalization import affine_op
from fixedq.ops.registry import MAXPOOL_RELU, RELU, OpSpec, register


def _build(node, in_specs, ctx):
    signed = bool(np.any(ctx.stats[node.name].minimum < 0))
    spec, bits = ctx.output_spec(node, signed)
    layer = QuantizedRescaling(
        scale=node.config["scale"], offset=node.config["offset"],
        scale_bits=ctx.qparams.scale_bits, input_specs=[in_specs[0]], output_spec=spec,
        name=node.name, qconfig=ctx.entry(node.name, activation_bits=bits))
    return layer, spec, [None]


SPEC = register(OpSpec(
    name="rescaling", kind="affine", float_layers=(keras.layers.Rescaling,),
    quantized_layers=(QuantizedRescaling,), engine_kinds=("affine",), requantizes=True,
    fuses=(RELU, MAXPOOL_RELU), build=_build, to_engine=affine_op,
    description="x * scale + offset as a per-channel integer affine"))
