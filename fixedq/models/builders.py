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

from fixedq.layers import activation
from fixedq.layers.params import QuantizationParams
from fixedq.layers.quantizers import Dequantizer, InputQuantizer
from fixedq.layers.spec import QSpec, frac_bits_for_range, window_starts
from fixedq.models import asymmetric
from fixedq.models.bias_correction import apply_recorded_bias_correction
from fixedq.models.calibrate import RangeStats
from fixedq.models.calibration_methods import CalibrationMethod, auto_method, select_range
from fixedq.models.qconfig_schema import SETTINGS, QConfigError, check_activation_bits
from fixedq.models.qconfig_schema import check_frac_bits as _check_frac
from fixedq.models.weight_rounding import apply_recorded_rounding
from fixedq.ops import registry  # importing fixedq.ops registers every op
from fixedq.transforms.graph import Graph, GraphNode
from fixedq.transforms.split_separable import DW_SUFFIX

#: Kinds of layers that requantize their output with calibrated frac_bits (from the registry).
REQUANTIZING = frozenset(registry.requantizing_kinds())


def kind_of(node: GraphNode) -> str:
    """What ``quantize`` does with a node: its registered op's kind, or ``"unsupported"``."""
    return registry.kind_of(node)


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
        """The calibration method of layer ``name``: its q-config entry, then the
        ``calibration`` argument (per layer, then ``"default"``), then
        :func:`~fixedq.models.calibration_methods.auto_method` of the layer's activation bits
        (``mse`` at 4 bits or less, ``max`` above); ``max`` for a q-config entry with recorded
        ranges and no recorded method."""
        cfg = self.layer_cfg.get(name, {})
        if "calibration_method" in cfg:
            return CalibrationMethod.get(cfg["calibration_method"])
        methods = self.methods or {}
        if name in methods or "default" in methods:
            return methods.get(name, methods.get("default"))
        if self.graph is None or "calibration" in cfg:
            # a q-config's recorded ranges: made by max unless it says otherwise (replayed
            # configs, including those dumped before auto_method, come out bit for bit)
            return CalibrationMethod()
        node = self.graph.node(name)
        bits = (self.override(name, "activation_bits", self.qparams.input_bits)
                if node.is_input else activation_bits(node, self))
        return auto_method(bits)

    def output_spec(self, node: GraphNode, signed: bool) -> tuple[QSpec, int]:
        """``(spec, bits)`` of a requantizing node's output (calibrated; a fused ReLU makes
        it unsigned)."""
        return _output_spec(node, self, signed)

    def entry(self, name: str, **extra) -> dict:
        """The q-config entry recorded in the quantized layer ``name``."""
        return _entry(name, self, **extra)

    def override(self, name: str, key: str, default):
        """Layer ``name``'s q-config/override value of ``key`` (else ``default``), checked
        against the schema (:mod:`fixedq.models.qconfig_schema`): a bad value is a
        ``QConfigError``, never a fallback to float."""
        cfg = self.layer_cfg.get(name, {})
        if key in cfg and key in SETTINGS:
            reason = SETTINGS[key].check(cfg[key])
            if reason is not None:
                raise QConfigError(f"q_config: layer {name!r}, key {key!r}: {reason}, "
                                   f"got {cfg[key]!r:.80}")
        return cfg.get(key, default)


