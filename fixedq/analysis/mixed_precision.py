"""Automatic mixed precision: choose per-layer bit widths by editing the q-config only.

Two searches, both returning a :class:`MixedPrecisionResult` whose ``q_config`` rebuilds the
chosen model with ``fixedq.quantize(model, q_config=result.q_config)`` (no samples needed), and
whose ``trials`` log every model tried (bits per layer, metric, cost, time).

**Accuracy budget** (:func:`search_accuracy_budget`, seed 003 "full_auto"). Activations keep
their bits (8 by default); each layer's weights are either ``low_bits`` (4) or ``high_bits``
(8). The search finds the smallest set of layers whose weights must stay at ``high_bits`` so
that ``metric(qmodel) >= metric(all high) - accuracy_tolerance``:

1. trial "all 8-bit" gives the reference metric; trial "all 4-bit" the worst case (if it is
   already within tolerance, the search stops there);
2. the layers with weights are ranked statically (:func:`rank_layers`): by total number of
   weights (descending), ties broken by weights per output channel (ascending), then by
   execution order (later first). The *lowest*-ranked layers (the smallest ones, cheap to keep
   at 8 bits) are the first candidates to stay at 8 bits;
3. bisection over ``k``, the number of candidates kept at 8 bits (the rest at 4): each trial
   halves the interval between a ``k`` that fails and one that passes, assuming the metric
   improves as ``k`` grows. ``ceil(log2(n))`` trials for ``n`` layers.

``metric`` is any function ``metric(qmodel) -> float``, higher is better (e.g. accuracy in %,
with ``accuracy_tolerance`` in the same unit: 1.0 = one point); for a loss, return its negative.

**Cost budget** (:func:`search_cost_budget`, seed 001 "mixed_precision_factor"). Start from the
model as quantized (8 bits), and move the most sensitive layers to ``high_bits`` (16) weights and
output activations while the cost stays within ``cost_ratio`` times the all-8-bit cost. The cost
model is **bit-operations** (:func:`bit_operations`)::

    cost = sum over layers with weights of  MACs x weight_bits x input_activation_bits

with ``MACs = output elements x fan_in`` (products summed into one output value) and the input
bits those of the integers the layer multiplies (sign included). Layers without weights (adds,
pools) are not counted. Promoting a layer's output to 16 bits therefore also raises the cost of
the layers that read it. Sensitivity is either ``"snr"`` (one :func:`~fixedq.analysis.inspect`
of the 8-bit model: the noise a layer *adds*, i.e. the noise-to-signal ratio of its output minus
that of its input, ``NSR = 10^(-SNR/10)``) or ``"metric"`` (one trial per layer: the metric
gained when that layer alone goes to 16 bits). Layers are taken greedily by decreasing
sensitivity; a layer that would break the budget is skipped and the next one is tried.

Long searches print one progress line per trial on stderr (``verbose=False`` hides them).
Ctrl-C (``KeyboardInterrupt``, also when raised by the metric) stops the search and raises
:class:`MixedPrecisionInterrupted`, a ``KeyboardInterrupt`` carrying the partial result in
``.result``; with ``log_path`` the trial log is written to JSON after every trial and on
interruption. A metric that raises becomes a :class:`MetricError` naming the metric and trial.

Example:
    >>> from fixedq.analysis.mixed_precision import search_accuracy_budget
    >>> def accuracy(qmodel):
    ...     return 100 * np.mean(qmodel.predict(x_test).argmax(-1) == y_test)
    >>> result = search_accuracy_budget(model, accuracy, samples=x_train[:512],
    ...                                 accuracy_tolerance=1.0)  # doctest: +SKIP
    >>> print(result.format_table())  # doctest: +SKIP
    >>> qmodel = fixedq.quantize(model, q_config=result.q_config)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np

from fixedq.io import atomic_open
from fixedq.layers.neural import QuantizedNeuralLayer
from fixedq.models.calibration_methods import CalibrationMethod

__all__ = ["LayerInfo", "MetricError", "MixedPrecisionInterrupted", "MixedPrecisionResult",
           "Trial", "bit_operations", "rank_layers", "search_accuracy_budget",
           "search_cost_budget"]


class MetricError(RuntimeError):
    """The user's metric raised or returned something that is not a finite number."""


