"""``inspect(float_model, qmodel, samples)``: per-tensor quantization error, layer by layer.

For every layer of the quantized model the report gives (seed 003 "inspection"):

- **weights**: SNR in dB and relative error ``||w - w_q*s|| / ||w||`` between the float kernel
  the quantized layer actually replaces, after every fold (BatchNormalization folded into the
  kernel and bias by ``sanitize``, a leading ``Rescaling`` folded in as the layer's
  ``kernel_unit``: ``effective_kernel()``), and its dequantized integer weights ``w_q * s``
  (per-output-channel scale ``s``, eq. 14);
- **bias**: the same between the float bias and the integer bias brought back to float,
  ``b_q * s / 2^F`` (eq. 17);
- **activation**: the same between the output of the *float* model and the output of the
  quantized model at the layer of the same name, accumulated over the samples (so errors of
  earlier layers are included: this is the error a user sees at that point of the network);
- **saturation**: the fraction of the layer's output values at the bounds of its integer range
  (top of the range, and bottom for signed outputs), an upper bound of the clipped values.

``SNR = 10 log10(sum(ref^2) / sum((ref - q)^2))`` over the whole tensor; ``inf`` when the
quantized tensor equals the float one (``null`` in JSON).

How layers are matched: ``quantize`` keeps the float layer names. The float reference is the
float model after the same graph rewrites that ``quantize`` applies (``sanitize``, then the split
of a SeparableConv2D ``name`` into ``name_dw`` + ``name``), so every quantized layer has a float
twin. A ReLU that ``quantize`` fuses into the layer before it (or into the MaxPool between them)
has no quantized layer of its own: its effect is in the quantized layer's output clip. The
float reference of such a layer (and of that MaxPool) is therefore the float ReLU *applied to*
the float layer's output, so both sides compute the same function. The ``InputQuantizer`` is
compared with the float input itself. Layers that run in float after a ``Dequantizer`` are
compared too (their error is inherited).

Example:
    >>> from fixedq.analysis import inspect
    >>> report = inspect(model, qmodel, x_calib, split=0.25)  # doctest: +SKIP
    >>> print(report.format_table())  # doctest: +SKIP
    >>> report.plot("errors.png")  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import keras
import numpy as np
from keras import ops

from fixedq.layers.base import QuantizedLayer
from fixedq.layers.neural import QuantizedNeuralLayer
from fixedq.layers.quantizers import Dequantizer, InputQuantizer
from fixedq.models.samples import iter_batches
from fixedq.progress import Progress
from fixedq.text_table import text_table

__all__ = ["InspectReport", "LayerInspection", "TensorError", "inspect", "snr_db"]


def snr_db(signal_power: float, noise_power: float) -> float:
    """``10 log10(signal / noise)``; ``inf`` without noise, ``-inf`` without signal.

    Example:
        >>> snr_db(100.0, 1.0)
        20.0
    """
    if noise_power <= 0:
        return math.inf
    if signal_power <= 0:
        return -math.inf
    return 10.0 * math.log10(signal_power / noise_power)


@dataclass
class TensorError:
    """Error of one tensor: SNR (dB), relative RMS error, and the sums they come from."""

    snr_db: float
    rel_error: float
    max_abs_error: float
    values: int

    @classmethod
    def between(cls, ref: np.ndarray, q: np.ndarray) -> TensorError:
        acc = _ErrorSums()
        acc.add(ref, q)
        return acc.result()

    def to_dict(self) -> dict:
        d = asdict(self)
        if not math.isfinite(d["snr_db"]):
            d["snr_db"] = None
        return d


class _ErrorSums:
    """Streaming sums of ``ref^2`` and ``(ref - q)^2``."""

    def __init__(self):
        self.signal = 0.0
        self.noise = 0.0
        self.max_abs = 0.0
        self.count = 0

    def add(self, ref, q) -> None:
        ref = np.asarray(ref, np.float64)
        diff = ref - np.asarray(q, np.float64)
        self.signal += float(np.sum(ref * ref))
        self.noise += float(np.sum(diff * diff))
        if diff.size:
            self.max_abs = max(self.max_abs, float(np.max(np.abs(diff))))
        self.count += int(ref.size)

    def result(self) -> TensorError:
        rel = math.sqrt(self.noise / self.signal) if self.signal > 0 else (
            0.0 if self.noise == 0 else math.inf)
        return TensorError(snr_db(self.signal, self.noise), rel, self.max_abs, self.count)


@dataclass
class LayerInspection:
    """What :func:`inspect` measured for one layer (``None`` where not applicable)."""

    name: str
    type: str
    weight_bits: int | None = None
    activation_bits: int | None = None  # bits of the output integers, sign included
    weights: TensorError | None = None
    bias: TensorError | None = None
    activation: TensorError | None = None
    reference: str | None = None  # how the float reference was obtained
    saturations: int | None = None
    saturation_values: int | None = None

    @property
    def saturation_rate(self) -> float | None:
        if not self.saturation_values:
            return None
        return self.saturations / self.saturation_values

    def to_dict(self) -> dict:
        d = {"name": self.name, "type": self.type, "weight_bits": self.weight_bits,
             "activation_bits": self.activation_bits, "reference": self.reference}
        for key in ("weights", "bias", "activation"):
            value = getattr(self, key)
            d[key] = None if value is None else value.to_dict()
        d["saturations"] = self.saturations
        d["saturation_values"] = self.saturation_values
        d["saturation_rate"] = self.saturation_rate
        return d


@dataclass
class InspectReport:
    """Per-layer errors between a float model and its quantized model."""

    model: str
    num_samples: int
    layers: list[LayerInspection]

    def layer(self, name: str) -> LayerInspection:
        """The row of layer ``name`` (``KeyError`` naming the known layers otherwise)."""
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(f"no layer {name!r} in the report; layers: {[r.name for r in self.layers]}")

    def to_dict(self) -> dict:
        """JSON-able dict (``fixedq inspect --json``); an infinite SNR is written as null."""
        return {"model": self.model, "num_samples": self.num_samples,
                "layers": [row.to_dict() for row in self.layers]}

    def format_table(self) -> str:
        """Fixed-width table for terminals: one row per layer."""
        header = ("layer", "type", "w bits", "w SNR dB", "w err %", "b SNR dB", "a bits",
                  "a SNR dB", "a err %", "sat %")
        rows = [header]
        for r in self.layers:
            rows.append((
                r.name, r.type, _fmt(r.weight_bits),
                _fmt_snr(r.weights), _fmt_rel(r.weights), _fmt_snr(r.bias),
                _fmt(r.activation_bits), _fmt_snr(r.activation), _fmt_rel(r.activation),
                _fmt(None if r.saturation_rate is None else 100 * r.saturation_rate, ".3f"),
            ))
        lines = text_table(rows, left=2)
        lines.insert(0, f"model {self.model!r}: {len(self.layers)} layers, "
                        f"{self.num_samples} samples")
        worst = self.worst_activation()
        if worst is not None:
            lines.append("")
            lines.append(f"lowest activation SNR: {worst.name} "
                         f"({worst.activation.snr_db:.1f} dB)")
        return "\n".join(lines)

    def worst_activation(self) -> LayerInspection | None:
        """The layer with the lowest activation SNR (``None`` without activations)."""
        rows = [r for r in self.layers if r.activation is not None]
        return min(rows, key=lambda r: r.activation.snr_db) if rows else None

    def plot(self, path) -> None:
        """Write a PNG of the SNR (dB) of weights and activations by layer (needs matplotlib)."""
        from fixedq.analysis.plots import plot_inspection

        plot_inspection(self, path)


def _fmt(value, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def _fmt_snr(err: TensorError | None) -> str:
    if err is None:
        return "-"
    return "inf" if math.isinf(err.snr_db) and err.snr_db > 0 else f"{err.snr_db:.1f}"


def _fmt_rel(err: TensorError | None) -> str:
    return "-" if err is None else f"{100 * err.rel_error:.2f}"


def _np(x) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x), np.float64)


def weight_errors(layer: QuantizedNeuralLayer) -> tuple[TensorError, TensorError | None]:
    """Errors of the dequantized weights and bias of one quantized layer vs its float ones.

    The float reference is the function the layer replaces after every fold: its
    ``effective_kernel()`` (``kernel``, times the folded Rescaling ``kernel_unit`` if any; the
    BatchNormalization fold is already in ``kernel`` and ``bias``), not the raw ``kernel``,
    which would compare 8-bit weights with a kernel 255 times larger (0 dB).
    """
    w_q, scale, b_q, _, _ = layer.quantized_weights()
    kernel = _np(layer.effective_kernel())
    weights = TensorError.between(kernel, _np(w_q) * _np(scale))
    if not layer.use_bias:
        return weights, None
    s_flat = _np(scale).reshape(-1)
    b_deq = _np(b_q) * s_flat * np.ldexp(1.0, -layer.input_spec0.max_frac)
    return weights, TensorError.between(_np(layer.bias), b_deq)


def _float_reference(float_model):
    """The float model as ``quantize`` sees it, and ``{layer: relu_layer_name}`` fusions."""
    from fixedq.models.quantize import as_keras3, fused_relus
    from fixedq.transforms import sanitize
    from fixedq.transforms.graph import build_model, read_graph
    from fixedq.transforms.split_separable import split_separable

    model = as_keras3(float_model)
    sanitized, _ = sanitize(model)
    graph = read_graph(sanitized)
    split_separable(graph)
    fused = dict(fused_relus(graph))
    for producer, relu in list(fused.items()):  # producer -> MaxPool -> ReLU: the pool too
        nxt = graph.sole_consumer(producer)
        if nxt is not None and nxt.name != relu:
            fused[nxt.name] = relu
    return build_model(graph), fused


def _saturation_hits(y: np.ndarray, spec) -> int:
    """Output values at the top (and, when signed, bottom) of the integer range."""
    lo, top = spec.int_bounds()
    v = np.round(y * np.ldexp(1.0, spec.frac_array(y.shape[-1])))
    if spec.lo is not None:  # asymmetric windows: per-channel edges
        lo, top = spec.lo_array(), spec.hi_array()
    hit = v >= top
    if spec.signed:
        hit |= v <= lo
    return int(np.count_nonzero(hit))


def _select(samples, split: float):
    if split == 1.0:
        return samples
    if not hasattr(samples, "__len__") or not hasattr(samples, "__getitem__"):
        raise ValueError(f"split={split} needs samples with a length (a NumPy array), got "
                         f"{type(samples).__name__}; pass split=1.0 or an array")
    n = len(samples)
    keep = max(1, int(round(n * split)))
    return samples[n - keep:]


def inspect(float_model, qmodel: keras.Model, samples, split: float = 1.0,
            num_samples: int | None = None, batch_size: int = 64,
            verbose: bool = True) -> InspectReport:
    """Measure per-tensor SNR / relative error and saturation of ``qmodel`` vs ``float_model``.

    Args:
        float_model: the float Keras model ``qmodel`` was quantized from (Keras 3 or tf-keras).
        qmodel: the quantized model (from :func:`fixedq.quantize` or a file).
        samples: float inputs ``(N, *input_shape)`` (array, ``tf.data.Dataset`` or generator).
        split: fraction in (0, 1] of an array of samples to use: its *last* part, so that
            calibrating on the first part keeps the inspected part held out (seed 003
            ``inspection_split``).
        num_samples: cap on the number of samples used (after ``split``).
        batch_size: batch size of both models.
        verbose: progress on stderr.

    Returns:
        An :class:`InspectReport`: ``format_table()``, ``to_dict()``, ``plot(path)``.

    Raises:
        TypeError: a model is not a Keras model.
        ValueError: ``qmodel`` is not quantized or does not match ``float_model``; bad split.

    Example:
        >>> report = inspect(model, qmodel, x[:256])  # doctest: +SKIP
        >>> report.layer("conv1").activation.snr_db  # doctest: +SKIP
        38.2
    """
    if not isinstance(qmodel, keras.Model):
        raise TypeError(f"inspect expects a quantized keras.Model as qmodel, got "
                        f"{type(qmodel).__name__}")
    if isinstance(split, bool) or not isinstance(split, (int, float)) or not 0 < split <= 1:
        raise ValueError(f"split must be a fraction in (0, 1], got {split!r}")
    if num_samples is not None and (isinstance(num_samples, bool) or int(num_samples) < 1):
        raise ValueError(f"num_samples must be a positive integer or None, got {num_samples!r}")
    qlayers = [layer for layer in qmodel.layers if isinstance(layer, QuantizedLayer)]
    if not qlayers:
        raise ValueError(f"model {qmodel.name!r} is not a fixedq quantized model (no quantized "
                         "layers); quantize it first")
    if len(qmodel.inputs) != 1:
        raise ValueError(f"inspect supports one-input models; {qmodel.name!r} has "
                         f"{len(qmodel.inputs)}")
    reference, fused = _float_reference(float_model)
    # a planned ReLU fusion holds only where the producer is quantized (else it is a layer)
    quantized = {layer.name for layer in qlayers
                 if getattr(layer, "output_spec", None) is not None}
    fused = {name: relu for name, relu in fused.items() if name in quantized}
    float_names = {layer.name for layer in reference.layers}
    rows: list[LayerInspection] = []
    probes_q, probes_f = [], []
    for layer in qmodel.layers:
        if isinstance(layer, (keras.layers.InputLayer, Dequantizer)):
            continue
        spec = getattr(layer, "output_spec", None)
        row = LayerInspection(layer.name, type(layer).__name__)
        if spec is not None:
            row.activation_bits = spec.value_bits + int(spec.signed)
        if isinstance(layer, QuantizedNeuralLayer):
            row.weight_bits = layer.weight_bits
            row.weights, row.bias = weight_errors(layer)
        if isinstance(layer, InputQuantizer):
            ref, row.reference = None, "float input"
        elif layer.name in float_names:
            ref = layer.name
            row.reference = (f"{fused[layer.name]}({layer.name})" if layer.name in fused
                             else layer.name)
        else:
            rows.append(row)
            continue
        rows.append(row)
        probes_q.append((row, layer))
        probes_f.append(ref)
    if not any(ref is not None for ref in probes_f):
        raise ValueError(f"no layer of {qmodel.name!r} matches a layer of the float model "
                         f"{reference.name!r}: is it the model that was quantized?")
    q_probe = keras.Model(qmodel.inputs, [layer.output for _, layer in probes_q])
    f_names = sorted({n for n in probes_f if n is not None})
    f_probe = keras.Model(reference.inputs,
                          [reference.get_layer(n).output for n in f_names] or reference.outputs)
    relu_layers = {name: reference.get_layer(relu) for name, relu in fused.items()}
    sums = {row.name: _ErrorSums() for row, _ in probes_q}
    for row, layer in probes_q:
        if getattr(layer, "output_spec", None) is not None:
            row.saturations, row.saturation_values = 0, 0
    data = _select(samples, float(split))
    total = len(data) if hasattr(data, "__len__") else None
    cap = int(num_samples) if num_samples is not None else (total or 2**62)
    total = min(total, cap) if total is not None else None
    seen = 0
    bar = Progress("inspecting", total=total, unit="samples", enabled=verbose)
    for batch in iter_batches(data, qmodel.inputs[0].shape, cap, batch_size):
        q_out = q_probe.predict_on_batch(batch)
        q_out = q_out if isinstance(q_out, (list, tuple)) else [q_out]
        f_out = f_probe.predict_on_batch(batch) if f_names else []
        f_out = f_out if isinstance(f_out, (list, tuple)) else [f_out]
        f_by_name = dict(zip(f_names, f_out, strict=False))
        for (row, layer), ref_name, yq in zip(probes_q, probes_f, q_out, strict=True):
            yq = np.asarray(yq, np.float64)
            if ref_name is None:
                ref = np.asarray(batch, np.float64)
            else:
                ref = f_by_name[ref_name]
                if ref_name in relu_layers:
                    ref = _np(relu_layers[ref_name](ref))
            sums[row.name].add(ref, yq)
            spec = getattr(layer, "output_spec", None)
            if spec is not None:
                row.saturations += _saturation_hits(yq, spec)
                row.saturation_values += int(yq.size)
        seen += len(batch)
        bar.update(seen)
    bar.close()
    if seen == 0:
        raise ValueError("samples are empty: give at least one sample")
    for row, _ in probes_q:
        row.activation = sums[row.name].result()
    return InspectReport(qmodel.name, seen, rows)
