"""UpSampling2D (``interpolation="nearest"``) -> QuantizedUpSampling2D -> engine ``upsample``
op: integers repeated along height and width, the spec unchanged. Bilinear upsampling is not
supported (it falls back to float with a warning naming the setting).

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("upsampling2d").engine_kinds
    ('upsample',)
"""

from __future__ import annotations

import keras

from fixedq.engine.ops import Op
from fixedq.layers.upsampling import QuantizedUpSampling2D
from fixedq.ops.common import out_attrs
from fixedq.ops.registry import OpSpec, register

L = keras.layers


def _accepts(node) -> str | None:
    interpolation = node.config.get("interpolation", "nearest")
    return None if interpolation == "nearest" else f"interpolation {interpolation!r}"


def _build(node, in_specs, ctx):
    spec = in_specs[0]
    layer = QuantizedUpSampling2D(node.config.get("size", (2, 2)), input_specs=[spec],
                                  output_spec=spec, name=node.name)
    return layer, spec, [None]


def _to_engine(layer, node, ins, specs, channels) -> Op:
    return Op(node.name, "upsample", ins, {**out_attrs(layer, channels),
                                           "size": list(layer.size)})


def _example(rng):
    """A decoder-like step: conv, nearest upsampling by (2, 3), conv."""
    x = keras.Input((4, 4, 3))
    y = L.UpSampling2D((2, 3))(L.ReLU()(L.Conv2D(4, 3, padding="same")(x)))
    return keras.Model(x, L.Conv2D(2, 3)(y)), rng.normal(size=(32, 4, 4, 3)).astype("float32")


SPEC = register(OpSpec(
    name="upsampling2d", kind="upsample", float_layers=(L.UpSampling2D,),
    quantized_layers=(QuantizedUpSampling2D,), engine_kinds=("upsample",), accepts=_accepts,
    build=_build, to_engine=_to_engine,
    description="nearest-neighbour upsampling: integers repeated", example=_example))
