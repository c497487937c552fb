"""BatchNormalization (channel axis) -> QuantizedBatchNormalization -> engine ``affine`` op.
Also the engine side of every per-channel integer affine (:func:`affine_op`).

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("batch_normalization").kind
    'affine'
"""

from __future__ import annotations

import keras
import numpy as np

from fixedq.engine.ops import Op
from fixedq.layers.affine import QuantizedBatchNormalization
from fixedq.ops.common import i64, out_attrs
from fixedq.ops.registry import MAXPOOL_RELU, RELU, OpSpec, register


def _accepts(node) -> str | None:
    axis = node.config.get("axis")
    if axis not in (-1, [-1], 3, [3], 1, [1]):
        return f"axis {axis!r} (only the channel axis)"
    return None


def _build(node, in_specs, ctx):
    spec, bits = ctx.output_spec(node, signed=True)
    layer = QuantizedBatchNormalization(
        epsilon=node.config["epsilon"], scale_bits=ctx.qparams.scale_bits,
        input_specs=[in_specs[0]], output_spec=spec, name=node.name,
        qconfig=ctx.entry(node.name, activation_bits=bits))
    return layer, spec, [None]


def _set_weights(layer, node) -> None:
    c = layer.channels

    def get(name, default):
        value = node.weight(name)
        return default if value is None else value

    layer.set_weights([get("gamma", np.ones(c)), get("beta", np.zeros(c)),
                       node.weight("moving_mean"), node.weight("moving_variance")])


def affine_op(layer, node, ins, specs, channels) -> Op:
    """The ``affine`` engine op of a quantized per-channel affine layer."""
    p = layer.integer_params()
    arrays = {k: i64(p[k]) for k in ("multiplier", "shift", "offset", "out_lo", "out_hi")}
    return Op(node.name, "affine", ins, {**out_attrs(layer, channels),
                                         "type": type(layer).__name__}, arrays)


SPEC = register(OpSpec(
    name="batch_normalization", kind="affine",
    float_layers=(keras.layers.BatchNormalization,),
    quantized_layers=(QuantizedBatchNormalization,), engine_kinds=("affine",),
    accepts=_accepts, requantizes=True, fuses=(RELU, MAXPOOL_RELU), build=_build,
    set_weights=_set_weights, to_engine=affine_op,
    description="inference batch normalization as a per-channel integer affine"))
