"""Dropout and Identity (also ``Activation("linear")``/``Activation(None)``, which sanitize
rewrites to ``Identity``) -> QuantizedDropout -> engine ``identity`` op (a no-op at inference:
the integers pass through, no table, no requantization).

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("dropout").engine_kinds
    ('identity',)
"""

from __future__ import annotations

import keras

from fixedq.engine.ops import Op
from fixedq.layers.reshaping import QuantizedDropout
from fixedq.ops.common import out_attrs
from fixedq.ops.registry import OpSpec, register


def _build(node, in_specs, ctx):
    layer = QuantizedDropout(node.config.get("rate", 0.0), input_specs=[in_specs[0]],
                             output_spec=in_specs[0], name=node.name)
    return layer, in_specs[0], [None]


def _to_engine(layer, node, ins, specs, channels) -> Op:
    return Op(node.name, "identity", ins, out_attrs(layer, channels))


SPEC = register(OpSpec(
    name="dropout", kind="dropout", output_sign="input",
    float_layers=(keras.layers.Dropout, keras.layers.Identity),
    quantized_layers=(QuantizedDropout,), engine_kinds=("identity",), build=_build,
    to_engine=_to_engine, channel_homogeneous=True,
    description="dropout / Identity / linear activation (identity at inference)"))