class MixedPrecisionInterrupted(KeyboardInterrupt):
    """Ctrl-C during a search; ``.result`` holds the trials done so far (``interrupted``)."""

    def __init__(self, result: MixedPrecisionResult):
        super().__init__(f"mixed-precision search interrupted after {len(result.trials)} "
                         "trial(s)")
        self.result = result


@dataclass(frozen=True)
class LayerInfo:
    """Static facts about a layer with weights, used for ranking and cost."""

    name: str
    type: str
    order: int  # execution order among the layers with weights
    weights: int  # total number of kernel weights
    weights_per_channel: int
    macs: int  # multiply-accumulates per sample


@dataclass
class Trial:
    """One model tried by a search."""

    index: int
    label: str
    weight_bits: dict[str, int]
    activation_bits: dict[str, int]
    metric: float | None
    ok: bool | None  # within tolerance / budget (None when not judged)
    cost_ratio: float | None
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MixedPrecisionResult:
    """Outcome of a search: the chosen q-config and the log of every trial."""

    mode: str  # "accuracy" or "cost"
    q_config: dict | None
    weight_bits: dict[str, int]
    activation_bits: dict[str, int]
    reference_metric: float | None
    metric: float | None
    cost_ratio: float | None
    low_bit_weight_fraction: float | None
    ranking: list[str]
    trials: list[Trial]
    settings: dict = field(default_factory=dict)
    interrupted: bool = False
    seconds: float = 0.0

    def to_dict(self, with_config: bool = False) -> dict:
        d = {"mode": self.mode, "interrupted": self.interrupted, "settings": self.settings,
             "reference_metric": self.reference_metric, "metric": self.metric,
             "cost_ratio": self.cost_ratio,
             "low_bit_weight_fraction": self.low_bit_weight_fraction,
             "weight_bits": self.weight_bits, "activation_bits": self.activation_bits,
             "ranking": self.ranking, "seconds": self.seconds,
             "trials": [t.to_dict() for t in self.trials]}
        if with_config:
            d["q_config"] = self.q_config
        return d

    def save(self, path) -> None:
        """Write :meth:`to_dict` (with the q-config) as JSON, atomically."""
        _write_json(Path(path), self.to_dict(with_config=True))

    def format_table(self) -> str:
        """Trials, one per line, then the chosen bits per layer."""
        lines = [f"mixed precision ({self.mode} budget): {len(self.trials)} trial(s) in "
                 f"{self.seconds:.1f} s" + (" - INTERRUPTED" if self.interrupted else "")]
        header = ("#", "trial", "metric", "cost", "ok", "time s")
        rows = [header]
        for t in self.trials:
            rows.append((str(t.index), t.label, _fmt(t.metric, ".3f"),
                         _fmt(t.cost_ratio, ".3f", suffix="x"),
                         "-" if t.ok is None else ("yes" if t.ok else "no"),
                         f"{t.seconds:.1f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        table = ["  ".join(c.ljust(w) if i in (0, 1) else c.rjust(w)
                           for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
                 for r in rows]
        table.insert(1, "  ".join("-" * w for w in widths))
        lines += table + [""]
        if self.weight_bits:
            lines.append("chosen bits (w = weights, a = output activations):")
            for name, wb in self.weight_bits.items():
                ab = self.activation_bits.get(name)
                lines.append(f"  {name}: w{wb}" + ("" if ab is None else f" a{ab}"))
        summary = []
        if self.reference_metric is not None and self.metric is not None:
            summary.append(f"metric {self.metric:.3f} (reference {self.reference_metric:.3f})")
        if self.low_bit_weight_fraction is not None:
            summary.append(f"{100 * self.low_bit_weight_fraction:.1f}% of weights in "
                           f"{self.settings.get('low_bits', 4)} bits")
        if self.cost_ratio is not None:
            summary.append(f"cost {self.cost_ratio:.3f}x all-8-bit")
        if summary:
            lines.append("result: " + ", ".join(summary))
        return "\n".join(lines)


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{format(value, spec)}{suffix}"


def _write_json(path: Path, data: dict) -> None:
    with atomic_open(path, "w") as f:  # removed on errors and signals, renamed at the end
        json.dump(data, f, indent=2)


def _neural_layers(qmodel: keras.Model) -> list[QuantizedNeuralLayer]:
    return [layer for layer in qmodel.layers if isinstance(layer, QuantizedNeuralLayer)]


def _macs(layer: QuantizedNeuralLayer) -> int:
    shape = tuple(layer.output.shape[1:])
    if any(d is None for d in shape):
        raise ValueError(f"layer {layer.name!r} has a dynamic output shape {shape}; the cost "
                         "model needs static shapes (give the model a fixed input shape)")
    return int(np.prod(shape, dtype=np.int64)) * int(layer.fan_in())


def rank_layers(qmodel: keras.Model) -> list[LayerInfo]:
    """Layers with weights, best candidates for *low* bits first (seed 003 ranking).

    Sorted by total weights (descending), then weights per output channel (ascending), then
    execution order (later first). The end of the list holds the layers kept at high bits first.

    Example:
        >>> [info.name for info in rank_layers(qmodel)]  # doctest: +SKIP
        ['fc', 'conv2', 'conv1']
    """
    infos = []
    for i, layer in enumerate(_neural_layers(qmodel)):
        size = int(np.prod(layer.kernel.shape))
        infos.append(LayerInfo(layer.name, type(layer).__name__, i, size,
                               size // max(1, int(layer.channels)), _macs(layer)))
    return sorted(infos, key=lambda x: (-x.weights, x.weights_per_channel, -x.order))


def bit_operations(qmodel: keras.Model) -> dict[str, int]:
    """Cost model: per layer with weights, ``MACs x weight_bits x input_activation_bits``.

    Example:
        >>> sum(bit_operations(qmodel).values())  # doctest: +SKIP
        2359296
    """
    out = {}
    for layer in _neural_layers(qmodel):
        spec = layer.input_spec0
        a_bits = spec.value_bits + int(spec.signed)
        out[layer.name] = _macs(layer) * int(layer.weight_bits) * a_bits
    return out


def _metric_name(metric) -> str:
    return getattr(metric, "__name__", None) or type(metric).__name__


class _Search:
    """Runs trials (q-config edit -> quantize -> metric), logs them, reports progress."""

    def __init__(self, model, base_config: dict, metric, mode: str, settings: dict,
                 log_path, verbose: bool):
        self.model = model
        self.base = base_config
        self.metric = metric
        self.log_path = None if log_path is None else Path(log_path)
        if self.log_path is not None and not self.log_path.parent.is_dir():
            raise ValueError(f"cannot write the trial log {str(self.log_path)!r}: its "
                             "directory does not exist")
        self.verbose = verbose
        self.trials: list[Trial] = []
        self.t0 = time.perf_counter()
        self.result = MixedPrecisionResult(mode, None, {}, {}, None, None, None, None, [],
                                           self.trials, settings)

    def config(self, weight_bits: dict, activation_bits: dict | None = None) -> dict:
        cfg = copy.deepcopy(self.base)
        for name, bits in weight_bits.items():
            cfg["layers"][name]["weight_bits"] = int(bits)
        for name, bits in (activation_bits or {}).items():
            entry = cfg["layers"][name]
            if int(bits) != entry.get("activation_bits") and _width_bound_range(entry):
                # an mse range is the best clip of a grid of the old width: at another width
                # the recorded min/max decide (max, quantize's default above 4 bits)
                for key in ("range", "window", "calibration_method"):
                    entry.pop(key, None)
            entry["activation_bits"] = int(bits)
        return cfg

    def build(self, cfg: dict) -> keras.Model:
        from fixedq.models.quantize import quantize

        return quantize(self.model, q_config=cfg, verbose=False)

    def evaluate(self, qmodel, label: str) -> float:
        try:
            value = self.metric(qmodel)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            raise MetricError(f"metric {_metric_name(self.metric)!r} raised "
                              f"{type(exc).__name__}: {exc} (trial {len(self.trials)}: "
                              f"{label})") from exc
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise MetricError(f"metric {_metric_name(self.metric)!r} returned {value!r} on trial "
                              f"{len(self.trials)} ({label}); it must return a finite number")
        return number

    def record(self, label, weight_bits, activation_bits, metric, ok, cost, seconds) -> Trial:
        trial = Trial(len(self.trials), label, dict(weight_bits), dict(activation_bits or {}),
                      metric, ok, cost, round(seconds, 3))
        self.trials.append(trial)
        if self.verbose:
            parts = [f"trial {trial.index}: {label}"]
            if metric is not None:
                parts.append(f"metric {metric:.3f}")
            if cost is not None:
                parts.append(f"cost {cost:.3f}x")
            if ok is not None:
                parts.append("ok" if ok else "not ok")
            parts.append(f"{seconds:.1f} s")
            print("mixed precision: " + ", ".join(parts), file=sys.stderr, flush=True)
        self.save_log()
        return trial

    def save_log(self) -> None:
        self.result.seconds = round(time.perf_counter() - self.t0, 3)
        if self.log_path is not None:
            _write_json(self.log_path, self.result.to_dict(with_config=True))

    def interrupted(self, exc: KeyboardInterrupt) -> MixedPrecisionInterrupted:
        self.result.interrupted = True
        self.save_log()
        if self.verbose:
            print(f"mixed precision: interrupted after {len(self.trials)} trial(s)"
                  + (f"; log saved to {self.log_path}" if self.log_path else ""),
                  file=sys.stderr, flush=True)
        return MixedPrecisionInterrupted(self.result)


def _width_bound_range(entry: dict) -> bool:
    """Whether a q-config entry's activation ``range`` (or asymmetric ``window``) was chosen
    for its bit width (:attr:`CalibrationMethod.depends_on_bits`) and has recorded min/max to
    fall back on.

    Example:
        >>> _width_bound_range({"calibration": {"min": [0.0], "max": [3.0]}, "range": [1.875],
        ...                     "calibration_method": {"name": "mse"}})
        True
        >>> _width_bound_range({"calibration": {"min": [0.0], "max": [3.0]}, "range": [1.5]})
        False
    """
    method = entry.get("calibration_method")
    return (method is not None and CalibrationMethod.get(method).depends_on_bits
            and ("range" in entry or "window" in entry) and "calibration" in entry)


def _base_config(model, q_config, samples, qparams) -> dict:
    from fixedq.layers.params import QuantizationParams
    from fixedq.models.quantize import dump_config, quantize

    if q_config is not None:
        if not isinstance(q_config, dict) or "layers" not in q_config:
            raise ValueError(f"q_config must be a dict made by fixedq.dump_config, got "
                             f"{str(q_config)[:80]!r}")
        return copy.deepcopy(q_config)
    if samples is None:
        raise ValueError("give calibration samples (or a q_config from fixedq.dump_config): "
                         "the search re-quantizes the model from one calibration")
    qparams = qparams or QuantizationParams()
    return dump_config(quantize(model, qparams, samples, verbose=False))


def _weighted(cfg: dict) -> list[str]:
    names = [name for name, entry in cfg["layers"].items() if "weight_bits" in entry]
    if not names:
        raise ValueError("the model has no quantized layer with weights: nothing to search")
    return names


def _check_bits(value, name: str, lo: int = 2) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not lo <= value <= 16:
        raise ValueError(f"{name} must be an integer in [{lo}, 16], got {value!r}")
    return int(value)


def _check_metric(metric) -> None:
    if not callable(metric):
        raise TypeError(f"metric must be a callable metric(qmodel) -> float, got "
                        f"{type(metric).__name__}")


def search_accuracy_budget(model, metric: Callable[[keras.Model], float], samples=None,
                           accuracy_tolerance: float = 1.0, low_bits: int = 4,
                           high_bits: int = 8, q_config: dict | None = None, qparams=None,
                           log_path=None, verbose: bool = True,
                           refine: bool = True) -> MixedPrecisionResult:
    """Fewest layers with ``high_bits`` weights (others ``low_bits``) within a metric tolerance.

    Args:
        model: the float Keras model.
        metric: ``metric(qmodel) -> float``, higher is better.
        samples: calibration samples (calibrated once; every trial reuses the ranges).
        accuracy_tolerance: accepted drop of ``metric`` below the all-``high_bits`` model, in
            the metric's unit.
        low_bits, high_bits: the two weight bit widths.
        q_config: start from this q-config (from :func:`fixedq.dump_config`) instead of
            calibrating; its activation bits are kept.
        qparams: ``QuantizationParams`` for the calibration (default 8-bit).
        log_path: JSON file rewritten after every trial (and on Ctrl-C).
        verbose: one progress line per trial on stderr.
        refine: after the bisection, try moving each layer it kept at ``high_bits`` back to
            ``low_bits`` on its own, largest first, keeping every move that stays within the
            tolerance (one trial per kept layer; the static ranking is only a heuristic).

    Returns:
        A :class:`MixedPrecisionResult` (``q_config``, ``weight_bits``, ``trials``, ...).

    Raises:
        MetricError: the metric raised or returned a non-number.
        MixedPrecisionInterrupted: Ctrl-C; ``.result`` has the trials so far.
        ValueError/TypeError: bad arguments.

    Example:
        >>> result = search_accuracy_budget(model, accuracy, x_calib)  # doctest: +SKIP
        >>> result.low_bit_weight_fraction  # doctest: +SKIP
        0.93
    """
    _check_metric(metric)
    low_bits, high_bits = _check_bits(low_bits, "low_bits"), _check_bits(high_bits, "high_bits")
    if low_bits >= high_bits:
        raise ValueError(f"low_bits must be < high_bits, got {low_bits} and {high_bits}")
    if isinstance(accuracy_tolerance, bool) or not isinstance(accuracy_tolerance, (int, float)) \
            or not 0 <= accuracy_tolerance < math.inf:
        raise ValueError(f"accuracy_tolerance must be a finite number >= 0, got "
                         f"{accuracy_tolerance!r}")
    base = _base_config(model, q_config, samples, qparams)
    names = _weighted(base)
    settings = {"accuracy_tolerance": float(accuracy_tolerance), "low_bits": low_bits,
                "high_bits": high_bits, "metric": _metric_name(metric)}
    search = _Search(model, base, metric, "accuracy", settings, log_path, verbose)
    result = search.result
    state = {}

    def run(label: str, high: list[str]) -> bool:
        bits = {n: (high_bits if n in high else low_bits) for n in names}
        t = time.perf_counter()
        qmodel = search.build(search.config(bits))
        if "ranking" not in state:
            state["ranking"] = rank_layers(qmodel)
        value = search.evaluate(qmodel, label)
        ok = None if "reference" not in state else value >= state["reference"] - \
            accuracy_tolerance
        search.record(label, bits, {}, value, ok, None, time.perf_counter() - t)
        if ok:
            choose(high, value)
        return bool(ok)

    def choose(high: list[str], value: float) -> None:
        state["high"] = list(high)
        result.weight_bits = {n: (high_bits if n in high else low_bits) for n in names}
        result.q_config = search.config(result.weight_bits)
        result.metric = value
        sizes = {info.name: info.weights for info in state["ranking"]}
        total = sum(sizes.values())
        result.low_bit_weight_fraction = (sum(s for n, s in sizes.items() if n not in high)
                                          / total if total else 0.0)

    try:
        run(f"all weights {high_bits}-bit (reference)", names)
        state["reference"] = result.reference_metric = search.trials[0].metric
        search.trials[0].ok = True
        choose(names, search.trials[0].metric)
        ranking = state["ranking"]
        result.ranking = [info.name for info in ranking]
        candidates = [info.name for info in reversed(ranking)]  # lowest ranked first
        if not run(f"all weights {low_bits}-bit", []):
            lo, hi = 0, len(candidates)  # lo fails, hi passes
            while hi - lo > 1:
                mid = (lo + hi) // 2
                keep = candidates[:mid]
                if run(f"{high_bits}-bit: {mid}/{len(candidates)} ({', '.join(keep)})", keep):
                    hi = mid
                else:
                    lo = mid
            if refine:
                sizes = {info.name: info.weights for info in ranking}
                for name in sorted(state["high"], key=lambda n: -sizes.get(n, 0)):
                    trial = [n for n in state["high"] if n != name]
                    run(f"refine: {name} -> {low_bits}-bit", trial)
    except KeyboardInterrupt as exc:
        raise search.interrupted(exc) from exc
    search.save_log()
    return result


def _added_noise(report, qmodel) -> dict[str, float]:
    """Noise-to-signal ratio a layer adds: NSR(output) - NSR(its input), for neural layers."""

    def nsr(row) -> float:
        if row is None or row.activation is None:
            return 0.0
        snr = row.activation.snr_db
        return 0.0 if math.isinf(snr) and snr > 0 else 10.0 ** (-snr / 10.0)

    rows = {row.name: row for row in report.layers}
    out = {}
    for layer in _neural_layers(qmodel):
        producer = None
        try:
            history = layer.input._keras_history
            producer = history.operation.name
        except AttributeError:
            pass
        added = nsr(rows.get(layer.name)) - nsr(rows.get(producer))
        row = rows.get(layer.name)
        if row is not None and row.weights is not None and math.isfinite(row.weights.snr_db):
            added = max(added, 10.0 ** (-row.weights.snr_db / 10.0))
        out[layer.name] = max(added, 0.0)
    return out


def search_cost_budget(model, samples=None, cost_ratio: float = 1.2,
                       metric: Callable[[keras.Model], float] | None = None,
                       sensitivity: str = "snr", high_bits: int = 16,
                       promote_activations: bool = True, q_config: dict | None = None,
                       qparams=None, inspect_samples=None, log_path=None,
                       verbose: bool = True) -> MixedPrecisionResult:
    """Move the most sensitive layers to ``high_bits`` while ``cost <= cost_ratio x all-8-bit``.

    Args:
        model: the float Keras model.
        samples: calibration samples (also used for the ``"snr"`` sensitivity unless
            ``inspect_samples`` is given).
        cost_ratio: tolerated bit-operation cost relative to the starting (8-bit) model, >= 1
            (seed 001 ``mixed_precision_factor``: 1.2 = 20% more).
        metric: optional ``metric(qmodel) -> float`` (higher is better); required for the
            ``"metric"`` sensitivity, otherwise only used to report the final model.
        sensitivity: ``"snr"`` (noise added per layer, one inspection) or ``"metric"`` (metric
            gain of each layer alone at ``high_bits``, one trial per layer).
        high_bits: bits of promoted layers (16).
        promote_activations: also give promoted layers ``high_bits`` output activations (like
            seed 001's ``output_feature_16bit_names_list``); ``False`` promotes weights only.
        q_config, qparams: starting configuration (default: 8-bit calibration on samples).
        inspect_samples: samples for the ``"snr"`` sensitivity (default ``samples``).
        log_path, verbose: as in :func:`search_accuracy_budget`.

    Returns:
        A :class:`MixedPrecisionResult` with ``cost_ratio`` and the chosen ``q_config``.

    Example:
        >>> result = search_cost_budget(model, x_calib, cost_ratio=1.5)  # doctest: +SKIP
        >>> result.weight_bits  # doctest: +SKIP
        {'conv1': 16, 'conv2': 8, 'fc': 16}
    """
    from fixedq.analysis.inspection import inspect

    if isinstance(cost_ratio, bool) or not isinstance(cost_ratio, (int, float)) \
            or not 1.0 <= cost_ratio < math.inf:
        raise ValueError(f"cost_ratio must be a finite number >= 1 (cost relative to all "
                         f"8-bit), got {cost_ratio!r}")
    if sensitivity not in ("snr", "metric"):
        raise ValueError(f"sensitivity must be 'snr' or 'metric', got {sensitivity!r}")
    if metric is not None:
        _check_metric(metric)
    if sensitivity == "metric" and metric is None:
        raise ValueError("sensitivity='metric' needs a metric(qmodel) -> float")
    high_bits = _check_bits(high_bits, "high_bits")
    base = _base_config(model, q_config, samples, qparams)
    names = _weighted(base)
    settings = {"cost_ratio": float(cost_ratio), "sensitivity": sensitivity,
                "high_bits": high_bits, "promote_activations": bool(promote_activations),
                "metric": None if metric is None else _metric_name(metric),
                "cost_model": "sum over layers with weights of MACs x weight_bits x "
                              "input_activation_bits"}
    search = _Search(model, base, metric, "cost", settings, log_path, verbose)
    result = search.result

    def bits_for(promoted: list[str]) -> tuple[dict, dict]:
        w = {n: (high_bits if n in promoted else base["layers"][n]["weight_bits"])
             for n in names}
        a = {n: (high_bits if n in promoted and promote_activations
                 else base["layers"][n].get("activation_bits")) for n in names}
        return w, {n: b for n, b in a.items() if b is not None}

    try:
        t = time.perf_counter()
        base_model = search.build(copy.deepcopy(base))
        base_cost = sum(bit_operations(base_model).values())
        ref = search.evaluate(base_model, "start") if metric is not None else None
        w0, a0 = bits_for([])
        search.record("start (as calibrated)", w0, a0, ref, True, 1.0, time.perf_counter() - t)
        result.reference_metric = ref
        if sensitivity == "snr":
            report = inspect(model, base_model,
                             samples if inspect_samples is None else inspect_samples,
                             verbose=False)
            score = _added_noise(report, base_model)
        else:
            score = {}
            for name in names:
                t = time.perf_counter()
                w, a = bits_for([name])
                qmodel = search.build(search.config(w, a))
                value = search.evaluate(qmodel, f"{name} alone at {high_bits} bits")
                cost = sum(bit_operations(qmodel).values()) / base_cost
                search.record(f"sensitivity: {name} alone at {high_bits} bits", w, a, value,
                              None, cost, time.perf_counter() - t)
                score[name] = value - ref
        order = sorted(names, key=lambda n: -score[n])
        result.ranking = order
        promoted: list[str] = []
        final_model, final_cost = base_model, 1.0
        for name in order:
            t = time.perf_counter()
            w, a = bits_for(promoted + [name])
            qmodel = search.build(search.config(w, a))
            cost = sum(bit_operations(qmodel).values()) / base_cost
            fits = cost <= cost_ratio + 1e-12
            search.record(f"try {name} at {high_bits} bits (sensitivity {score[name]:.3g})",
                          w, a, None, fits, cost, time.perf_counter() - t)
            if fits:
                promoted.append(name)
                final_model, final_cost = qmodel, cost
        w, a = bits_for(promoted)
        result.weight_bits, result.activation_bits = w, a
        result.q_config = search.config(w, a)
        result.cost_ratio = final_cost
        if metric is not None:
            t = time.perf_counter()
            result.metric = search.evaluate(final_model, "final")
            search.record(f"final: {len(promoted)} layer(s) at {high_bits} bits", w, a,
                          result.metric, True, final_cost, time.perf_counter() - t)
    except KeyboardInterrupt as exc:
        raise search.interrupted(exc) from exc
    search.save_log()
    return result
