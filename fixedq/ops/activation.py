"""``Activation(name)`` of an elementwise function (sigmoid, hard_sigmoid, silu/swish,
hard_silu/hard_swish, gelu, tanh, softplus, softsign, mish, elu, selu, celu, leaky_relu, and
the other elementwise Keras activations: linear, exponential, hard_tanh, log_sigmoid,
tanh_shrink, squareplus, sparse_plus, sparse_sigmoid, soft_shrink, hard_shrink) ->
QuantizedActivation -> engine ``table`` op (eq. 38). ``Activation("relu")``/``("relu6")`` and
``("softmax")`` are rewritten to ``ReLU``/``Softmax`` layers by ``sanitize`` first; fused
``activation=`` arguments of Dense/Conv layers are split into such layers.

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("activation").kind, by_name("activation").requantizes
    ('table', True)
"""

from __future__ import annotations

import keras

from fixedq.layers.table import QuantizedActivation
from fixedq.layers.table_functions import FUNCTIONS, for_activation, output_signed
from fixedq.ops.registry import OpSpec, register
from fixedq.ops.table import table_builder, table_to_engine


def _accepts(node) -> str | None:
    activation = node.config.get("activation")
    if for_activation(activation) is None:
        label = activation if isinstance(activation, str) else type(activation).__name__
        return f"activation {label!r} (no integer table; known: {', '.join(FUNCTIONS)})"
    return None


def _make(node, common):
    name, params = for_activation(node.config["activation"])
    return QuantizedActivation(name, params, **common)


def _signed(node) -> bool:
    return output_signed(*for_activation(node.config["activation"]))


def _example(rng):
    """Every table function after a Dense (fused or as an Activation layer)."""
    L = keras.layers
    x = keras.Input((6,))
    h = L.Dense(8, activation="gelu", name="fc_gelu")(x)
    outs = [L.Activation(name, name=f"act_{name}")(L.Dense(4)(h))
            for name in ("sigmoid", "hard_sigmoid", "swish", "hard_swish", "tanh", "gelu",
                         "softplus", "softsign", "mish", "elu", "selu", "celu", "leaky_relu")]
    return keras.Model(x, L.Concatenate()(outs)), (rng.normal(size=(64, 6)) * 2).astype("float32")


SPEC = register(OpSpec(
    name="activation", kind="table", float_layers=(keras.layers.Activation,),
    quantized_layers=(QuantizedActivation,), engine_kinds=("table",), accepts=_accepts,
    requantizes=True, build=table_builder(_make, _signed), to_engine=table_to_engine,
    description="elementwise function (sigmoid, hard_sigmoid, swish, hard_swish, GELU, tanh, "
                "...) as an integer table over the input integers (<= 16 bits)",
    example=_example))
