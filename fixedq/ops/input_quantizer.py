"""The model input: InputLayer -> InputQuantizer -> engine ``input`` op (eq. 4). ``quantize``
builds the InputQuantizer itself (:func:`fixedq.models.builders.input_quantizer`).

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("input").name
    'input'
"""

from __future__ import annotations

import keras

from fixedq.engine.ops import Op
from fixedq.layers.quantizers import InputQuantizer
from fixedq.ops.common import i64, out_attrs
from fixedq.ops.registry import OpSpec, register


def _to_engine(layer, node, ins, specs, channels) -> Op:
    p = layer.integer_params()
    return Op(node.name, "input", [], out_attrs(layer, channels),
              {"frac": i64(p["frac"]), "lo": i64(p["lo"]), "hi": i64(p["hi"])})


SPEC = register(OpSpec(
    name="input", kind="input", float_layers=(keras.layers.InputLayer,),
    quantized_layers=(InputQuantizer,), engine_kinds=("input",), to_engine=_to_engine,
    description="float input -> integers (round half up, saturate)"))