def _range_spec(name: str, ctx: BuildContext, signed: bool, bits: int, max_value=None,
                asymmetric: bool = False) -> QSpec:
    """Output spec of tensor ``name`` from its calibration statistics and the layer's q-config
    entry (``frac_bits`` and ``range`` overrides win over the calibration method).
    ``asymmetric`` (signed tensors only) fits a per-channel window instead (eqs. 35-36)."""
    st = ctx.stats.get(name)
    if st is None:
        raise KeyError(f"no calibration range for layer {name!r}")
    vb = bits if not signed else bits - 1
    if vb < 1:  # 1 signed bit leaves no magnitude bit
        check_activation_bits(name, bits, False, signed=True, where="quantize")
    cfg = ctx.layer_cfg.get(name, {})
    per_tensor = ctx.override(name, "per_tensor", ctx.qparams.per_tensor_activations)
    if signed and asymmetric:
        return _window_spec(name, ctx, st, cfg, bits, per_tensor)
    if "frac_bits" in cfg:
        frac = tuple(int(f) for f in np.atleast_1d(cfg["frac_bits"]))
        if len(frac) not in (1, len(st.maximum)) or (per_tensor and len(frac) != 1):
            raise QConfigError(f"q_config: layer {name!r}, key 'frac_bits': must be one integer "
                               f"or one per channel ({len(st.maximum)}), got "
                               f"{cfg['frac_bits']!r:.80}")
        _check_frac(name, frac, frac_bits_for_range(
            np.maximum(np.abs(st.minimum), np.abs(st.maximum)), vb), vb)
        spec = QSpec(vb, signed, frac)
    else:
        method = ctx.method_for(name)
        if "range" in cfg:
            rng = np.atleast_1d(np.asarray(cfg["range"], dtype=np.float64))
            if rng.shape not in ((1,), st.maximum.shape) or not np.all(np.isfinite(rng)) \
                    or np.any(rng < 0):
                raise QConfigError(f"q_config: layer {name!r}, key 'range': must be finite, "
                                   f">= 0, one value or one per channel "
                                   f"({len(st.maximum)}), got {cfg['range']!r:.80}")
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
            raise QConfigError(f"q_config: layer {name!r}, key 'window': must be [low, high] "
                               f"with one value or one per channel each, got "
                               f"{cfg['window']!r:.80}")
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
            raise QConfigError(f"q_config: layer {name!r}, key 'frac_bits': must be one integer "
                               f"or one per channel ({len(low)}), got {cfg['frac_bits']!r:.80}")
        _check_frac(name, frac, frac_bits_for_range(
            np.maximum(np.abs(low), np.abs(high)), bits - 1), bits - 1)
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


def activation_bits(node: GraphNode, ctx: BuildContext) -> int:
    """The total activation bits of ``node``'s output: its q-config/override value, else the
    default (``output_bits`` for a model output; at least 8 for the depthwise half of a split
    SeparableConv2D, whose output is never seen outside it; else ``activation_bits``)."""
    name = node.name
    if name in ctx.outputs:
        default = ctx.qparams.output_bits
    elif name.endswith(DW_SUFFIX) and node.cls is keras.layers.DepthwiseConv2D:
        default = max(8, ctx.qparams.activation_bits)  # inside a split SeparableConv2D
    else:
        default = ctx.qparams.activation_bits
    return ctx.override(name, "activation_bits", default)


def _output_spec(node: GraphNode, ctx: BuildContext, signed: bool):
    name = node.name
    bits = activation_bits(node, ctx)
    relu = ctx.fused.get(name)
    max_value = None
    if relu is not None and ctx.graph is not None:
        max_value = ctx.graph.node(relu).config.get("max_value")
        signed = False
    elif relu is not None:
        signed = False
    asym = ctx.override(name, "asymmetric", ctx.qparams.asymmetric_activations)
    if not isinstance(asym, bool):
        raise QConfigError(f"q_config: layer {name!r} asymmetric must be true or false, "
                         f"got {asym!r}")
    return _range_spec(name, ctx, signed, bits, max_value, asymmetric=asym), bits


def quantized_layer(node: GraphNode, kind: str, in_specs: list[QSpec], ctx: BuildContext):
    """``(layer, output_spec, pre)`` built by the node's registered op; ``pre`` holds an
    optional OutputQuantizer per input.

    Raises ``ValueError``/``KeyError`` when the node cannot be quantized (``quantize`` then
    stops before it).
    """
    spec = registry.for_node(node)
    if spec is None or spec.build is None:
        raise ValueError(f"{node.cls.__name__} is not supported")
    return spec.build(node, list(in_specs), ctx)


def set_weights(layer, node: GraphNode) -> None:
    """Copy the float weights of ``node`` into its freshly built quantized ``layer``; a
    weighted op's recorded weight clipping, bias deltas and integer kernel are replayed."""
    spec = registry.for_layer(layer)
    if spec is None or spec.set_weights is None:
        return
    spec.set_weights(layer, node)
    if spec.weighted and layer.qconfig:
        apply_recorded_bias_correction(layer, layer.qconfig)  # clipping, then bias deltas
        apply_recorded_rounding(layer, layer.qconfig)  # integers of the clipped kernel
