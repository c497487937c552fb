"""Normalization (statistics over the channel axis) -> QuantizedNormalization -> engine
``affine`` op: ``(x - mean) / max(sqrt(var), 1e-7)`` (or its ``invert``) is a per-channel
``x * scale + offset``, quantized like Rescaling (eq. 28).

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("normalization").kind, by_name("normalization").engine_kinds
    ('affine', ('affine',))
"""

from __future__ import annotations

import keras
import numpy as np

from fixedq.layers.affine import QuantizedNormalization
from fixedq.ops.batch_normalization import affine_op
from fixedq.ops.registry import MAXPOOL_RELU, RELU, OpSpec, register


def _accepts(node) -> str | None:
    axis = node.config.get("axis", -1)
    axes = list(axis) if isinstance(axis, list | tuple) else [axis]
    rank = len(node.output_shapes[0]) if node.output_shapes else None
    if not (axes == [-1] or (rank is not None and axes == [rank - 1])):
        return f"axis {axis!r} (only the channel axis)"
    if _statistics(node) is None:
        return "no mean/variance (not adapted)"
    return None


def _statistics(node):
    cfg = node.config
    mean, var = cfg.get("mean"), cfg.get("variance")
    if mean is None:
        mean, var = node.weight("mean"), node.weight("variance")
    if mean is None or var is None:
        return None
    return (np.asarray(mean, np.float64).reshape(-1), np.asarray(var, np.float64).reshape(-1))


def _build(node, in_specs, ctx):
    mean, var = _statistics(node)
    signed = bool(np.any(ctx.stats[node.name].minimum < 0))
    spec, bits = ctx.output_spec(node, signed)
    layer = QuantizedNormalization(
        mean=mean.tolist(), variance=var.tolist(), invert=bool(node.config.get("invert")),
        scale_bits=ctx.qparams.scale_bits, input_specs=[in_specs[0]], output_spec=spec,
        name=node.name, qconfig=ctx.entry(node.name, activation_bits=bits))
    return layer, spec, [None]


def _example(rng):
    """An adapted Normalization at the input, an inverting one with given statistics later."""
    L = keras.layers
    x = keras.Input((6, 6, 3))
    norm = L.Normalization(axis=3)
    norm.adapt(rng.normal(size=(64, 6, 6, 3)) * [1.0, 3.0, 0.2] + [0.5, -1.0, 2.0])
    y = L.Conv2D(4, 3)(L.ReLU()(L.Conv2D(3, 1)(norm(x))))
    y = L.Normalization(mean=[0.1, -0.2, 0.3, 0.0], variance=[2.0, 0.5, 1.0, 4.0],
                        invert=True)(y)
    x0 = rng.normal(size=(32, 6, 6, 3)) * [1.0, 3.0, 0.2] + [0.5, -1.0, 2.0]
    return keras.Model(x, y), x0.astype("float32")


SPEC = register(OpSpec(
    name="normalization", kind="affine", float_layers=(keras.layers.Normalization,),
    quantized_layers=(QuantizedNormalization,), engine_kinds=("affine",), accepts=_accepts,
    requantizes=True, fuses=(RELU, MAXPOOL_RELU), build=_build, to_engine=affine_op,
    description="Normalization (channel-axis statistics) as a per-channel integer affine",
    example=_example))
