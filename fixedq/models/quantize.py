"""``quantize(model, qparams, samples)``: float Keras model -> FixedPoint Keras model.

Steps: sanitize -> split SeparableConv2D -> plan (what is quantized, which ReLUs fuse into the
layer before them) -> calibrate (per-channel ranges, streamed) -> build a new functional model of
quantized layers, with a Dequantizer wherever quantized values meet float layers.

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

import keras
import numpy as np

from fixedq.layers.params import QuantizationParams
from fixedq.models import builders
from fixedq.models.bias_correction import BiasCorrection, clip_kernels, correct_biases
from fixedq.models.calibrate import RangeStats, calibrate
from fixedq.models.calibration_methods import CalibrationMethod
from fixedq.models.fold_rescaling import fold_rescaling
from fixedq.models.range_alignment import align_ranges, apply_alignment
from fixedq.models.range_alignment import wanted as alignment_wanted
from fixedq.models.samples import DEFAULT_NUM_SAMPLES, iter_batches, random_samples
from fixedq.models.split_separable import split_separable
from fixedq.models.weight_rounding import WeightRounding, optimize_rounding
from fixedq.ops import registry
from fixedq.transforms import sanitize
from fixedq.transforms.graph import (
    Graph,
    build_model,
    make_layer,
    pack_structure,
    read_graph,
)
from fixedq.transforms.smooth_quant import smooth_quant as smooth_quant_transform

QCONFIG_FORMAT = "fixedq-qconfig"
QCONFIG_VERSION = 1
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
        if type(layer).__module__.startswith("fixedq.layers") and (
                type(layer).__name__.startswith("Quantized")
                or type(layer).__name__ in ("InputQuantizer", "OutputQuantizer", "Dequantizer")):
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
    if q_config is None:
        return {}
    if not isinstance(q_config, dict) or q_config.get("format") != QCONFIG_FORMAT:
        raise ValueError(f"q_config must be a dict made by dump_config (format "
                         f"{QCONFIG_FORMAT!r}), got {str(q_config)[:80]!r}")
    layers = q_config.get("layers", {})
    known = {n.name for n in graph.nodes}
    unknown = sorted(set(layers) - known)
    if unknown:
        raise ValueError(f"q_config names layers that are not in the model: {unknown}")
    return layers


_OVERRIDE_KEYS = {"weight_bits", "activation_bits", "per_tensor", "frac_bits", "range",
                  "calibration_method", "asymmetric", "window"}


def _merge_overrides(layer_cfg: dict, overrides, graph: Graph) -> dict:
    if overrides is None:
        return layer_cfg
    if not isinstance(overrides, dict):
        raise TypeError(f"overrides must be a dict {{layer_name: {{key: value}}}}, got "
                        f"{type(overrides).__name__}")
    known = {n.name for n in graph.nodes}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"overrides name layers that are not in the model: {unknown}")
    merged = {name: dict(cfg) for name, cfg in layer_cfg.items()}
    for name, cfg in overrides.items():
        bad = sorted(set(cfg) - _OVERRIDE_KEYS)
        if bad:
            raise ValueError(f"overrides for layer {name!r}: unknown keys {bad}; allowed "
                             f"{sorted(_OVERRIDE_KEYS)}")
        if not isinstance(cfg.get("asymmetric", False), bool):
            raise ValueError(f"overrides for layer {name!r}: asymmetric must be true or false, "
                             f"got {cfg['asymmetric']!r}")
        merged.setdefault(name, {}).update(cfg)
    return merged


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


#: Kinds whose integer parameters depend on the spatial size (GAP's 1/(H*W) multiplier).
_SIZE_DEPENDENT = ("gap",)


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
    needs = [n.name for n in graph.nodes if builders.kind_of(n) in _SIZE_DEPENDENT
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
                  f"built for the samples' shape {fixed}", stacklevel=3)
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
            dict ``{layer_name: method, "default": method}`` for per-layer methods.
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
    if qparams is None:
        qparams = QuantizationParams()
    if q_config is not None and isinstance(q_config, dict) and "qparams" in q_config:
        qparams = QuantizationParams.from_dict(q_config["qparams"])
    if not isinstance(qparams, QuantizationParams):
        raise TypeError(f"qparams must be a QuantizationParams, got {type(qparams).__name__}")
    align = alignment_wanted(range_alignment, qparams)  # validates the argument
    rounding = WeightRounding.get(weight_rounding, qparams)  # validates the argument
    if isinstance(weight_rounding, str) and weight_rounding == "auto":
        if samples is None:
            rounding = None
    elif rounding is not None and samples is None:
        raise ValueError("weight_rounding needs calibration samples (samples=...)")
    model = as_keras3(model)
    _check_not_quantized(model)
    samples_given = samples
    # "auto" bias correction / weight rounding never add to a q-config (it is replayed as
    # recorded) and need samples that can be read again after calibration
    auto = isinstance(bias_correction, str) and bias_correction == "auto"
    correction = BiasCorrection.get(bias_correction, qparams)
    auto_rounding = isinstance(weight_rounding, str) and weight_rounding == "auto"
    one_shot = samples is not None and _one_shot(samples)
    if one_shot and ((correction is not None and not auto)
                     or (rounding is not None and not auto_rounding)):
        raise ValueError("bias_correction / weight_rounding read the samples again after "
                         "calibration: pass an array or a tf.data.Dataset, not a one-shot "
                         "generator or iterator")
    if one_shot and q_config is None and (correction is not None or rounding is not None):
        warnings.warn("quantize: the samples are a one-shot generator/iterator, consumed by "
                      "calibration: bias correction and weight rounding are skipped. Pass an "
                      "array or a tf.data.Dataset to use them.", stacklevel=2)
    if smooth_quant is not None:
        if samples is None:
            raise ValueError("smooth_quant needs calibration samples (samples=...)")
        options = smooth_quant if isinstance(smooth_quant, dict) else {"alpha": smooth_quant}
        model, _ = smooth_quant_transform(model, samples, batch_size=batch_size, **options)
    sanitized, _ = sanitize(model)
    graph = read_graph(sanitized)
    if len(graph.inputs) != 1:
        raise ValueError(f"quantize supports models with one input; {model.name!r} has "
                         f"{len(graph.inputs)}")
    _pin_dynamic_input(graph, samples, q_config)
    split_separable(graph)
    fold_rescaling(graph)
    layer_cfg = _merge_overrides(_check_config(q_config, graph), overrides, graph)
    methods = _methods(calibration, graph)
    fused = fused_relus(graph)
    points = [n.name for n in graph.nodes if builders.kind_of(n) in builders.REQUANTIZING]
    input_name = graph.inputs[0].name
    alignment = layer_cfg.get(input_name, {}).get("range_alignment")
    if alignment is not None:  # recorded in the q-config: its stats are of the aligned model
        apply_alignment(graph, alignment)
    stats = _stats_from_config(layer_cfg)
    probe_ctx = builders.BuildContext(qparams, stats, layer_cfg, set(), set(), fused, graph,
                                      methods)

    def needs_hist(name):
        cfg = layer_cfg.get(name, {})
        return (probe_ctx.method_for(name).needs_histogram and "range" not in cfg
                and "frac_bits" not in cfg and "window" not in cfg)

    histograms = any(needs_hist(p) for p in points + [input_name])
    needed = [p for p in points + [input_name]
              if p not in stats or (needs_hist(p) and stats[p].hist_pos is None)]
    if needed:
        float_model = build_model(graph)
        if samples is None:
            first = graph.nodes[1] if len(graph.nodes) > 1 else None
            uint8_like = first is not None and first.cls is keras.layers.Rescaling
            warnings.warn("quantize: no calibration samples given; calibrating on "
                          f"{num_samples} random samples. Accuracy will suffer: pass real "
                          "samples.", stacklevel=2)
            samples = random_samples(float_model.inputs[0].shape, num_samples, uint8_like)
        bins = max(m.bins for m in methods.values()) if methods else 1024
        stats.update(calibrate(float_model, samples, [p for p in needed if p in points],
                               num_samples, batch_size, epochs, verbose, histograms, bins))
    if q_config is None and alignment is None and align:
        alignment = align_ranges(graph, stats, probe_ctx, fused) or None
    if auto and (samples_given is None or q_config is not None or one_shot):
        correction = None
    if auto_rounding and (q_config is not None or one_shot):
        rounding = None
    qmodel = _build(graph, qparams, stats, fused, layer_cfg, model.name, methods)
    if alignment is not None:
        qmodel.get_layer(f"{input_name}_quantizer").qconfig["range_alignment"] = alignment
    if rounding is not None:
        if correction is not None and correction.weight_clip_std is not None:
            clip_kernels(qmodel, correction.weight_clip_std)  # clip first, then round
        frames = _frames(samples, qmodel, rounding.frames, batch_size)
        if auto_rounding and len(frames) < MIN_AUTO_FRAMES:
            warnings.warn(f"quantize: weight rounding skipped: {len(frames)} calibration "
                          f"samples (under {MIN_AUTO_FRAMES} it fits the samples, not the "
                          "data); pass more samples or weight_rounding=True", stacklevel=2)
        else:
            optimize_rounding(qmodel, frames, rounding, verbose, build_model(graph))
    if correction is not None:
        if samples is None:
            raise ValueError("bias_correction needs calibration samples (samples=...)")
        correct_biases(build_model(graph), qmodel,
                       _frames(samples, qmodel, correction.frames, batch_size), correction,
                       verbose)
    return qmodel


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
    outputs = {r.name for r in graph.outputs}
    for relu, prod in relu_of.items():
        if relu in outputs:
            outputs.add(prod)
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
            reason = f"{node.cls.__name__} is not supported"
        elif any(s is None for s in in_specs):
            reason = None  # already float upstream: stay float silently
        else:
            try:
                layer, spec, pre = builders.quantized_layer(node, kind, in_specs, ctx)
            except (ValueError, KeyError) as err:
                reason = str(err)
            else:
                ins = [values[r.name][0] for r in refs]
                ins = [q(t) if q is not None else t for q, t in zip(pre, ins, strict=True)]
                out = layer(ins if len(ins) > 1 or kind == "add" else ins[0])
                builders.set_weights(layer, node)
                values[node.name] = (out, spec)
                continue
        if reason is not None and all(s is not None for s in in_specs):
            warnings.warn(f"quantize: quantization stops before layer {node.name!r} "
                          f"({node.cls.__name__}): {reason}; a Dequantizer is inserted and the "
                          "layer runs in float", stacklevel=3)
        layer = make_layer(node)
        ins = [as_float(r.name) for r in refs]
        out = layer(ins if len(ins) > 1 or node.cls in (keras.layers.Add,
                                                       keras.layers.Concatenate) else ins[0])
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
