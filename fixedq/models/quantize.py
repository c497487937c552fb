"""``quantize(model, qparams, samples)``: float Keras model -> FixedPoint Keras model.

First :func:`resolve_plan` checks every argument, the q-config and the overrides against one
schema (:mod:`fixedq.models.qconfig_schema`) and turns every ``"auto"`` into a concrete choice
(a frozen :class:`QuantizePlan`); then the :data:`STAGES` run in order: prepare (Keras 3,
SmoothQuant) -> graph (sanitize, split SeparableConv2D, fold Rescaling) -> layer config (names,
model-output bit widths, ReLU fusion) -> calibrate (recorded ranges, then streamed calibration,
range alignment) -> build (quantized layers, a Dequantizer wherever quantized values meet float
layers) -> weight rounding -> bias correction. A bad user value is a ``ValueError`` (a
``QConfigError``) before any work; only an operation the registry does not have falls back.

Example:
    >>> import keras, numpy as np
    >>> from fixedq.models.quantize import quantize
    >>> x = keras.Input((4,), name="x")
    >>> model = keras.Model(x, keras.layers.Dense(3, name="fc")(x))
    >>> qmodel = quantize(model, samples=np.random.rand(16, 4).astype("float32"), verbose=False)
    >>> [type(layer).__name__ for layer in qmodel.layers]
    ['InputLayer', 'InputQuantizer', 'QuantizedDense', 'Dequantizer']
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field

import keras
import numpy as np
from keras import tree

from fixedq.layers.base import is_quantized_layer
from fixedq.layers.params import QuantizationParams
from fixedq.models import builders
from fixedq.models.bias_correction import BiasCorrection, clip_kernels, correct_biases
from fixedq.models.calibrate import RangeStats, calibrate
from fixedq.models.calibration_methods import AUTO_MSE_BITS, CalibrationMethod
from fixedq.models.qconfig_schema import (
    QCONFIG_FORMAT,
    QCONFIG_VERSION,
    QConfigError,
    check_activation_bits,
    validate_overrides,
    validate_qconfig,
)
from fixedq.models.range_alignment import align_ranges, apply_alignment
from fixedq.models.range_alignment import wanted as alignment_wanted
from fixedq.models.samples import DEFAULT_NUM_SAMPLES, iter_batches, random_samples, rereadable
from fixedq.models.streaming import calibrate_clips, is_streaming, streaming_quantize_options
from fixedq.models.weight_rounding import WeightRounding, optimize_rounding
from fixedq.ops import registry
from fixedq.transforms import sanitize
from fixedq.transforms.fold_rescaling import fold_rescaling
from fixedq.transforms.graph import (
    Graph,
    Ref,
    build_model,
    make_layer,
    pack_structure,
    read_graph,
)
from fixedq.transforms.smooth_quant import smooth_quant as smooth_quant_transform
from fixedq.transforms.split_attention import unsupported_reason as attention_reason
from fixedq.transforms.split_separable import split_separable

_METHOD_KEYS = set(CalibrationMethod.__dataclass_fields__)


def as_keras3(model):
    """``model`` as a Keras 3 model: live ``tf_keras`` models are converted, others rejected."""
    if isinstance(model, keras.Model):
        return model
    module = type(model).__module__
    if module.startswith("tf_keras") or module.startswith("keras.src.engine"):
        from fixedq.models.loading import from_tf_keras

        return from_tf_keras(model)
    raise TypeError(f"quantize expects a keras.Model (Keras 3) or a tf_keras.Model, got "
                    f"{module}.{type(model).__name__}")


def _check_not_quantized(model: keras.Model) -> None:
    for layer in model.layers:
        if is_quantized_layer(layer):
            raise ValueError(f"model {model.name!r} is already quantized (layer {layer.name!r} is "
                             f"a {type(layer).__name__}); quantize the float model instead")


def fused_relus(graph: Graph) -> dict[str, str]:
    """``{producer: relu}`` for ReLUs planned to fold into the op before them: each registered
    op declares the patterns that fuse into it (``OpSpec.fuses``: a ReLU right after it, or a
    ReLU after a max-pool after it). The plan holds only if the producer is really quantized:
    :func:`_build` keeps the ReLU as a layer when its producer falls back to float."""
    fused = {}
    for node in graph.nodes:
        spec = registry.for_node(node)
        if spec is None:
            continue
        for pattern in sorted(spec.fuses, key=len, reverse=True):
            nxt = node
            for kind in pattern:
                nxt = graph.sole_consumer(nxt.name)
                if nxt is None or builders.kind_of(nxt) != kind:
                    break
            else:
                fused[node.name] = nxt.name
                break
    return fused


def _check_config(q_config, graph: Graph) -> dict:
    """The q-config's layer entries (already checked against the schema) for ``graph``."""
    if q_config is None:
        return {}
    layers = q_config.get("layers", {})
    known = {n.name for n in graph.nodes}
    unknown = sorted(set(layers) - known)
    if unknown:
        raise QConfigError(f"q_config names layers that are not in the model: {unknown}")
    return layers


