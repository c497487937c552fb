"""AveragePooling2D -> QuantizedAveragePooling2D -> engine ``avgpool`` op: the exact integer
window sum, requantized by the exact ``2^(f_out - f_in) / count`` multiplier (eq. 26 over a
window). ``valid``: ``count = kh * kw``; ``same``: the number of valid elements of each window,
as TensorFlow divides (padding excluded), so the multiplier is per position -- refused when the
spatial size is dynamic.

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("average_pooling2d").kind, by_name("average_pooling2d").engine_kinds
    ('avgpool', ('avgpool',))
"""

from __future__ import annotations

import keras

from fixedq.engine.ops import Op
from fixedq.layers.pooling import QuantizedAveragePooling2D
from fixedq.ops.common import i64, out_attrs
from fixedq.ops.registry import MAXPOOL_RELU, RELU, OpSpec, register


def _accepts(node) -> str | None:
    padding = node.config.get("padding", "valid")
    if padding not in ("valid", "same"):
        return f"padding {padding!r}"
    shape = node.output_shapes[0] if node.output_shapes else None
    if padding == "same" and (shape is None or None in tuple(shape)[1:3]):
        return "padding 'same' on a dynamic spatial size (its divisors depend on the size)"
    return None


def _build(node, in_specs, ctx):
    cfg = node.config
    spec, bits = ctx.output_spec(node, signed=in_specs[0].signed)
    layer = QuantizedAveragePooling2D(
        cfg["pool_size"], cfg["strides"], cfg["padding"], scale_bits=ctx.qparams.scale_bits,
        input_specs=[in_specs[0]], output_spec=spec, name=node.name,
        qconfig=ctx.entry(node.name, activation_bits=bits))
    return layer, spec, [None]


def _to_engine(layer, node, ins, specs, channels) -> Op:
    p = layer.integer_params()
    return Op(node.name, "avgpool", ins,
              {**out_attrs(layer, channels), "pool_size": list(layer.pool_size),
               "strides": list(layer.strides), "padding": layer.padding},
              {k: i64(p[k]) for k in ("multiplier", "shift", "out_lo", "out_hi")})


def _example(rng):
    """'valid' 2x2 pooling, then 3x3/2 'same' pooling on a 7x7 map (border divisors < 9)."""
    L = keras.layers
    x = keras.Input((10, 10, 3))
    y = L.Conv2D(5, 3, padding="same")(x)
    y = L.AveragePooling2D(2, name="avg_valid")(y)
    y = L.ReLU()(y)
    y = L.AveragePooling2D(3, 2, padding="same", name="avg_same")(L.Conv2D(4, 2)(y))
    return keras.Model(x, y), rng.normal(size=(32, 10, 10, 3)).astype("float32")


SPEC = register(OpSpec(
    name="average_pooling2d", kind="avgpool",
    float_layers=(keras.layers.AveragePooling2D,),
    quantized_layers=(QuantizedAveragePooling2D,), engine_kinds=("avgpool",),
    accepts=_accepts, requantizes=True, fuses=(RELU, MAXPOOL_RELU), build=_build,
    to_engine=_to_engine,
    description="average pooling: exact window sum, 1/count folded into the requantization "
                "('same': per-position count, static size)", example=_example))
