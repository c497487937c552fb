"""ZeroPadding2D / ZeroPadding1D -> QuantizedZeroPadding -> engine ``pad`` op (zeros added
around the integers; the spec is unchanged). Symmetric or asymmetric amounts. A padding that
is exactly a following valid conv's ``"same"`` padding is folded into that conv first by
sanitize (:mod:`fixedq.transforms.fold_padding`); every other padding (ResNet50's
``ZeroPadding2D(3)`` before its 7x7 stride-2 conv, DenseNet121's, the asymmetric ones of
MobileNet/EfficientNet at sizes where ``"same"`` differs) is this op.

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("zero_padding").engine_kinds
    ('pad',)
"""

from __future__ import annotations

import keras
import numpy as np

from fixedq.engine.ops import Op
from fixedq.layers.padding import QuantizedZeroPadding
from fixedq.ops.common import out_attrs
from fixedq.ops.registry import OpSpec, register

L = keras.layers


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)


def pads_of(node) -> tuple[tuple[int, int], ...]:
    """``((before, after), ...)`` per spatial axis of a ZeroPadding2D/1D node.

    Example:
        >>> from types import SimpleNamespace
        >>> pads_of(SimpleNamespace(cls=keras.layers.ZeroPadding2D,
        ...                         config={"padding": ((0, 1), (2, 3))}))
        ((0, 1), (2, 3))
    """
    pad = node.config["padding"]
    if node.cls is L.ZeroPadding1D:
        return (_pair(pad),)
    if isinstance(pad, int):
        return ((pad, pad), (pad, pad))
    return (_pair(pad[0]), _pair(pad[1]))


def _build(node, in_specs, ctx):
    spec = in_specs[0]
    if spec.lo is not None and (np.any(spec.lo_array() > 0) or np.any(spec.hi_array() < 0)):
        raise ValueError(f"{node.cls.__name__} of an asymmetric tensor whose window excludes 0 "
                         "(the padded zeros would not be representable)")
    layer = QuantizedZeroPadding(pads_of(node), input_specs=[spec], output_spec=spec,
                                 name=node.name)
    return layer, spec, [None]


def _to_engine(layer, node, ins, specs, channels) -> Op:
    return Op(node.name, "pad", ins, {**out_attrs(layer, channels),
                                      "pads": [list(p) for p in layer.pads]})


def _example(rng):
    """ResNet's stem: a 3-pixel border before a 7x7 stride-2 valid conv (not foldable into
    'same' at 12x12), then an asymmetric ZeroPadding2D and a ZeroPadding1D."""
    x = keras.Input((12, 12, 3))
    y = L.Conv2D(4, 7, strides=2)(L.ZeroPadding2D(3)(x))
    y = L.ReLU()(y)
    y = L.Conv2D(4, 3, strides=2)(L.ZeroPadding2D(((0, 1), (2, 0)))(y))
    y = L.Reshape((-1, 4))(y)
    y = L.Conv1D(3, 3)(L.ZeroPadding1D((1, 2))(y))
    return keras.Model(x, y), rng.normal(size=(32, 12, 12, 3)).astype("float32")


SPEC = register(OpSpec(
    name="zero_padding", kind="pad", float_layers=(L.ZeroPadding2D, L.ZeroPadding1D),
    quantized_layers=(QuantizedZeroPadding,), engine_kinds=("pad",), build=_build,
    to_engine=_to_engine,
    description="zero padding of the spatial axes (symmetric or not): integers move",
    example=_example))