def _merge_overrides(layer_cfg: dict, overrides, graph: Graph) -> dict:
    """q-config entries with ``overrides`` (already checked against the schema) on top."""
    if overrides is None:
        return layer_cfg
    known = {n.name for n in graph.nodes}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise QConfigError(f"overrides name layers that are not in the model: {unknown}")
    merged = {name: dict(cfg) for name, cfg in layer_cfg.items()}
    for name, cfg in overrides.items():
        merged.setdefault(name, {}).update(cfg)
    return merged


def _output_names(graph: Graph, fused: dict[str, str]) -> set[str]:
    """Layers whose output is a model output (a fused output ReLU's producer included)."""
    outputs = {r.name for r in graph.outputs}
    for prod, relu in fused.items():
        if relu in outputs:
            outputs.add(prod)
    return outputs


def _check_against_graph(layer_cfg: dict, graph: Graph, fused: dict[str, str]) -> None:
    """What the schema alone cannot check: the activation range of model outputs, keys that
    only some layers take, calibration methods."""
    outputs = _output_names(graph, fused)
    input_name = graph.inputs[0].name
    for name, cfg in layer_cfg.items():
        where = "q_config"
        node = graph.node(name)
        if "activation_bits" in cfg:
            check_activation_bits(name, cfg["activation_bits"], name in outputs, where=where)
        kind = builders.kind_of(node)
        for key in ("weight_bits", "weight_rounding", "bias_delta", "weight_clip_std"):
            if key in cfg and kind not in ("neural", "unsupported"):
                raise QConfigError(f"{where}: layer {name!r}, key {key!r}: layer {name!r} "
                                   f"({node.cls.__name__}) has no weights, got {cfg[key]!r:.60}")
        if "state_bits" in cfg and kind != "recurrent":
            raise QConfigError(f"{where}: layer {name!r}, key 'state_bits': only "
                               f"StatefulRecurrent layers have an integer state; layer "
                               f"{name!r} is a {node.cls.__name__}, got {cfg['state_bits']!r:.60}")
        if "range_alignment" in cfg and name != input_name:
            raise QConfigError(f"{where}: layer {name!r}, key 'range_alignment': only the model "
                               f"input ({input_name!r}) records it")
        if "calibration_method" in cfg:
            try:
                CalibrationMethod.get(cfg["calibration_method"])
            except (TypeError, ValueError) as err:
                raise QConfigError(f"{where}: layer {name!r}, key 'calibration_method': {err}"
                                   ) from None


def _methods(calibration, graph: Graph) -> dict:
    """``{layer or "default": CalibrationMethod}`` from the ``calibration`` argument."""
    if calibration is None:
        return {}
    if isinstance(calibration, dict) and not (set(calibration) <= _METHOD_KEYS):
        known = {n.name for n in graph.nodes} | {"default"}
        unknown = sorted(set(calibration) - known)
        if unknown:
            raise ValueError(f"calibration names layers that are not in the model: {unknown}")
        return {name: CalibrationMethod.get(m) for name, m in calibration.items()}
    return {"default": CalibrationMethod.get(calibration)}


def _stats_from_config(layers: dict) -> dict[str, RangeStats]:
    stats = {}
    for name, cfg in layers.items():
        if isinstance(cfg, dict) and "calibration" in cfg:
            try:
                stats[name] = RangeStats.from_config(cfg["calibration"])
            except ValueError as err:
                raise ValueError(f"q_config layer {name!r}, key 'calibration': {err}") from None
    return stats


