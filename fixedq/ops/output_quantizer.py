"""OutputQuantizer (inserted by ``quantize`` to re-grid a tensor, e.g. a Concatenate input)
-> engine ``shift`` op. It matches no float layer.

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("output_quantizer").float_layers
    ()
"""

from __future__ import annotations

import numpy as np

from fixedq.engine.ops import Op
from fixedq.layers.base import output_bounds
from fixedq.layers.quantizers import OutputQuantizer
from fixedq.ops.common import i64, out_attrs
from fixedq.ops.registry import OpSpec, register


def _to_engine(layer, node, ins, specs, channels) -> Op:
    lo, hi = output_bounds(layer.output_spec, channels)
    shift = i64(np.broadcast_to(layer.integer_params()["shift"], (channels,)))
    return Op(node.name, "shift", ins, out_attrs(layer, channels),
              {"shift": shift, "out_lo": lo, "out_hi": hi})


SPEC = register(OpSpec(
    name="output_quantizer", kind="requantize", float_layers=(),
    quantized_layers=(OutputQuantizer,), engine_kinds=("shift",), to_engine=_to_engine,
    description="re-grid a tensor: rounding shift + clip"))
