"""What the neural ops (Conv2D, Conv1D, DepthwiseConv2D, Conv2DTranspose, Dense and
DepthwiseConv2DTranspose) share: config conditions, the quantized layer's common arguments,
weights (kernel, bias, recorded clipping/rounding is replayed by ``quantize``), the ``neural``
engine op. Each op module registers itself with :func:`neural_op`.

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("dense").kind, by_name("dense").neural_type
    ('neural', 'dense')
"""

from __future__ import annotations

import numpy as np

from fixedq.engine import kernels
from fixedq.engine.ops import Op
from fixedq.ops.common import i64, spec_attrs
from fixedq.ops.registry import MAXPOOL_RELU, RELU, OpSpec, register

_CONV_KEYS = ("kernel_size", "strides", "padding", "dilation_rate")


def accepts(node) -> str | None:
    """Why a neural node's config is not supported (``None``: supported)."""
    cfg = node.config
    if cfg.get("activation", "linear") not in ("linear", None):
        return f"fused activation {cfg.get('activation')!r}"
    if cfg.get("groups", 1) != 1:
        return f"groups={cfg.get('groups')}"
    if cfg.get("padding", "valid") not in ("valid", "same"):
        return f"padding {cfg.get('padding')!r}"
    if cfg.get("output_padding") is not None:
        return "output_padding"
    return None


def conv_args(node) -> dict:
    """The convolution arguments present in ``node``'s config."""
    return {k: node.config[k] for k in _CONV_KEYS if k in node.config}


def builder(make):
    """A ``build`` function: ``make(node, common)`` creates the layer from the common kwargs."""

    def build(node, in_specs, ctx):
        name = node.name
        qp = ctx.qparams
        default_wb = qp.input_weight_bits if name in ctx.first_neural else qp.weight_bits
        wb = ctx.override(name, "weight_bits", default_wb)
        if wb < 2:
            raise ValueError(f"q_config: layer {name!r} weight_bits must be >= 2, got {wb}")
        out_spec, bits = ctx.output_spec(node, signed=True)
        common = dict(weight_bits=wb, buffer_bits=qp.buffer_bits, scale_bits=qp.scale_bits,
                      use_bias=node.config.get("use_bias", True), input_specs=[in_specs[0]],
                      output_spec=out_spec, name=name,
                      qconfig=ctx.entry(name, weight_bits=wb, activation_bits=bits))
        if node.folded_input is not None:  # a Rescaling folded in: train in original units
            common["kernel_unit"] = [float(u) for u in node.folded_input[0]]
        return make(node, common), out_spec, [None]

    return build


def set_weights(layer, node) -> None:
    """Kernel (the folded one when a Rescaling was folded in) and bias."""
    kernel = node.weight("kernel") if layer.kernel_unit is None else node.folded_input[1]
    layer.set_weights([kernel] if not layer.use_bias else [kernel, node.weight("bias")])


def to_engine(layer, node, ins, specs, channels) -> Op:
    """The ``neural`` engine op: integer kernel, bias, multiplier/shift, bounds."""
    p = layer.integer_params()
    kind = _TYPES[type(layer)]
    spec_in = specs[ins[0]]
    cin = int(layer.in_channels)
    f_in = spec_in.frac_array(cin)
    align = int(p["in_frac"]) - f_in
    kernel = i64(p["kernel"])
    conv1d = kernel.ndim == 3  # Conv1D (k, in, out): a conv2d over a (1, steps) image
    if conv1d:
        kernel = kernel[None]
    if spec_in.lo is not None:  # the engine feeds u = v - lo in [0, hi - lo] (eq. 37)
        mags = np.broadcast_to(spec_in.hi_array() - spec_in.lo_array(), (cin,))
    else:
        mags = np.broadcast_to(spec_in.max_abs_array(), (cin,))
    bound = kernels.linear_bound(kernel, kind, np.left_shift(mags, align))
    attrs = {"type": kind, "weight_bits": int(layer.weight_bits),
             "buffer_bits": int(layer.buffer_bits), "acc_lo": int(p["acc_lo"]),
             "acc_hi": int(p["acc_hi"]), "accum_bound": int(bound),
             "accum_dtype": kernels.exact_dtype(bound), "in_frac": int(p["in_frac"]),
             **spec_attrs(layer.output_spec, channels)}
    if kind != "dense":
        lead = [1] if conv1d else []
        attrs.update(strides=lead + list(layer.strides), padding=layer.padding,
                     dilation_rate=lead + list(layer.dilation_rate),
                     kernel_size=lead + list(layer.kernel_size))
    if conv1d:
        attrs["conv1d"] = True
    arrays = {"kernel": kernel, "bias": i64(p["bias"]), "multiplier": i64(p["multiplier"]),
              "shift": i64(p["shift"]), "out_lo": i64(p["out_lo"]),
              "out_hi": i64(p["out_hi"])}
    if np.any(align):
        arrays["in_align"] = i64(align)
    return Op(node.name, "neural", [ins[0]], attrs, arrays)


_TYPES: dict[type, str] = {}


def neural_op(name: str, float_layer: type, quantized_layer: type, neural_type: str | None,
              make, description: str, example=None) -> OpSpec:
    """Register a neural op; ``neural_type`` ``None`` means it has no engine op yet;
    ``example`` is :attr:`OpSpec.example`."""
    if neural_type is not None:
        _TYPES[quantized_layer] = neural_type
    return register(OpSpec(
        name=name, kind="neural", float_layers=(float_layer,),
        quantized_layers=(quantized_layer,),
        engine_kinds=("neural",) if neural_type is not None else (),
        neural_type=neural_type, accepts=accepts, requantizes=True,
        fuses=(RELU, MAXPOOL_RELU), weighted=True, build=builder(make),
        set_weights=set_weights, to_engine=to_engine if neural_type is not None else None,
        description=description, example=example))
