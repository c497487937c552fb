"""What the streaming (buffer) convolution ops share: build through the neural builder, the
``buffer_conv`` engine op (integer FIFO state in the engine, docs/numerics.md eq. 40).

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("buffer_temp_conv").kind, by_name("buffer_temp_conv").weighted
    ('neural', True)
"""

from __future__ import annotations

import numpy as np

from fixedq.engine import kernels
from fixedq.engine.ops import Op
from fixedq.ops.common import i64, spec_attrs
from fixedq.ops.neural import builder, set_weights
from fixedq.ops.registry import RELU, OpSpec, register


def _accepts(node) -> str | None:
    shape = node.output_shapes[0] if node.output_shapes else None
    if shape is None or None in tuple(shape)[1:]:
        return "a dynamic frame size (the FIFO needs a fixed frame shape)"
    return None


def to_engine(layer, node, ins, specs, channels) -> Op:
    """The ``buffer_conv`` op: integer kernel ``(k, C, F)`` (depthwise ``(k, C)``), bias,
    multiplier/shift, bounds; the FIFO is runtime state of the engine model."""
    p = layer.integer_params()
    spec_in = specs[ins[0]]
    cin = int(layer.in_channels)
    align = int(p["in_frac"]) - spec_in.frac_array(cin)
    if spec_in.lo is not None:
        mags = np.broadcast_to(spec_in.hi_array() - spec_in.lo_array(), (cin,))
    else:
        mags = np.broadcast_to(spec_in.max_abs_array(), (cin,))
    kernel = i64(p["kernel"])
    depthwise = kernel.ndim == 2
    per_in = np.left_shift(np.asarray(mags, np.int64), align)
    absk = np.abs(kernel)
    if depthwise:
        bound = int((absk * per_in[None, :]).sum(axis=0).max(initial=0))
    else:
        bound = int(np.einsum("kcf,c->f", absk, per_in).max(initial=0))
    attrs = {"kernel_size": int(layer.kernel_size), "depthwise": bool(depthwise),
             "weight_bits": int(layer.weight_bits), "buffer_bits": int(layer.buffer_bits),
             "acc_lo": int(p["acc_lo"]), "acc_hi": int(p["acc_hi"]), "accum_bound": bound,
             "accum_dtype": kernels.exact_dtype(bound), "in_frac": int(p["in_frac"]),
             "frame_shape": [int(d) for d in node.output_shapes[0][1:-1]] + [cin],
             **spec_attrs(layer.output_spec, channels)}
    arrays = {"kernel": kernel, "bias": i64(p["bias"]), "multiplier": i64(p["multiplier"]),
              "shift": i64(p["shift"]), "out_lo": i64(p["out_lo"]), "out_hi": i64(p["out_hi"])}
    if np.any(align):
        arrays["in_align"] = i64(align)
    return Op(node.name, "buffer_conv", [ins[0]], attrs, arrays)


def register_buffer_conv(name: str, float_layer: type, quantized_layer: type, make,
                         description: str, example) -> OpSpec:
    """Register a buffer-conv op (kind ``neural``: weight bits, calibration and q-config as
    the other neural layers)."""
    return register(OpSpec(
        name=name, kind="neural", output_sign="fused_relu", float_layers=(float_layer,),
        quantized_layers=(quantized_layer,), engine_kinds=("buffer_conv",),
        accepts=_accepts, requantizes=True, fuses=(RELU,), weighted=True,
        build=builder(make), set_weights=set_weights, to_engine=to_engine,
        description=description, example=example))