def _size_dependent(node) -> bool:
    """Its op's integer parameters depend on the spatial size (GAP's 1/(H*W) multiplier)."""
    spec = registry.for_node(node)
    return spec is not None and spec.size_dependent


def _call_inputs(node, ins: list):
    """The inputs as ``node``'s layer was called: a list when it was called with a list (merge
    layers, even of one tensor) or on several tensors, else the one tensor."""
    listed = bool(node.args) and isinstance(node.args[0], (list, tuple))
    return ins if listed or len(ins) > 1 else ins[0]


#: keras.ops that build a class token from a weight (broadcast to the batch, then concatenated).
_TOKEN_OPS = ("BroadcastTo", "Tile", "ZerosLike", "OnesLike", "Repeat", "GetItem", "Zeros",
              "Ones", "Full", "FullLike")


def _way_out(node, graph: Graph) -> str:
    """What to do about an unsupported node: an operation, a custom layer, or a
    MultiHeadAttention call that ``sanitize`` could not split."""
    if node.cls is keras.layers.MultiHeadAttention:
        why = attention_reason(node, graph)
        return (f" ({why}: MultiHeadAttention is quantized when it is a plain self- or "
                "cross-attention call, see docs/transformers.md)") if why else ""
    if node.cls.__name__ == "OperationLayer":
        op = node.config.get("operation", {}).get("class_name", "?")
        if op == "GetItem":
            return (" (only static strided slices of the non-batch axes are quantized, e.g. "
                    "x[:, 1:], x[..., :k], x[:, ::2, 0]; this key adds an axis (None), indexes "
                    "the batch axis, uses a tensor index or a dynamic axis)")
        token = ("; a class token prepended with keras.ops is fixedq.layers.ClassToken(), a "
                 "Keras layer that quantizes" if op in _TOKEN_OPS else "")
        return (f" (keras.ops {op} has no integer version: replace it by a supported layer, or "
                f"keep this part in float{token})")
    if not node.cls.__module__.startswith("keras."):
        return (" (a custom layer is one float operation to quantize: build its body from "
                "Keras layers and keras.ops in the functional model, e.g. a class token as "
                "fixedq.layers.ClassToken and position embeddings as x + embedding weights, so "
                "each part is quantized)")
    return ""


def _pin_dynamic_input(graph, samples, q_config) -> None:
    """Handle an input with dynamic dimensions (e.g. ``keras.Input((None, None, 3))``).

    A fully convolutional model stays dynamic: its quantized layers, the Keras model and the
    engine work at any size (calibration uses the samples' size). Where an integer parameter
    depends on the size (global average pooling's ``1/(H*W)``) or no samples give a size,
    the input is pinned to the samples' shape (with a warning), or a ``ValueError`` says what
    to do, before any calibration starts.
    """
    node = graph.node(graph.inputs[0].name)
    shape = tuple(node.output_shapes[0])
    dyn = [i for i, d in enumerate(shape) if i > 0 and d is None]
    if not dyn:
        return
    needs = [n.name for n in graph.nodes if _size_dependent(n)
             and any(d is None for d in (graph.input_shape(n) or ())[1:-1])]
    if not needs and (samples is not None or q_config is not None):
        return
    dims = " and ".join(str(i) for i in dyn)
    given = "(" + ", ".join(str(d) for d in shape[1:]) + (",)" if len(shape) == 2 else ")")
    sample_shape = getattr(samples, "shape", None)
    fixed = None
    if sample_shape is not None and len(sample_shape) == len(shape) \
            and all(isinstance(d, (int, np.integer)) for d in tuple(sample_shape)[1:]):
        fixed = tuple(int(d) for d in tuple(sample_shape)[1:])
    why = (f"layer(s) {', '.join(repr(n) for n in needs)} need a fixed size (their integer "
           "scale depends on it)" if needs else "no samples give a size to calibrate at")
    example = tuple(224 if d is None else d for d in shape[1:])
    if fixed is None or any(w is not None and w != g for w, g in zip(shape[1:], fixed,
                                                                      strict=True)):
        raise ValueError(f"input shape {given} has dynamic dimension{'s' if len(dyn) > 1 else ''}"
                         f" {dims} and {why}: build the model with a fixed input shape, e.g. "
                         f"keras.Input({example}), or pass the calibration samples as an array "
                         "of the size to quantize for")
    warnings.warn(f"quantize: input shape {given} has dynamic dimension"
                  f"{'s' if len(dyn) > 1 else ''} {dims} and {why}: the quantized model is "
                  f"built for the samples' shape {fixed}", stacklevel=4)
    node.output_shapes[0] = (shape[0], *fixed)


