"""From a float graph node to its quantized layer and output spec (used by ``quantize``).

Example:
    >>> import keras
    >>> from fixedq.transforms.graph import read_graph
    >>> x = keras.Input((4,), name="x")
    >>> g = read_graph(keras.Model(x, keras.layers.ReLU(name="r")(x)))
    >>> kind_of(g.node("r"))
    'relu'
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np

from fixedq.layers import activation, affine, merge, neural, pooling, reshaping
from fixedq.layers.depthwise_conv2d_transpose import DepthwiseConv2DTranspose
from fixedq.layers.params import QuantizationParams
from fixedq.layers.quantizers import Dequantizer, InputQuantizer, OutputQuantizer
from fixedq.layers.spec import QSpec, window_starts
from fixedq.layers.transformers import build as transformer_build
from fixedq.models import asymmetric
from fixedq.models.bias_correction import apply_recorded
from fixedq.models.calibrate import RangeStats
from fixedq.models.calibration_methods import CalibrationMethod, select_range
from fixedq.models.split_separable import DW_SUFFIX
from fixedq.models.weight_rounding import apply_recorded as apply_recorded_rounding
from fixedq.transforms.graph import Graph, GraphNode

#: Kinds of layers that requantize their output with calibrated frac_bits.
REQUANTIZING = {"neural", "affine", "gap", "add"}
REQUANTIZING |= transformer_build.REQUANTIZING

L = keras.layers
_PASS_KINDS = {L.Flatten: "reshape", L.Reshape: "reshape", L.Permute: "reshape",
               L.Dropout: "dropout", L.MaxPooling2D: "maxpool", L.Add: "add",
               L.Concatenate: "concat", L.GlobalAveragePooling2D: "gap", L.ReLU: "relu",
               L.BatchNormalization: "affine", L.Rescaling: "affine", L.InputLayer: "input"}
_NEURAL = (L.Conv2D, L.DepthwiseConv2D, L.Conv2DTranspose, L.Dense, DepthwiseConv2DTranspose)


def kind_of(node: GraphNode) -> str:
    """What ``quantize`` does with a node: a kind name, or ``"unsupported"``."""
    cfg, cls = node.config, node.cls
    if cfg.get("data_format", "channels_last") != "channels_last":
        return "unsupported"
    if cls in _NEURAL and cls not in (L.SeparableConv2D,):
        if cfg.get("activation", "linear") not in ("linear", None):
            return "unsupported"
        if cfg.get("groups", 1) != 1 or cfg.get("padding", "valid") not in ("valid", "same"):
            return "unsupported"
        if cfg.get("output_padding") is not None:
            return "unsupported"
        return "neural"
    if cls in transformer_build.KINDS:
        return transformer_build.KINDS[cls]
    kind = _PASS_KINDS.get(cls, "unsupported")
    if kind == "relu" and (cfg.get("negative_slope") or cfg.get("threshold")):
        return "unsupported"
    if kind == "gap" and cfg.get("keepdims"):
        return "unsupported"
    if cls is L.BatchNormalization and cfg.get("axis") not in (-1, [-1], 3, [3], 1, [1]):
        return "unsupported"
    return kind


@dataclass
class BuildContext:
    """Everything the builders need besides the node itself."""

    qparams: QuantizationParams
    stats: dict[str, RangeStats]
    layer_cfg: dict
    first_neural: set[str]
    outputs: set[str]
    fused: dict[str, str]  # producer -> fused ReLU name
    graph: Graph | None = None
    methods: dict | None = None  # layer name (or "default") -> CalibrationMethod
    chosen: dict = field(default_factory=dict)  # ranges picked by non-default methods

    def method_for(self, name: str) -> CalibrationMethod:
        """The calibration method of layer ``name`` (q-config entry, then argument, then max)."""
        cfg = self.layer_cfg.get(name, {})
        if "calibration_method" in cfg:
            return CalibrationMethod.get(cfg["calibration_method"])
        methods = self.methods or {}
        return methods.get(name, methods.get("default", CalibrationMethod()))

    def override(self, name: str, key: str, default):
        value = self.layer_cfg.get(name, {}).get(key, default)
        if key.endswith("_bits") and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 1 <= value <= 24):
            raise ValueError(f"q_config: layer {name!r} {key} must be an integer in [1, 24], "
                             f"got {value!r}")
        return value


def _range_spec(name: str, ctx: BuildContext, signed: bool, bits: int, max_value=None,
                asymmetric: bool = False) -> QSpec:
    """Output spec of tensor ``name`` from its calibration statistics and the layer's q-config
    entry (``frac_bits`` and ``range`` overrides win over the calibration method).
    ``asymmetric`` (signed tensors only) fits a per-channel window instead (eqs. 35-36)."""
    st = ctx.stats.get(name)
    if st is None:
        raise KeyError(f"no calibration range for layer {name!r}")
    vb = bits if not signed else bits - 1
    if vb < 1:
        raise ValueError(f"layer {name!r}: {bits} signed bits leave no magnitude bit")
    cfg = ctx.layer_cfg.get(name, {})
    per_tensor = ctx.override(name, "per_tensor", ctx.qparams.per_tensor_activations)
    if signed and asymmetric:
        return _window_spec(name, ctx, st, cfg, bits, per_tensor)
    if "frac_bits" in cfg:
        frac = tuple(int(f) for f in np.atleast_1d(cfg["frac_bits"]))
        if len(frac) not in (1, len(st.maximum)) or (per_tensor and len(frac) != 1):
            raise ValueError(f"q_config: layer {name!r} frac_bits must be one integer or one "
                             f"per channel ({len(st.maximum)}), got {cfg['frac_bits']!r}")
        spec = QSpec(vb, signed, frac)
    else:
        method = ctx.method_for(name)
        if "range" in cfg:
            rng = np.atleast_1d(np.asarray(cfg["range"], dtype=np.float64))
            if rng.shape not in ((1,), st.maximum.shape) or not np.all(np.isfinite(rng)) \
                    or np.any(rng < 0):
                raise ValueError(f"q_config: layer {name!r} range must be finite, >= 0, one "
                                 f"value or one per channel, got {cfg['range']!r}")
        else:
            rng = select_range(st, method, signed, bits if not signed else bits - 1, max_value)
            if method.name != "max":
                ctx.chosen[name] = {"range": rng.astype(float).tolist(),
                                    "calibration_method": method.to_config()}
        if per_tensor:
            rng = np.array([rng.max()])
        spec = QSpec.from_range(rng, vb, signed)
    if not signed:
        spec = activation.relu_output_spec(spec, max_value)
    return spec


def _window_spec(name: str, ctx: BuildContext, st: RangeStats, cfg: dict, bits: int,
                 per_tensor: bool) -> QSpec:
    """Asymmetric spec of a signed tensor: calibrated ``[low, high]`` windows (eqs. 35-36)."""
    if "window" in cfg:
        low, high = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in cfg["window"])
        if low.shape != high.shape or low.shape not in ((1,), st.maximum.shape):
            raise ValueError(f"q_config: layer {name!r} window must be [low, high] with one "
                             f"value or one per channel each, got {cfg['window']!r:.80}")
    elif "range" in cfg:
        low, high = asymmetric.clip_window(st, cfg["range"])
    else:
        method = ctx.method_for(name)
        low, high = asymmetric.select_window(st, method, bits)
        if method.name != "max":
            ctx.chosen[name] = {"window": [low.astype(float).tolist(),
                                           high.astype(float).tolist()],
                                "calibration_method": method.to_config()}
    if "frac_bits" in cfg:
        frac = tuple(int(f) for f in np.atleast_1d(cfg["frac_bits"]))
        if len(frac) not in (1, len(low)) or (per_tensor and len(frac) != 1):
            raise ValueError(f"q_config: layer {name!r} frac_bits must be one integer or one "
                             f"per channel ({len(low)}), got {cfg['frac_bits']!r}")
        starts = window_starts(low, high, frac * len(low) if len(frac) == 1 else frac, bits)
        return QSpec(bits - 1, True, frac, lo=starts)
    return QSpec.asymmetric(low, high, bits, per_tensor=per_tensor)


def _entry(name: str, ctx: BuildContext, **extra) -> dict:
    per_tensor = ctx.override(name, "per_tensor", ctx.qparams.per_tensor_activations)
    entry = {"layer": name, **extra, "per_tensor": bool(per_tensor),
             "calibration": ctx.stats[name].to_config()}
    cfg = ctx.layer_cfg.get(name, {})
    for key in ("frac_bits", "range", "window", "asymmetric", "calibration_method", "bias_delta",
                "weight_clip_std", "weight_rounding"):
        if key in cfg:
            entry[key] = cfg[key]
    entry.update(ctx.chosen.get(name, {}))
    return entry


def input_quantizer(node: GraphNode, ctx: BuildContext):
    """The InputQuantizer of the model input ``node`` and its output spec."""
    st = ctx.stats[node.name]
    signed = bool(np.any(st.minimum < 0))
    bits = ctx.override(node.name, "activation_bits", ctx.qparams.input_bits)
    spec = _range_spec(node.name, ctx, signed, bits)
    entry = _entry(node.name, ctx, activation_bits=bits, qparams=ctx.qparams.to_dict())
    return InputQuantizer(output_spec=spec, qconfig=entry, name=f"{node.name}_quantizer"), spec


def dequantizer(producer: str) -> Dequantizer:
    return Dequantizer(name=f"{producer}_dequantizer")


def _output_spec(node: GraphNode, ctx: BuildContext, signed: bool):
    name = node.name
    if name in ctx.outputs:
        default = ctx.qparams.output_bits
    elif name.endswith(DW_SUFFIX) and node.cls is L.DepthwiseConv2D:
        default = max(8, ctx.qparams.activation_bits)  # inside a split SeparableConv2D
    else:
        default = ctx.qparams.activation_bits
    bits = ctx.override(name, "activation_bits", default)
    relu = ctx.fused.get(name)
    max_value = None
    if relu is not None and ctx.graph is not None:
        max_value = ctx.graph.node(relu).config.get("max_value")
        signed = False
    elif relu is not None:
        signed = False
    asym = ctx.override(name, "asymmetric", ctx.qparams.asymmetric_activations)
    if not isinstance(asym, bool):
        raise ValueError(f"q_config: layer {name!r} asymmetric must be true or false, "
                         f"got {asym!r}")
    return _range_spec(name, ctx, signed, bits, max_value, asymmetric=asym), bits


def _neural(node: GraphNode, in_spec: QSpec, ctx: BuildContext):
    cfg, name = node.config, node.name
    default_wb = (ctx.qparams.input_weight_bits if name in ctx.first_neural
                  else ctx.qparams.weight_bits)
    wb = ctx.override(name, "weight_bits", default_wb)
    if wb < 2:
        raise ValueError(f"q_config: layer {name!r} weight_bits must be >= 2, got {wb}")
    out_spec, bits = _output_spec(node, ctx, signed=True)
    common = dict(weight_bits=wb, buffer_bits=ctx.qparams.buffer_bits,
                  scale_bits=ctx.qparams.scale_bits, use_bias=cfg.get("use_bias", True),
                  input_specs=[in_spec], output_spec=out_spec, name=name,
                  qconfig=_entry(name, ctx, weight_bits=wb, activation_bits=bits))
    if node.folded_input is not None:  # a Rescaling folded in: train in the original units
        common["kernel_unit"] = [float(u) for u in node.folded_input[0]]
    conv = {k: cfg[k] for k in ("kernel_size", "strides", "padding", "dilation_rate") if k in cfg}
    if node.cls is L.Conv2D:
        layer = neural.QuantizedConv2D(cfg["filters"], **conv, **common)
    elif node.cls is L.DepthwiseConv2D:
        layer = neural.QuantizedDepthwiseConv2D(depth_multiplier=cfg["depth_multiplier"],
                                                **conv, **common)
    elif node.cls is L.Conv2DTranspose:
        layer = neural.QuantizedConv2DTranspose(cfg["filters"], **conv, **common)
    elif node.cls is DepthwiseConv2DTranspose:
        layer = neural.QuantizedDepthwiseConv2DTranspose(
            cfg["kernel_size"], cfg["strides"], cfg["padding"], **common)
    else:
        layer = neural.QuantizedDense(cfg["units"], **common)
    return layer, out_spec


def quantized_layer(node: GraphNode, kind: str, in_specs: list[QSpec], ctx: BuildContext):
    """``(layer, output_spec, pre)``; ``pre`` holds an optional OutputQuantizer per input.

    Raises ``ValueError``/``KeyError`` when the node cannot be quantized (``quantize`` then
    stops before it).
    """
    name, cfg = node.name, node.config
    pre = [None] * len(in_specs)
    spec0 = in_specs[0]
    if kind == "neural":
        layer, spec = _neural(node, spec0, ctx)
    elif kind == "affine":
        if node.cls is L.Rescaling:
            signed = bool(np.any(ctx.stats[name].minimum < 0))
            spec, bits = _output_spec(node, ctx, signed)
            layer = affine.QuantizedRescaling(
                scale=cfg["scale"], offset=cfg["offset"], scale_bits=ctx.qparams.scale_bits,
                input_specs=[spec0], output_spec=spec, name=name,
                qconfig=_entry(name, ctx, activation_bits=bits))
        else:
            spec, bits = _output_spec(node, ctx, signed=True)
            layer = affine.QuantizedBatchNormalization(
                epsilon=cfg["epsilon"], scale_bits=ctx.qparams.scale_bits, input_specs=[spec0],
                output_spec=spec, name=name, qconfig=_entry(name, ctx, activation_bits=bits))
    elif kind == "gap":
        spec, bits = _output_spec(node, ctx, signed=spec0.signed)
        layer = pooling.QuantizedGlobalAveragePooling2D(
            scale_bits=ctx.qparams.scale_bits, input_specs=[spec0], output_spec=spec, name=name,
            qconfig=_entry(name, ctx, activation_bits=bits))
    elif kind == "add":
        if len(in_specs) < 2:
            raise ValueError("Add needs at least two inputs")
        spec, bits = _output_spec(node, ctx, signed=any(s.signed for s in in_specs))
        layer = merge.QuantizedAdd(input_specs=in_specs, output_spec=spec, name=name,
                                   qconfig=_entry(name, ctx, activation_bits=bits))
    elif kind == "relu":
        spec = activation.relu_output_spec(spec0, cfg.get("max_value"))
        layer = activation.QuantizedReLU(input_specs=[spec0], output_spec=spec, name=name)
    elif kind == "maxpool":
        spec = spec0
        layer = pooling.QuantizedMaxPool2D(cfg["pool_size"], cfg["strides"], cfg["padding"],
                                           input_specs=[spec0], output_spec=spec, name=name)
    elif kind == "dropout":
        spec = spec0
        layer = reshaping.QuantizedDropout(cfg.get("rate", 0.0), input_specs=[spec0],
                                           output_spec=spec, name=name)
    elif kind == "reshape":
        layer, spec = _reshape(node, spec0, ctx)
    elif kind == "concat":
        layer, spec, pre = _concat(node, in_specs, ctx)
    elif kind in transformer_build.KINDS.values():
        layer, spec = transformer_build.build_quantized(node, kind, in_specs, ctx)
    else:
        raise ValueError(f"{node.cls.__name__} is not supported")
    return layer, spec, pre


def _reshape(node: GraphNode, spec: QSpec, ctx: BuildContext):
    in_shape = ctx.graph.input_shape(node)[1:]
    cfg, name = node.config, node.name
    if node.cls is L.Flatten:
        out = reshaping.remap_spec(spec, in_shape, lambda a: a.reshape(-1))
        return reshaping.QuantizedFlatten(input_specs=[spec], output_spec=out, name=name), out
    if node.cls is L.Reshape:
        target = tuple(cfg["target_shape"])
        out = reshaping.remap_spec(spec, in_shape, lambda a: a.reshape(target))
        return reshaping.QuantizedReshape(target, input_specs=[spec], output_spec=out,
                                          name=name), out
    dims = tuple(cfg["dims"])
    out = reshaping.remap_spec(spec, in_shape, lambda a: a.transpose([d - 1 for d in dims]))
    return reshaping.QuantizedPermute(dims, input_specs=[spec], output_spec=out, name=name), out


def _concat(node: GraphNode, specs: list[QSpec], ctx: BuildContext):
    name, axis = node.name, node.config.get("axis", -1)
    shapes = [ctx.graph.input_shape(node, i) for i in range(len(specs))]
    rank = len(shapes[0])
    vb = max(s.value_bits for s in specs)
    signed = any(s.signed for s in specs)
    pre = [None] * len(specs)
    if axis in (-1, rank - 1):
        per_tensor = ctx.qparams.per_tensor_activations
        if per_tensor:
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
    layer = merge.QuantizedConcatenate(axis=axis, input_specs=specs, output_spec=out, name=name)
    return layer, out, pre


def _concat_windows(node: GraphNode, specs: list[QSpec], fracs, los, his, pre):
    """Channel concatenation with an asymmetric input: every channel keeps its own window
    (a symmetric or unsigned input's range is a window too), in the widest input's bits."""
    bits = max(s.value_bits + 1 if s.signed else s.value_bits for s in specs)
    top = (1 << bits) - 1
    hi = None if all(h >= lo + top for lo, h in zip(los, his, strict=True)) else tuple(
        int(h) for h in his)
    out = QSpec(bits - 1, True, tuple(int(f) for f in fracs), hi,
                tuple(int(v) for v in los))
    layer = merge.QuantizedConcatenate(axis=node.config.get("axis", -1), input_specs=specs,
                                       output_spec=out, name=node.name)
    return layer, out, pre


def set_weights(layer, node: GraphNode) -> None:
    """Copy the float weights of ``node`` into its freshly built quantized ``layer``."""
    if isinstance(layer, neural.QuantizedNeuralLayer):
        kernel = node.weight("kernel") if layer.kernel_unit is None else node.folded_input[1]
        weights = [kernel] if not layer.use_bias else [kernel, node.weight("bias")]
        layer.set_weights(weights)
        if layer.qconfig:
            apply_recorded(layer, layer.qconfig)  # weight clipping, then bias deltas
            apply_recorded_rounding(layer, layer.qconfig)  # integers of the clipped kernel
    elif isinstance(layer, affine.QuantizedBatchNormalization):
        c = layer.channels
        layer.set_weights([
            _or(node.weight("gamma"), np.ones(c)), _or(node.weight("beta"), np.zeros(c)),
            node.weight("moving_mean"), node.weight("moving_variance")])
    elif hasattr(layer, "set_float_weights"):
        layer.set_float_weights(node)


def _or(value, default):
    return default if value is None else value
