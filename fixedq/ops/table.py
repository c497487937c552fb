"""What the table ops share (eq. 38): the build of a table layer with a calibrated output and
its ``table`` engine op.

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("activation").engine_kinds, by_name("prelu").engine_kinds
    (('table',), ('table',))
"""

from __future__ import annotations

from collections.abc import Callable

from fixedq.engine.ops import Op
from fixedq.layers.table import table_input_size
from fixedq.ops.common import i64, out_attrs


def table_builder(make: Callable, signed: Callable) -> Callable:
    """A ``build`` for a table op: ``make(node, common)`` creates the layer (``common`` holds
    ``input_specs``, ``output_spec``, ``name``, ``qconfig``); ``signed(node)`` says whether the
    function's output can be negative. An input wider than 16 bits is a ``ValueError`` (the
    layer then falls back to float)."""

    def build(node, in_specs, ctx):
        channels = node.output_shapes[0][-1] if node.output_shapes else None
        table_input_size(in_specs[0], int(channels or 1))
        spec, bits = ctx.output_spec(node, signed=signed(node))
        common = dict(input_specs=[in_specs[0]], output_spec=spec, name=node.name,
                      qconfig=ctx.entry(node.name, activation_bits=bits))
        return make(node, common), spec, [None]

    return build


def table_to_engine(layer, node, ins, specs, channels) -> Op:
    """The ``table`` engine op of a quantized table layer."""
    p = layer.integer_params()
    return Op(node.name, "table", ins, out_attrs(layer, channels),
              {k: i64(p[k]) for k in ("table", "base", "out_lo", "out_hi")})