def quantize(model, qparams: QuantizationParams | None = None, samples=None,
             num_samples: int = DEFAULT_NUM_SAMPLES, batch_size: int | None = None,
             epochs: int = 1, q_config: dict | None = None, verbose: bool = True,
             calibration=None, overrides: dict | None = None,
             bias_correction="auto", smooth_quant=None,
             range_alignment="auto", weight_rounding="auto") -> keras.Model:
    """Quantize a float Keras model; the input model is never changed.

    Args:
        model: Keras 3 functional/Sequential model, or a live ``tf_keras.Model``.
        qparams: bit widths (default: 8-bit everything).
        samples: calibration data (NumPy array, ``tf.data.Dataset`` or generator). Without
            samples and without a q_config, 1024 random samples are used with a warning.
        num_samples, batch_size, epochs: how much calibration data to stream.
        q_config: a dict from :func:`fixedq.dump_config`; its per-layer bit widths and
            calibration ranges are used (so no samples are needed), reproducing the model bit
            for bit; edit a layer's ``weight_bits``/``activation_bits`` to change only it.
        verbose: progress on stderr.
        calibration: the calibration method for every layer (a name such as ``"mse"``, a
            :class:`~fixedq.models.calibration_methods.CalibrationMethod` or its dict), or a
            dict ``{layer_name: method, "default": method}`` for per-layer methods. ``None``
            (default): ``"mse"`` for tensors of 4 bits or less, ``"max"`` for wider ones
            (:func:`~fixedq.models.calibration_methods.auto_method`); a layer a dict does not
            name, without a ``"default"`` key, gets the same.
        overrides: manual mixed precision and tensor overrides, ``{layer_name: {key: value}}``
            with keys ``weight_bits``, ``activation_bits``, ``per_tensor``, ``frac_bits``,
            ``range`` and ``calibration_method``; they win over ``q_config`` entries. See
            :func:`fixedq.models.overrides.mixed_precision` for TIDL-style name lists.
        bias_correction: ``True``, a dict or a
            :class:`~fixedq.models.bias_correction.BiasCorrection` to compensate the mean
            output shift of quantization on calibration frames (needs samples); ``False`` or
            ``None`` for none. The default ``"auto"`` corrects when any weight or activation
            width is 4 bits or less and real samples were given; never with a ``q_config``
            (it is replayed as recorded; pass ``True`` to correct on top of it) nor with a
            one-shot generator (calibration consumes it; a warning says so).
        smooth_quant: ``alpha`` (0..1) or ``{"alpha": a, "layers": [...]}``: apply
            :func:`fixedq.transforms.smooth_quant.smooth_quant` to the float model first
            (needs samples).
        range_alignment: ``True`` to rescale activation channels (function-preserving) so
            that each calibrated range fills its power-of-two grid
            (:mod:`fixedq.models.range_alignment`); ``False`` for none. The default
            ``"auto"`` aligns when ``activation_bits <= 4`` with per-axis activations. With a
            ``q_config`` the alignment recorded in it is re-applied and this is ignored.
        weight_rounding: ``True``, a method name (``"gptq"``, ``"local"``), a dict or a
            :class:`~fixedq.models.weight_rounding.WeightRounding` to choose the integer
            weights of layers with ``weight_bits <= max_bits`` (4) that minimize each layer's
            output error on calibration frames instead of rounding each weight to nearest
            (needs samples); ``False`` or ``None`` for nearest rounding. The default ``"auto"``
            optimizes when ``weight_bits`` or ``input_weight_bits`` is 4 or less and at least
            :data:`MIN_AUTO_FRAMES` real samples were given; never with a ``q_config`` (its
            recorded integers are replayed) nor with a one-shot generator.

    Returns:
        A new Keras model made of fixedq quantized layers.
    """
    if isinstance(model, keras.Model) and is_streaming(model):  # samples are clips
        bias_correction, weight_rounding = streaming_quantize_options(bias_correction,
                                                                      weight_rounding)
    plan = resolve_plan(qparams, samples, q_config, overrides, bias_correction, smooth_quant,
                        range_alignment, weight_rounding)
    run = _Run(plan, model, samples, num_samples, batch_size, epochs, verbose, calibration)
    for stage in STAGES:
        stage(run)
    return run.qmodel


