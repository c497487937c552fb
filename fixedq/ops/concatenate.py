"""Concatenate -> QuantizedConcatenate -> engine ``concat`` op. Inputs on different grids are
re-gridded: per-tensor activations get an OutputQuantizer per input (engine ``shift`` op, see
:mod:`fixedq.ops.output_quantizer`); non-channel axes use the smallest frac_bits per channel.

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("concatenate").kind
    'concat'
"""

from __future__ import annotations

import keras
import numpy as np

from fixedq.engine.ops import Op
from fixedq.layers.base import output_bounds
from fixedq.layers.merge import QuantizedConcatenate
from fixedq.layers.quantizers import OutputQuantizer
from fixedq.layers.spec import QSpec
from fixedq.ops.common import i64, out_attrs
from fixedq.ops.registry import OpSpec, register


def _build(node, specs, ctx):
    name, axis = node.name, node.config.get("axis", -1)
    specs = list(specs)
    shapes = [ctx.graph.input_shape(node, i) for i in range(len(specs))]
    rank = len(shapes[0])
    vb = max(s.value_bits for s in specs)
    signed = any(s.signed for s in specs)
    pre = [None] * len(specs)
    if axis in (-1, rank - 1):
        if ctx.qparams.per_tensor_activations:
            f = min(s.max_frac for s in specs)
            for i, s in enumerate(specs):
                if any(fi != f for fi in s.frac_bits):
                    k = s.max_frac - f  # an asymmetric window moves with its rounding
                    target = QSpec(s.value_bits, s.signed, (f,), lo=None if s.lo is None else
                                   tuple((v + (1 << (k - 1))) >> k for v in s.lo))
                    pre[i] = OutputQuantizer(input_specs=[s], output_spec=target,
                                             name=f"{name}_in{i}_quantizer")
                    specs[i] = target
        fracs, his, los = [], [], []
        for s, shape in zip(specs, shapes, strict=True):
            fracs.extend(s.frac_array(int(shape[-1])).tolist())
            his.extend(np.broadcast_to(s.hi_array(), (int(shape[-1]),)).tolist())
            los.extend(np.broadcast_to(s.lo_array(), (int(shape[-1]),)).tolist())
        if any(s.lo is not None for s in specs):
            return _concat_windows(node, specs, fracs, los, his, pre)
        if len(set(fracs)) == 1:
            fracs = fracs[:1]
        top = (1 << vb) - 1
        hi = None if all(h >= top for h in his) else tuple(int(h) for h in his)
        if hi is not None and len(fracs) == 1 and len(set(hi)) == 1:
            hi = hi[:1]
        out = QSpec(vb, signed, tuple(int(f) for f in fracs), hi)
    else:
        if any(s.lo is not None for s in specs):
            raise ValueError(f"Concatenate {name!r} over axis {axis} with asymmetric inputs is "
                             "not supported (only the channel axis); quantize its inputs "
                             "symmetrically (overrides={'layer': {'asymmetric': False}})")
        channels = int(shapes[0][-1])
        f = np.min([s.frac_array(channels) for s in specs], axis=0)
        out = QSpec(vb, signed, tuple(int(v) for v in (f[:1] if len(set(f)) == 1 else f)))
    layer = QuantizedConcatenate(axis=axis, input_specs=specs, output_spec=out, name=name)
    return layer, out, pre


def _concat_windows(node, specs, fracs, los, his, pre):
    """Channel concatenation with an asymmetric input: every channel keeps its own window
    (a symmetric or unsigned input's range is a window too), in the widest input's bits."""
    bits = max(s.value_bits + 1 if s.signed else s.value_bits for s in specs)
    top = (1 << bits) - 1
    hi = None if all(h >= lo + top for lo, h in zip(los, his, strict=True)) else tuple(
        int(h) for h in his)
    out = QSpec(bits - 1, True, tuple(int(f) for f in fracs), hi,
                tuple(int(v) for v in los))
    layer = QuantizedConcatenate(axis=node.config.get("axis", -1), input_specs=specs,
                                 output_spec=out, name=node.name)
    return layer, out, pre


def _to_engine(layer, node, ins, specs, channels) -> Op:
    out_spec = layer.output_spec
    rank = len(node.output_shapes[0])
    axis = layer.axis % rank
    arrays = {}
    if axis != rank - 1:
        f_out = out_spec.frac_array(channels)
        arrays["out_lo"], arrays["out_hi"] = output_bounds(out_spec, channels)
        for i, s in enumerate(layer.input_specs):
            arrays[f"shift{i}"] = i64(s.frac_array(channels) - f_out)
    return Op(node.name, "concat", ins, {**out_attrs(layer, channels), "axis": axis}, arrays)


SPEC = register(OpSpec(
    name="concatenate", kind="concat", float_layers=(keras.layers.Concatenate,),
    quantized_layers=(QuantizedConcatenate,), engine_kinds=("concat",), build=_build,
    to_engine=_to_engine, description="concatenation (inputs re-gridded when they differ)"))
