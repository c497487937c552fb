"""``check(qmodel, samples=None)``: find quantization problems in a fixedq quantized model.

Three families of checks, each reported per layer:

- **weights** (``weight_error``): per output channel, the relative RMS error of the quantized
  weights ``||w - w_q * s|| / ||w||`` and the relative error of the integer requantization
  multiplier ``|M * 2^-S - factor| / factor``; a channel above ``weight_error_threshold`` is a
  problem (typically an outlier weight that wastes the channel's range, or too few bits).
- **accumulators** (``accumulator_bound``): the static worst case of each output channel's
  integer accumulator, ``sum|w_q| * max|v| + |b_q|`` (``max|v|`` = largest aligned input
  integer), against the signed ``buffer_bits`` range; above it the accumulator *can* saturate.
  With ``samples`` the accumulators are also computed on real data (``accumulator_saturated``)
  and every quantized output is compared with its integer range (``output_saturated``: values
  exactly at the top of the representable range, or at the bottom for signed outputs; a value
  sitting on the bound without being clipped is counted too, so the rate is an upper bound;
  for the InputQuantizer the float inputs are known and the count is exact).
- **per-tensor activations** (``per_tensor_range``): an activation quantized with one
  frac_bits for all channels although its calibrated channel ranges differ by more than
  ``2^per_tensor_spread_bits``: the small channels lose that many bits; per-axis helps.

Example:
    >>> import fixedq, numpy as np
    >>> from fixedq.analysis import check
    >>> report = check(qmodel, samples=np.random.rand(64, 8, 8, 1))  # doctest: +SKIP
    >>> report.ok, [p.kind for p in report.problems]  # doctest: +SKIP
    (True, [])
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import keras
import numpy as np
from keras import ops

from fixedq.layers.base import QuantizedLayer, to_integers
from fixedq.layers.neural import QuantizedNeuralLayer
from fixedq.layers.quantizers import InputQuantizer
from fixedq.models.samples import iter_batches
from fixedq.ops import registry
from fixedq.text_table import text_table

__all__ = ["CheckReport", "LayerCheck", "Problem", "check"]

#: Problem kinds, in report order.
PROBLEM_KINDS = ("weight_error", "requant_scale_error", "accumulator_bound",
                 "accumulator_saturated", "output_saturated", "per_tensor_range")


@dataclass(frozen=True)
class Problem:
    """One problem found by :func:`check`."""

    layer: str
    kind: str
    message: str
    value: float
    threshold: float


@dataclass
class LayerCheck:
    """Measurements of one quantized layer (``None`` when not applicable)."""

    name: str
    type: str
    weight_bits: int | None = None
    weight_error: float | None = None  # worst channel relative RMS error
    worst_channel: int | None = None
    requant_scale_error: float | None = None
    fan_in: int | None = None
    accumulator_bound: int | None = None  # worst channel, static
    accumulator_limit: int | None = None
    headroom_bits: float | None = None  # log2(limit / bound); < 0 means it can saturate
    accumulator_saturations: int | None = None  # on samples
    accumulator_values: int | None = None
    output_saturations: int | None = None  # on samples
    output_values: int | None = None
    per_tensor: bool | None = None
    channel_range_ratio: float | None = None  # max/min calibrated channel range

    @property
    def output_saturation_rate(self) -> float | None:
        if not self.output_values:
            return None
        return self.output_saturations / self.output_values

    def to_dict(self) -> dict:
        d = asdict(self)
        d["output_saturation_rate"] = self.output_saturation_rate
        return d


@dataclass
class CheckReport:
    """What :func:`check` found: per-layer measurements and the list of problems."""

    model: str
    layers: list[LayerCheck]
    problems: list[Problem]
    num_samples: int | None
    thresholds: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """``True`` when no problem was found."""
        return not self.problems

    def to_dict(self) -> dict:
        """JSON-able dict (used by ``fixedq check --json``)."""
        return {"model": self.model, "ok": self.ok, "num_samples": self.num_samples,
                "thresholds": dict(self.thresholds),
                "layers": [layer.to_dict() for layer in self.layers],
                "problems": [asdict(p) for p in self.problems]}

    def format_table(self) -> str:
        """A fixed-width table of the layers followed by the problems, for terminals."""
        header = ("layer", "type", "w bits", "w err %", "acc bound", "headroom", "acc sat",
                  "out sat %", "ranges")
        rows = [header]
        for lc in self.layers:
            rows.append((
                lc.name, lc.type,
                _fmt(lc.weight_bits),
                _fmt(None if lc.weight_error is None else 100 * lc.weight_error, ".2f"),
                _fmt(lc.accumulator_bound),
                _fmt(lc.headroom_bits, ".1f", suffix=" b"),
                _fmt(lc.accumulator_saturations),
                _fmt(None if lc.output_saturation_rate is None
                     else 100 * lc.output_saturation_rate, ".3f"),
                _fmt(lc.channel_range_ratio, ".1f", prefix="x")
                + (" (tensor)" if lc.per_tensor else ""),
            ))
        lines = text_table(rows, left=2)
        samples = ("static checks only (no samples)" if self.num_samples is None
                   else f"{self.num_samples} samples")
        lines.insert(0, f"model {self.model!r}: {len(self.layers)} quantized layers, {samples}")
        lines.append("")
        if self.ok:
            lines.append("no problems found")
        else:
            lines.append(f"{len(self.problems)} problem(s) found:")
            lines.extend(f"  {p.layer}: {p.kind}: {p.message}" for p in self.problems)
        return "\n".join(lines)


def _fmt(value, spec: str = "", prefix: str = "", suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{prefix}{format(value, spec)}{suffix}"


def _np(x) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x))


def _weight_checks(layer: QuantizedNeuralLayer, lc: LayerCheck) -> None:
    w_q, scale, b_q, mult, shift = layer.quantized_weights()
    w_q, scale = _np(w_q).astype(np.float64), _np(scale)
    b_q, mult, shift = _np(b_q).astype(np.int64), _np(mult), _np(shift)
    k = _np(layer.kernel).astype(np.float64)
    axes = layer.scale_axes
    err = np.sqrt(np.sum((k - w_q * scale) ** 2, axis=axes)).reshape(-1)
    norm = np.sqrt(np.sum(k**2, axis=axes)).reshape(-1)
    rel = np.divide(err, norm, out=np.zeros_like(err), where=norm > 0)
    lc.weight_bits = layer.weight_bits
    lc.worst_channel = int(np.argmax(rel))
    lc.weight_error = float(rel[lc.worst_channel])
    # Requantization: factor = s * 2^(f_out - F) ~ M * 2^-S.
    factor = scale.reshape(-1) * np.ldexp(1.0, layer.out_frac - layer.input_spec0.max_frac)
    approx = mult.astype(np.float64) * np.ldexp(1.0, -shift.astype(np.int64))
    scale_err = np.abs(approx - factor) / np.where(factor > 0, factor, 1.0)
    lc.requant_scale_error = float(np.max(scale_err)) if scale_err.size else 0.0
    # Static accumulator bound per output channel.
    v_max = layer.input_spec0.aligned_max_abs()
    l1 = np.sum(np.abs(w_q), axis=axes).reshape(-1).astype(np.int64)
    bound = l1.astype(object) * v_max + np.abs(b_q).astype(object)
    lc.fan_in = int(layer.fan_in())
    lc.accumulator_bound = int(max(bound)) if len(bound) else 0
    lc.accumulator_limit = int(layer.acc_bounds[1])
    lc.headroom_bits = (math.log2(lc.accumulator_limit / lc.accumulator_bound)
                        if lc.accumulator_bound > 0 else None)


def _range_ratio(layer: QuantizedLayer, lc: LayerCheck) -> None:
    spec = layer.output_spec
    cfg = getattr(layer, "qconfig", None) or {}
    cal = cfg.get("calibration")
    lc.per_tensor = spec.per_tensor
    if not cal:
        return
    lo, hi = np.asarray(cal["min"], np.float64), np.asarray(cal["max"], np.float64)
    rng = np.maximum(np.abs(lo), np.abs(hi)) if spec.signed else np.maximum(hi, 0.0)
    live = rng[rng > 0]
    if live.size > 1:
        lc.channel_range_ratio = float(live.max() / live.min())


def _weighted(layer) -> bool:
    """Whether ``layer``'s op has a kernel (weight error, accumulator bound and accumulator
    saturation checks apply), as the op registry declares (``OpSpec.weighted``)."""
    spec = registry.for_layer(layer)
    return spec is not None and spec.weighted


def _quantized_layers(qmodel: keras.Model) -> list[QuantizedLayer]:
    return [layer for layer in qmodel.layers
            if isinstance(layer, QuantizedLayer) and layer.output_spec is not None]


def _sample_checks(qmodel, layers, lcs, samples, batch_size: int) -> int:
    """Run the model on ``samples``; fill saturation counts. Returns the number of samples."""
    neural = [layer for layer in layers if _weighted(layer)]
    outs = [layer.output for layer in layers] + [layer.input for layer in neural]
    probe = keras.Model(qmodel.inputs, outs)
    by_name = {lc.name: lc for lc in lcs}
    for lc in lcs:
        lc.output_saturations, lc.output_values = 0, 0
    for layer in neural:
        by_name[layer.name].accumulator_saturations = 0
        by_name[layer.name].accumulator_values = 0
    n = len(samples) if hasattr(samples, "__len__") else 2**62
    seen = 0
    for batch in iter_batches(samples, qmodel.inputs[0].shape, n, batch_size):
        results = probe.predict_on_batch(batch)
        results = results if isinstance(results, (list, tuple)) else [results]
        for layer, y in zip(layers, results[:len(layers)], strict=True):
            lc = by_name[layer.name]
            spec = layer.output_spec
            lo_rng, top = spec.int_bounds()
            if isinstance(layer, InputQuantizer):  # exact: the float input is known
                x = np.asarray(batch, np.float64)
                v = np.floor(x * np.ldexp(1.0, spec.frac_array(x.shape[-1])) + 0.5)
                hit = (v > spec.hi_array()) | (v < spec.lo_array())
            elif spec.lo is not None:  # asymmetric windows: both per-channel edges
                y = np.asarray(y, np.float64)
                v = np.round(y * np.ldexp(1.0, spec.frac_array(y.shape[-1])))
                hit = (v >= spec.hi_array()) | (v <= spec.lo_array())
            else:  # values on the clip bound (clipped or not): an upper bound
                y = np.asarray(y, np.float64)
                v = np.round(y * np.ldexp(1.0, spec.frac_array(y.shape[-1])))
                hit = (v >= top) & (spec.hi_array() >= top)
                if spec.signed:
                    hit |= v <= lo_rng
            lc.output_saturations += int(np.count_nonzero(hit))
            lc.output_values += int(v.size)
        for layer, x in zip(neural, results[len(layers):], strict=True):
            lc = by_name[layer.name]
            w_q, _, b_q, _, _ = layer.quantized_weights()
            v = to_integers(x, layer.input_spec0, "float64")
            acc = _np(layer.linear(v, ops.cast(w_q, "float64"))) + _np(b_q)
            acc_lo, acc_hi = layer.acc_bounds
            lc.accumulator_saturations += int(np.count_nonzero((acc > acc_hi) | (acc < acc_lo)))
            lc.accumulator_values += int(acc.size)
        seen += len(batch)
    return seen


def check(qmodel: keras.Model, samples=None, weight_error_threshold: float = 0.05,
          saturation_rate_threshold: float = 0.01, per_tensor_spread_bits: int = 4,
          batch_size: int = 64) -> CheckReport:
    """Check a quantized model for weight-scale errors, accumulator saturation and ranges.

    Args:
        qmodel: a model made by :func:`fixedq.quantize` (or loaded from such a file).
        samples: optional float inputs (NumPy array ``(N, *input_shape)``, dataset or generator)
            to measure saturation on real data.
        weight_error_threshold: largest acceptable relative RMS weight error of a channel.
        saturation_rate_threshold: largest acceptable fraction of saturated output values.
        per_tensor_spread_bits: a per-tensor activation whose channel ranges differ by more
            than ``2**per_tensor_spread_bits`` is reported.
        batch_size: batch size used to run ``samples``.

    Returns:
        A :class:`CheckReport`; ``report.ok`` is ``False`` when problems were found.

    Raises:
        TypeError: ``qmodel`` is not a Keras model.
        ValueError: ``qmodel`` has no fixedq quantized layer; samples of the wrong shape.

    Example:
        >>> report = check(qmodel)  # doctest: +SKIP
        >>> print(report.format_table())  # doctest: +SKIP
    """
    if not isinstance(qmodel, keras.Model):
        raise TypeError(f"check expects a quantized keras.Model, got {type(qmodel).__name__}")
    if not 0 <= weight_error_threshold or not 0 <= saturation_rate_threshold <= 1:
        raise ValueError("thresholds must be weight_error_threshold >= 0 and "
                         f"0 <= saturation_rate_threshold <= 1, got {weight_error_threshold}, "
                         f"{saturation_rate_threshold}")
    layers = _quantized_layers(qmodel)
    if not layers:
        raise ValueError(f"model {qmodel.name!r} is not a fixedq quantized model (no quantized "
                         "layers); quantize it first, or lint the float model with "
                         "fixedq.analysis.lint")
    lcs = []
    for layer in layers:
        lc = LayerCheck(layer.name, type(layer).__name__)
        if _weighted(layer):
            _weight_checks(layer, lc)
        _range_ratio(layer, lc)
        lcs.append(lc)
    num = None
    if samples is not None:
        if len(qmodel.inputs) != 1:
            raise ValueError(f"check with samples supports one-input models; {qmodel.name!r} "
                             f"has {len(qmodel.inputs)}")
        num = _sample_checks(qmodel, layers, lcs, samples, batch_size)
    thresholds = {"weight_error": weight_error_threshold,
                  "saturation_rate": saturation_rate_threshold,
                  "per_tensor_spread_bits": per_tensor_spread_bits}
    return CheckReport(qmodel.name, lcs, _problems(lcs, thresholds), num, thresholds)


def _problems(lcs: list[LayerCheck], th: dict) -> list[Problem]:
    found = []
    for lc in lcs:
        if lc.weight_error is not None and lc.weight_error > th["weight_error"]:
            found.append(Problem(
                lc.name, "weight_error",
                f"channel {lc.worst_channel} loses {100 * lc.weight_error:.1f}% of its weights "
                f"(relative RMS error) at {lc.weight_bits} bits: an outlier weight or too few "
                "bits", lc.weight_error, th["weight_error"]))
        if lc.requant_scale_error is not None and lc.requant_scale_error > th["weight_error"]:
            found.append(Problem(
                lc.name, "requant_scale_error",
                f"the integer output multiplier is off by {100 * lc.requant_scale_error:.1f}%: "
                "use more scale_bits", lc.requant_scale_error, th["weight_error"]))
        if lc.headroom_bits is not None and lc.headroom_bits < 0:
            found.append(Problem(
                lc.name, "accumulator_bound",
                f"the accumulator can reach {lc.accumulator_bound} (sum|w_q| x max|v| + |b_q|) "
                f"but saturates at {lc.accumulator_limit}: use fewer bits or more buffer_bits",
                float(lc.accumulator_bound), float(lc.accumulator_limit)))
        if lc.accumulator_saturations:
            found.append(Problem(
                lc.name, "accumulator_saturated",
                f"{lc.accumulator_saturations} of {lc.accumulator_values} accumulator values "
                "saturated on the samples", float(lc.accumulator_saturations), 0.0))
        rate = lc.output_saturation_rate
        if rate is not None and rate > th["saturation_rate"]:
            found.append(Problem(
                lc.name, "output_saturated",
                f"{lc.output_saturations} of {lc.output_values} output values "
                f"({100 * rate:.2f}%) "
                + ("are clipped" if lc.type == "InputQuantizer" else "are at the clip bound")
                + " on the samples: calibrate on "
                "representative samples or use more activation bits", rate,
                th["saturation_rate"]))
        ratio = lc.channel_range_ratio
        if lc.per_tensor and ratio is not None and ratio > 2.0 ** th["per_tensor_spread_bits"]:
            found.append(Problem(
                lc.name, "per_tensor_range",
                f"per-tensor activation whose channel ranges differ by x{ratio:.0f} (> 2^"
                f"{th['per_tensor_spread_bits']}): small channels lose {math.log2(ratio):.0f} "
                "bits; quantize per-axis (without --per_tensor_activations)",
                ratio, 2.0 ** th["per_tensor_spread_bits"]))
    return found
