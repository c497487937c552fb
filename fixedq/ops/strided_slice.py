"""Strided slices (Keras 3 ``x[:, 1:]``, ``x[..., :k]``, ``x[:, ::2, 0]``; tf-keras
``SlicingOpLambda``; read by the graph reader as :class:`fixedq.layers.StridedSlice`) ->
QuantizedStridedSlice -> engine ``slice`` op: the integers are copied, per-axis frac_bits
follow the kept channels (an integer index on the channel axis makes the spec per-tensor).

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("strided_slice").kind, by_name("strided_slice").engine_kinds
    ('reshape', ('slice',))
"""

from __future__ import annotations

import keras

from fixedq.engine.ops import Op
from fixedq.layers.reshaping import remap_spec
from fixedq.layers.slicing import QuantizedStridedSlice, StridedSlice
from fixedq.ops.common import out_attrs
from fixedq.ops.registry import OpSpec, register
from fixedq.tensors.slicing import slice_key


def _build(node, in_specs, ctx):
    cfg = node.config
    args = {k: list(cfg.get(k) or []) for k in ("begin", "end", "strides", "shrink")}
    key = slice_key(**args)
    in_shape = ctx.graph.input_shape(node)[1:]
    spec = remap_spec(in_specs[0], in_shape, lambda a: a[key])
    layer = QuantizedStridedSlice(**args, input_specs=[in_specs[0]], output_spec=spec,
                                  name=node.name)
    return layer, spec, [None]


def _to_engine(layer, node, ins, specs, channels) -> Op:
    return Op(node.name, "slice", ins, {**out_attrs(layer, channels), "begin": layer.begin,
                                        "end": layer.end, "strides": layer.strides,
                                        "shrink": layer.shrink})


def _example(rng):
    """Operator-written slices of a conv output: x[:, 1:], x[..., :2], strides with a negative
    step, an integer index on the channel axis."""
    x = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3, padding="same")(x)
    a = keras.layers.Conv2D(3, 1)(h[:, 1:, ::2])
    b = keras.layers.Conv2D(3, 1)(h[..., :2][:, ::-2, 1:5])
    c = keras.layers.Reshape((6, 6, 1))(h[:, :, :, 3])
    y = keras.layers.Concatenate()([keras.layers.Flatten()(t) for t in (a, b, c)])
    return keras.Model(x, keras.layers.Dense(3)(y)), \
        rng.normal(size=(32, 6, 6, 2)).astype("float32")


SPEC = register(OpSpec(
    name="strided_slice", kind="reshape", output_sign="input", float_layers=(StridedSlice,),
    quantized_layers=(QuantizedStridedSlice,), engine_kinds=("slice",), build=_build,
    to_engine=_to_engine,
    description="strided slice / integer index of the non-batch axes (Keras 3 x[:, 1:], "
                "tf-keras SlicingOpLambda): integers copied, frac_bits follow",
    example=_example))
