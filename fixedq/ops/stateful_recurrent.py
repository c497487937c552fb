"""StatefulRecurrent (streaming, ``clip=False``) -> QuantizedStatefulRecurrent -> engine
``recurrent`` op: integer complex diagonal recurrence with ``state_bits``-wide states (eq. 41;
16 by default, the q-config key ``state_bits`` per layer). The clip
mode (``clip=True``) stays float: convert the model with ``to_streaming`` first.

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("stateful_recurrent").kind, by_name("stateful_recurrent").engine_kinds
    ('recurrent', ('recurrent',))
"""

from __future__ import annotations

import keras
import numpy as np

from fixedq.engine.ops import Op
from fixedq.layers.temporal import StatefulRecurrent
from fixedq.layers.temporal.quantized_recurrent import QuantizedStatefulRecurrent
from fixedq.ops.common import i64, spec_attrs
from fixedq.ops.registry import OpSpec, register

#: Default bits of the integer state (docs/numerics.md eq. 41b); the q-config key
#: ``state_bits`` sets them per layer (fixedq.tensors.limits.STATE_BITS).
STATE_BITS = 16


def _accepts(node) -> str | None:
    if node.config.get("clip"):
        return "clip=True (a clip layer: convert the model with to_streaming first)"
    shape = node.output_shapes[0] if node.output_shapes else None
    if shape is None or None in tuple(shape)[1:]:
        return "a dynamic frame size"
    return None


def _build(node, in_specs, ctx):
    spec, bits = ctx.output_spec(node, signed=True)
    state_bits = int(ctx.override(node.name, "state_bits", STATE_BITS))
    layer = QuantizedStatefulRecurrent(
        state_bits=state_bits, input_specs=[in_specs[0]], output_spec=spec, name=node.name,
        qconfig=ctx.entry(node.name, activation_bits=bits, state_bits=state_bits))
    return layer, spec, [None]


def _set_weights(layer, node) -> None:
    layer.set_weights([node.weight("a_real"), node.weight("a_imag")])


def _to_engine(layer, node, ins, specs, channels) -> Op:
    p = layer.integer_params()
    cin = int(layer.channels)
    align = layer.input_spec0.max_frac - specs[ins[0]].frac_array(cin)
    arrays = {"a_re": i64(p["a_re"]), "a_im": i64(p["a_im"]),
              "in_shift": i64(np.broadcast_to(p["in_shift"], (cin,))),
              "out_shift": i64(np.broadcast_to(p["out_shift"], (cin,))),
              "state_hi": i64([p["state_hi"]]), "out_lo": i64(p["out_lo"]),
              "out_hi": i64(p["out_hi"])}
    if np.any(align):
        arrays["in_align"] = i64(align)
    attrs = {"coef_frac": int(p["coef_frac"]), "state_bits": int(layer.state_bits),
             **spec_attrs(layer.output_spec, channels)}
    return Op(node.name, "recurrent", [ins[0]], attrs, arrays)


def _example(rng):
    """A recurrence with A = 0 (stateless, so the shared harness' frame parity holds) after
    a conv; tests/temporal checks real eigenvalues frame by frame."""
    x = keras.Input((4, 4, 2))
    y = keras.layers.Conv2D(3, 1)(x)
    rec = StatefulRecurrent()
    model = keras.Model(x, rec(y))
    rec.set_weights([np.zeros(3, "float32"), np.zeros(3, "float32")])
    return model, rng.normal(size=(32, 4, 4, 2)).astype("float32")


SPEC = register(OpSpec(
    name="stateful_recurrent", kind="recurrent", float_layers=(StatefulRecurrent,),
    quantized_layers=(QuantizedStatefulRecurrent,), engine_kinds=("recurrent",),
    accepts=_accepts, requantizes=True, build=_build, set_weights=_set_weights,
    to_engine=_to_engine,
    description="complex diagonal recurrence s = A s + u, output Re(s): integer states "
                "(state_bits, default 16), 16-bit eigenvalues, requantized output; streaming",
    example=_example))
