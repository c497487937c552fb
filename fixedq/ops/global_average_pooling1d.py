"""GlobalAveragePooling1D (keepdims=False) -> QuantizedGlobalAveragePooling1D -> engine ``gap``
(the sum runs over the steps axis; 1/steps is folded into the requantization). It shares the
``gap`` kind with GlobalAveragePooling2D: calibrated alike, pinned alike on dynamic sizes.

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("global_average_pooling1d").kind
    'gap'
"""

from __future__ import annotations

import keras

from fixedq.layers.pooling import QuantizedGlobalAveragePooling1D
from fixedq.ops.global_average_pooling2d import SPEC as GAP2D
from fixedq.ops.global_average_pooling2d import builder
from fixedq.ops.registry import MAXPOOL_RELU, RELU, OpSpec, register


def _example(rng):
    """Conv1D features averaged over 12 steps, then a Dense head."""
    L = keras.layers
    x = keras.Input((12, 4))
    y = L.GlobalAveragePooling1D()(L.Conv1D(6, 3)(x))
    return keras.Model(x, L.Dense(3)(y)), rng.normal(size=(32, 12, 4)).astype("float32")


SPEC = register(OpSpec(
    name="global_average_pooling1d", kind="gap", output_sign="input",
    float_layers=(keras.layers.GlobalAveragePooling1D,),
    quantized_layers=(QuantizedGlobalAveragePooling1D,), engine_kinds=("gap",),
    accepts=GAP2D.accepts, requantizes=True, fuses=(RELU, MAXPOOL_RELU),
    build=builder(QuantizedGlobalAveragePooling1D),
    to_engine=GAP2D.to_engine, channel_homogeneous=True, size_dependent=True,
    description="global average pooling over steps: exact sum, 1/steps folded into the "
                "requantization", example=_example))
