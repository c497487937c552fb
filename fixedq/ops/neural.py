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
from fixedq.engine.ops import Op, aligned_input, linear
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


def fold_input_offset(op: Op, lo: np.ndarray) -> None:
    """Fold the window start ``lo`` of an asymmetric input into a neural op's bias.

    The engine then feeds ``u = v - lo`` (eq. 37), so ``sum w * lo`` joins the bias: computed
    exactly with the engine's linear op on a constant ``lo`` image, it is a per-channel vector,
    or a (Ho, Wo, Cout) bias map where zero padding makes border outputs see fewer taps.

    Raises:
        ValueError: the fold depends on the size (zero padding) and the input size is dynamic.
    """
    dynamic = None in op.attrs["in_shape"]
    shape = (1, *_fold_shape(op)) if dynamic else (1, *op.attrs["in_shape"])
    x_lo = np.broadcast_to(lo, shape).astype(np.int64)
    fold = linear(op, aligned_input(op, x_lo))[0]
    flat = fold.reshape(-1, fold.shape[-1])
    bias = op.arrays["bias"]
    if np.all(flat == flat[0]):
        op.arrays["bias"] = i64(bias + flat[0])
    elif dynamic:
        raise ValueError(
            f"layer {op.name!r} reads an asymmetric tensor through zero padding "
            f"and its input size {tuple(op.attrs['in_shape'])} is dynamic: the "
            "folded offset depends on the size. Quantize a model with a fixed "
            "input shape, e.g. keras.Input((224, 224, 3))")
    else:
        op.arrays["bias"] = i64(bias + fold)


def _fold_shape(op: Op) -> list[int]:
    """A stand-in size for the dynamic dimensions of a neural op's input: large enough for
    interior outputs (a constant fold there and at the borders means a size-free fold)."""
    a = op.attrs
    k = op.arrays["kernel"].shape
    extent = [(k[i] - 1) * a.get("dilation_rate", [1, 1])[i] + 1 for i in range(2)] \
        if a["type"] != "dense" else [1, 1]
    dims = list(op.attrs["in_shape"])
    spatial = range(len(dims) - 1)
    first = 1 if a.get("conv1d") else 0  # a Conv1D's steps are the conv2d's width
    return [3 * extent[min(i + first, 1)] + 2 * max(a.get("strides", [1, 1])) if dims[i] is None
            else dims[i] for i in spatial] + [dims[-1]]


_TYPES: dict[type, str] = {}
#: Neural types whose engine op can end with a fused max-pool (``neural_output``'s ``pool``).
_POOLED_TYPES = ("conv2d", "depthwise", "transpose")


def neural_op(name: str, float_layer: type, quantized_layer: type, neural_type: str | None,
              make, description: str, example=None, in_channel_axis: int | None = None,
              weight_rows: str | None = None) -> OpSpec:
    """Register a neural op; ``neural_type`` ``None`` means it has no engine op yet;
    ``example`` is :attr:`OpSpec.example`; ``in_channel_axis`` is
    :attr:`OpSpec.in_channel_axis` (the kernel axis of the input channels, when range
    alignment may scale them); ``weight_rows`` is :attr:`OpSpec.weight_rows`."""
    if neural_type is not None:
        _TYPES[quantized_layer] = neural_type
    return register(OpSpec(
        name=name, kind="neural", output_sign="fused_relu", float_layers=(float_layer,),
        quantized_layers=(quantized_layer,),
        engine_kinds=("neural",) if neural_type is not None else (),
        neural_type=neural_type, accepts=accepts, requantizes=True,
        fuses=(RELU, MAXPOOL_RELU), weighted=True, build=builder(make),
        set_weights=set_weights, to_engine=to_engine if neural_type is not None else None,
        absorbs=("max_pooling2d",) if neural_type in _POOLED_TYPES else (),
        fold_input_offset=fold_input_offset if neural_type is not None else None,
        in_channel_axis=in_channel_axis, weight_rows=weight_rows, description=description,
        example=example))