@dataclass(frozen=True)
class QuantizePlan:
    """Every choice of one ``quantize`` call, resolved and validated before any work.

    Each ``"auto"`` argument is a concrete choice here (``None`` = the stage does nothing);
    the q-config and overrides have been checked against the schema
    (:mod:`fixedq.models.qconfig_schema`). Only two choices still depend on the data: the
    random calibration samples used when none are given, and ``min_rounding_frames`` (under
    ``weight_rounding="auto"``, fewer samples skip the rounding with a warning).
    """

    qparams: QuantizationParams
    q_config: dict | None
    overrides: dict | None
    smooth_quant: dict | None  # options of transforms.smooth_quant, or None
    align: bool  # compute a new range alignment (never with a q-config: it is replayed)
    rounding: WeightRounding | None
    min_rounding_frames: int  # weight rounding is skipped under this many frames
    correction: BiasCorrection | None
    one_shot: bool  # the samples are a generator/iterator (read once, by calibration)


def resolve_plan(qparams, samples, q_config, overrides, bias_correction, smooth_quant,
                 range_alignment, weight_rounding) -> QuantizePlan:
    """Validate every argument and resolve every ``"auto"`` of :func:`quantize`."""
    if q_config is not None:
        validate_qconfig(q_config)
    validate_overrides(overrides)
    if qparams is None:
        qparams = QuantizationParams()
    if q_config is not None and "qparams" in q_config:
        try:
            qparams = QuantizationParams.from_dict(q_config["qparams"])
        except (TypeError, ValueError) as err:
            raise QConfigError(f"q_config: key 'qparams': {err}") from None
    if not isinstance(qparams, QuantizationParams):
        raise TypeError(f"qparams must be a QuantizationParams, got {type(qparams).__name__}")
    align = alignment_wanted(range_alignment, qparams)  # validates the argument
    rounding = WeightRounding.get(weight_rounding, qparams)  # validates the argument
    auto_rounding = isinstance(weight_rounding, str) and weight_rounding == "auto"
    if auto_rounding:
        if samples is None:
            rounding = None
    elif rounding is not None and samples is None:
        raise ValueError("weight_rounding needs calibration samples (samples=...)")
    # "auto" bias correction / weight rounding never add to a q-config (it is replayed as
    # recorded) and need samples that can be read again after calibration
    auto = isinstance(bias_correction, str) and bias_correction == "auto"
    correction = BiasCorrection.get(bias_correction, qparams)
    one_shot = samples is not None and _one_shot(samples)
    if one_shot and ((correction is not None and not auto)
                     or (rounding is not None and not auto_rounding)):
        raise ValueError("bias_correction / weight_rounding read the samples again after "
                         "calibration: pass an array or a tf.data.Dataset, not a one-shot "
                         "generator or iterator")
    if one_shot and q_config is None and (correction is not None or rounding is not None):
        warnings.warn("quantize: the samples are a one-shot generator/iterator, consumed by "
                      "calibration: bias correction and weight rounding are skipped. Pass an "
                      "array or a tf.data.Dataset to use them.", stacklevel=3)
    options = None
    if smooth_quant is not None:
        if samples is None:
            raise ValueError("smooth_quant needs calibration samples (samples=...)")
        options = smooth_quant if isinstance(smooth_quant, dict) else {"alpha": smooth_quant}
    if auto and (samples is None or q_config is not None or one_shot):
        correction = None
    if auto_rounding and (q_config is not None or one_shot):
        rounding = None
    return QuantizePlan(qparams=qparams, q_config=q_config, overrides=overrides,
                        smooth_quant=options, align=align and q_config is None,
                        rounding=rounding,
                        min_rounding_frames=MIN_AUTO_FRAMES if auto_rounding else 0,
                        correction=correction, one_shot=one_shot)


@dataclass
class _Run:
    """What the stages of one ``quantize`` call hand to each other."""

    plan: QuantizePlan
    model: object  # the user's model, then its Keras 3 (and SmoothQuant-ed) version
    samples: object
    num_samples: int
    batch_size: int | None
    epochs: int
    verbose: bool
    calibration: object
    graph: Graph | None = None
    layer_cfg: dict = field(default_factory=dict)
    methods: dict = field(default_factory=dict)
    fused: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    alignment: dict | None = None
    qmodel: keras.Model | None = None


def stage_prepare(run: _Run) -> None:
    """Keras 3 model, not yet quantized; SmoothQuant when asked (it reads the samples)."""
    model = as_keras3(run.model)
    _check_not_quantized(model)
    if run.plan.smooth_quant is not None:
        model, _ = smooth_quant_transform(model, run.samples, batch_size=run.batch_size,
                                          **run.plan.smooth_quant)
    run.model = model


def stage_graph(run: _Run) -> None:
    """Sanitize, read the graph, pin a dynamic input, split SeparableConv2D, fold Rescaling."""
    model = run.model
    sanitized, _ = sanitize(model)
    graph = read_graph(sanitized)
    if len(graph.inputs) != 1:
        raise ValueError(f"quantize supports models with one input; {model.name!r} has "
                         f"{len(graph.inputs)}")
    _pin_dynamic_input(graph, run.samples, run.plan.q_config)
    split_separable(graph)
    fold_rescaling(graph)
    run.graph = graph


def stage_layer_config(run: _Run) -> None:
    """Per-layer settings (q-config + overrides) checked against the graph; ReLU fusion."""
    graph = run.graph
    run.layer_cfg = _merge_overrides(_check_config(run.plan.q_config, graph),
                                     run.plan.overrides, graph)
    run.methods = _methods(run.calibration, graph)
    if not rereadable(run.samples) and "default" not in run.methods:
        # auto_method's histograms need a second pass over the samples: max for the layers
        # no method was given for
        run.methods = {**run.methods, "default": CalibrationMethod()}
        if run.plan.qparams.activation_bits <= AUTO_MSE_BITS and run.plan.q_config is None:
            warnings.warn("quantize: the samples can be read only once (a generator, a list "
                          "of batches, a PyDataset): tensors of 4 bits or less are calibrated "
                          "by max instead of mse. Pass a NumPy array or a tf.data.Dataset for "
                          "mse.", stacklevel=3)
    run.fused = fused_relus(graph)
    _check_against_graph(run.layer_cfg, graph, run.fused)


def stage_calibrate(run: _Run) -> None:
    """Recorded ranges (q-config) first, then calibration of what is still needed; a recorded
    range alignment is re-applied, a new one computed when the plan says so."""
    graph, layer_cfg, methods, plan = run.graph, run.layer_cfg, run.methods, run.plan
    points = [n.name for n in graph.nodes if builders.kind_of(n) in builders.REQUANTIZING]
    input_name = graph.inputs[0].name
    alignment = layer_cfg.get(input_name, {}).get("range_alignment")
    if alignment is not None:  # recorded in the q-config: its stats are of the aligned model
        apply_alignment(graph, alignment)
    stats = _stats_from_config(layer_cfg)
    probe_ctx = builders.BuildContext(plan.qparams, stats, layer_cfg, set(),
                                      _output_names(graph, run.fused), run.fused, graph, methods)

    def needs_hist(name):
        cfg = layer_cfg.get(name, {})
        return (probe_ctx.method_for(name).needs_histogram and "range" not in cfg
                and "frac_bits" not in cfg and "window" not in cfg)

    histograms = any(needs_hist(p) for p in points + [input_name])
    needed = [p for p in points + [input_name]
              if p not in stats or (needs_hist(p) and stats[p].hist_pos is None)]
    if needed:
        float_model = build_model(graph)
        if run.samples is None:
            first = graph.nodes[1] if len(graph.nodes) > 1 else None
            uint8_like = first is not None and first.cls is keras.layers.Rescaling
            warnings.warn("quantize: no calibration samples given; calibrating on "
                          f"{run.num_samples} random samples. Accuracy will suffer: pass real "
                          "samples.", stacklevel=3)
            run.samples = random_samples(float_model.inputs[0].shape, run.num_samples,
                                         uint8_like)
        # the explicit methods' bins, and the default 1024 for layers auto_method serves
        wanted = [m.bins for m in methods.values() if m.needs_histogram]
        bins = max(wanted + ([] if "default" in methods else [CalibrationMethod().bins]),
                   default=CalibrationMethod().bins)
        measure = calibrate_clips if is_streaming(float_model) else calibrate
        stats.update(measure(float_model, run.samples, [p for p in needed if p in points],
                             run.num_samples, run.batch_size, run.epochs, run.verbose,
                             histograms, bins))
    if alignment is None and plan.align:
        alignment = align_ranges(graph, stats, probe_ctx, run.fused) or None
    run.stats, run.alignment = stats, alignment


def stage_build(run: _Run) -> None:
    """The functional model of quantized layers (a Dequantizer where float layers start)."""
    qmodel = _build(run.graph, run.plan.qparams, run.stats, run.fused, run.layer_cfg,
                    run.model.name, run.methods)
    if run.alignment is not None:
        input_name = run.graph.inputs[0].name
        qmodel.get_layer(f"{input_name}_quantizer").qconfig["range_alignment"] = run.alignment
    run.qmodel = qmodel


def stage_weight_rounding(run: _Run) -> None:
    """Optimized integer weights of low-bit layers (weight clipping first, if asked)."""
    rounding, correction = run.plan.rounding, run.plan.correction
    if rounding is None:
        return
    if correction is not None and correction.weight_clip_std is not None:
        clip_kernels(run.qmodel, correction.weight_clip_std)  # clip first, then round
    frames = _frames(run.samples, run.qmodel, rounding.frames, run.batch_size)
    if len(frames) < run.plan.min_rounding_frames:
        warnings.warn(f"quantize: weight rounding skipped: {len(frames)} calibration "
                      f"samples (under {MIN_AUTO_FRAMES} it fits the samples, not the "
                      "data); pass more samples or weight_rounding=True", stacklevel=3)
        return
    optimize_rounding(run.qmodel, frames, rounding, run.verbose, build_model(run.graph))


def stage_bias_correction(run: _Run) -> None:
    """Compensate the mean output shift of quantization on calibration frames."""
    correction = run.plan.correction
    if correction is None:
        return
    if run.samples is None:
        raise ValueError("bias_correction needs calibration samples (samples=...)")
    correct_biases(build_model(run.graph), run.qmodel,
                   _frames(run.samples, run.qmodel, correction.frames, run.batch_size),
                   correction, run.verbose)


#: The stages of :func:`quantize`, in order; each reads and fills the shared ``_Run``.
STAGES = (stage_prepare, stage_graph, stage_layer_config, stage_calibrate, stage_build,
          stage_weight_rounding, stage_bias_correction)


#: Under ``weight_rounding="auto"``, fewer calibration samples than this skip the rounding
#: (with a warning): on 1-2 samples it overfits them and lowers accuracy.
MIN_AUTO_FRAMES = 16


def _one_shot(samples) -> bool:
    """Whether ``samples`` can be read only once (a generator or iterator)."""
    try:
        return iter(samples) is samples
    except TypeError:
        return False


def _frames(samples, qmodel: keras.Model, count: int, batch_size) -> np.ndarray:
    """The first ``count`` calibration samples as one array."""
    return np.concatenate(list(itertools.islice(
        iter_batches(samples, qmodel.inputs[0].shape, count, batch_size), count)))[:count]


def _first_neural(graph: Graph) -> set[str]:
    """Neural layers with no neural layer before them (they get ``input_weight_bits``)."""
    has_neural_before: dict[str, bool] = {}
    first = set()
    for node in graph.nodes:
        before = any(has_neural_before.get(r.name, False) for r in node.refs)
        is_neural = builders.kind_of(node) == "neural"
        if is_neural and not before:
            first.add(node.name)
        has_neural_before[node.name] = before or is_neural
    return first


def _build(graph: Graph, qp: QuantizationParams, stats, fused, layer_cfg, name,
           methods=None) -> keras.Model:
    values: dict[str, tuple] = {}  # node name -> (tensor, QSpec or None for float)
    dequantized: dict[str, object] = {}
    relu_of = {relu: prod for prod, relu in fused.items()}
    firsts = _first_neural(graph)
    outputs = _output_names(graph, fused)
    ctx = builders.BuildContext(qp, stats, layer_cfg, firsts, outputs, fused, graph, methods)

    def as_float(ref_name):
        tensor, spec = values[ref_name]
        if spec is None:
            return tensor
        if ref_name not in dequantized:
            dq = builders.dequantizer(ref_name)
            dequantized[ref_name] = dq(tensor)
        return dequantized[ref_name]

    for node in graph.nodes:
        if node.is_input:
            x = keras.Input(batch_shape=node.output_shapes[0], dtype=node.dtype, name=node.name)
            layer, spec = builders.input_quantizer(node, ctx)
            values[node.name] = (layer(x), spec)
            values["__input__"] = (x, None)
            continue
        if node.name in relu_of and values[relu_of[node.name]][1] is not None:
            # fused into its quantized producer (or the max-pool after it); when the producer
            # fell back to float, the ReLU is built below like any other layer
            values[node.name] = values[node.refs[0].name]
            continue
        refs = node.refs
        in_specs = [values[r.name][1] for r in refs]
        kind = builders.kind_of(node)
        reason = None
        if kind == "unsupported":
            spec = registry.for_float(node.cls)  # a known layer with a setting it cannot take
            why = spec.reason(node) if spec is not None else None
            reason = f"{node.cls.__name__} is not supported" + (f" with {why}" if why else "")
            reason += _way_out(node, graph) if spec is None else ""
        elif any(s is None for s in in_specs):
            reason = None  # already float upstream: stay float silently
        else:
            try:
                layer, spec, pre = builders.quantized_layer(node, kind, in_specs, ctx)
            except QConfigError:
                raise  # a bad user value is an error, never a fallback (DESIGN decision 6)
            except (ValueError, KeyError) as err:
                reason = str(err)
            else:
                ins = [values[r.name][0] for r in refs]
                ins = [q(t) if q is not None else t for q, t in zip(pre, ins, strict=True)]
                out = layer(_call_inputs(node, ins))
                builders.set_weights(layer, node)
                values[node.name] = (out, spec)
                continue
        if reason is not None and all(s is not None for s in in_specs):
            warnings.warn(f"quantize: quantization stops before layer {node.name!r} "
                          f"({node.cls.__name__}): {reason}; a Dequantizer is inserted and the "
                          "layer runs in float", stacklevel=4)
        layer = make_layer(node)

        def filled(x):  # the float layer is called as in the float model (MultiHeadAttention)
            return as_float(x.name) if isinstance(x, Ref) else x

        out = layer(*tree.map_structure(filled, node.args),
                    **tree.map_structure(filled, node.kwargs))
        if node.weights:
            layer.set_weights([w for _, w in node.weights])
        values[node.name] = (out, None)

    outs = [as_float(r.name) for r in graph.outputs]
    inp = values["__input__"][0]
    return keras.Model(inp, pack_structure(graph.output_structure, outs), name=f"{name}_quantized")


def dump_config(qmodel: keras.Model) -> dict:
    """JSON-able q-config of a quantized model: qparams, per-layer bits and calibration ranges.

    ``quantize(float_model, q_config=dump_config(qmodel))`` rebuilds ``qmodel`` bit for bit;
    editing one layer's ``weight_bits``/``activation_bits`` changes only that layer (its
    frac_bits are derived again from the stored ranges).

    Example:
        >>> cfg = dump_config(qmodel)  # doctest: +SKIP
        >>> cfg["layers"]["conv1"]["weight_bits"] = 4  # doctest: +SKIP
    """
    if not isinstance(qmodel, keras.Model):
        raise TypeError(f"dump_config expects a quantized keras.Model, got {type(qmodel).__name__}")
    qparams, layers = None, {}
    for layer in qmodel.layers:
        entry = getattr(layer, "qconfig", None)
        if not entry:
            continue
        entry = dict(entry)
        qparams = entry.pop("qparams", qparams)
        layers[entry.pop("layer")] = entry
    if not layers or qparams is None:
        raise ValueError(f"model {qmodel.name!r} is not a fixedq quantized model (no q-config "
                         "in its layers)")
    return {"format": QCONFIG_FORMAT, "version": QCONFIG_VERSION, "qparams": qparams,
            "layers": layers}
