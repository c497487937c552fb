"""Bias correction (TIDL's "advanced bias calibration"): remove the mean output shift.

Quantizing weights (and the activations before a layer) shifts the mean of each output
channel. For every quantized layer with weights, in execution order, the correction measures on
``frames`` calibration samples

    delta_o = mean(float layer output_o) - mean(linear(x_q, w_deq)_o + b_o)

where ``x_q`` is what the *quantized* model feeds the layer, ``w_deq`` the dequantized integer
weights and the float output is the pre-activation output of the same layer in the float model.
``b_o += delta_o``; later layers then see the corrected inputs. ``iterations`` repeats the pass.
Optionally each output channel's weights are first clipped to ``weight_clip_std`` standard
deviations (outlier weights widen the scale; the bias correction then absorbs the shift).

Corrections are stored in each layer's q-config entry (``bias_delta``, ``weight_clip_std``), so
``quantize(model, q_config=dump_config(qmodel))`` reproduces the corrected model bit for bit.

Example:
    >>> qmodel = quantize(model, qp, samples=x, bias_correction=BiasCorrection(frames=64))
    ... # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import keras
import numpy as np
from keras import ops

from fixedq.layers.neural import QuantizedNeuralLayer
from fixedq.models import layerwise
from fixedq.progress import Progress


@dataclass(frozen=True)
class BiasCorrection:
    """Options: ``frames`` samples used, ``iterations`` passes, optional weight clipping."""

    frames: int = 64
    iterations: int = 1
    weight_clip_std: float | None = None

    def __post_init__(self):
        for name in ("frames", "iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.weight_clip_std is not None and not float(self.weight_clip_std) > 0:
            raise ValueError(f"weight_clip_std must be > 0 or None, got {self.weight_clip_std!r}")

    @classmethod
    def get(cls, value, qparams=None) -> BiasCorrection | None:
        """``None``/``False`` (off), ``True``, a dict, an instance, or ``"auto"``: on with the
        defaults when any bit width of ``qparams`` is 4 or less (where PTQ loses most)."""
        if isinstance(value, str) and value == "auto":
            low = qparams is not None and min(qparams.weight_bits, qparams.activation_bits,
                                              qparams.input_weight_bits) <= 4
            return cls() if low else None
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return cls(**value)
        raise TypeError(f"bias_correction must be a bool, a dict or a BiasCorrection, got "
                        f"{type(value).__name__}")

    def to_config(self) -> dict:
        return asdict(self)


def clip_kernel(kernel: np.ndarray, scale_axes, n_std: float) -> np.ndarray:
    """Clip each output channel's weights to ``n_std`` standard deviations (around zero)."""
    std = np.sqrt(np.mean(np.square(kernel), axis=tuple(scale_axes), keepdims=True))
    limit = n_std * std
    return np.clip(kernel, -limit, limit).astype(kernel.dtype)


def clip_layer_kernel(layer: QuantizedNeuralLayer, n_std: float) -> None:
    """:func:`clip_kernel` on the layer's effective kernel; with a folded Rescaling
    (``kernel_unit``) the limits are mapped back to the original units the variable holds."""
    if layer.kernel_unit is None:
        layer.kernel.assign(clip_kernel(layer.kernel.numpy(), layer.scale_axes, n_std))
        return
    unit = layer.unit_array()
    eff = np.asarray(layer.effective_kernel(), np.float64)
    std = np.sqrt(np.mean(np.square(eff), axis=tuple(layer.scale_axes), keepdims=True))
    limit = n_std * std / np.abs(unit)
    kernel = layer.kernel.numpy()
    layer.kernel.assign(np.clip(kernel, -limit, limit).astype(kernel.dtype))


def clip_kernels(qmodel: keras.Model, n_std: float) -> list[str]:
    """:func:`clip_layer_kernel` on every biased neural layer of ``qmodel`` not clipped yet
    (recorded as ``weight_clip_std`` in its q-config); returns the clipped layer names."""
    done = []
    for layer in qmodel.layers:
        if (isinstance(layer, QuantizedNeuralLayer) and layer.use_bias
                and layer.qconfig.get("weight_clip_std") is None):
            clip_layer_kernel(layer, n_std)
            layer.qconfig["weight_clip_std"] = float(n_std)
            done.append(layer.name)
    return done


def apply_recorded_bias_correction(layer: QuantizedNeuralLayer, entry: dict) -> None:
    """Re-apply the weight clipping and bias deltas recorded in a q-config ``entry``."""
    if entry.get("weight_clip_std") is not None:
        clip_layer_kernel(layer, entry["weight_clip_std"])
    if entry.get("bias_delta") is not None:
        delta = np.asarray(entry["bias_delta"], dtype=np.float32)
        if not layer.use_bias or delta.shape != tuple(layer.bias.shape):
            raise ValueError(f"q_config: layer {layer.name!r} bias_delta must have "
                             f"{layer.channels} values and the layer a bias")
        layer.bias.assign(layer.bias.numpy() + delta)


def _channel_sums(parts) -> tuple[np.ndarray, int]:
    """Per-channel float64 sums of sub-batches and the number of values per channel."""
    total, count = None, 0
    for part in parts:
        x = np.asarray(ops.convert_to_numpy(part), dtype=np.float64)
        x = x.reshape(-1, x.shape[-1])
        total = x.sum(axis=0) if total is None else total + x.sum(axis=0)
        count += len(x)
    return total, count


def correct_biases(float_model: keras.Model, qmodel: keras.Model, frames: np.ndarray,
                   options: BiasCorrection, verbose: bool = True) -> list[str]:
    """Correct the biases of ``qmodel``'s neural layers in place; returns the layer names.

    Both models run one operation at a time on the frames
    (:class:`fixedq.models.layerwise.LayerwiseRun`; at most
    :func:`fixedq.models.weight_rounding.frame_cap` frames), so each layer sees the inputs the
    layers before it give after their correction, and memory holds only live tensors."""
    from fixedq.models.weight_rounding import frame_cap

    layers = [ly for ly in qmodel.layers if isinstance(ly, QuantizedNeuralLayer)
              and ly.use_bias and ly.name in {f.name for f in float_model.layers}]
    if not layers:
        return []
    done = [ly.name for ly in layers if ly.qconfig.get("bias_delta") is not None]
    if done:
        raise ValueError(f"layers {done} already carry bias corrections from the q_config; "
                         "remove their 'bias_delta' entries to compute new ones")
    if options.weight_clip_std is not None:
        for layer in layers:
            if layer.qconfig.get("weight_clip_std") is None:  # not clipped before rounding
                clip_layer_kernel(layer, options.weight_clip_std)
                layer.qconfig["weight_clip_std"] = float(options.weight_clip_std)
    frames = np.asarray(frames)[:frame_cap([qmodel, float_model])]
    chunk = min(layerwise.chunk_for(m, len(frames)) for m in (qmodel, float_model))
    frun = layerwise.LayerwiseRun(float_model, frames, chunk)
    targets = []
    for layer in layers:
        total, count = _channel_sums(frun.value(float_model.get_layer(layer.name).output))
        targets.append(total / max(count, 1))
    del frun
    deltas = {ly.name: np.zeros(ly.channels) for ly in layers}
    originals = {ly.name: ly.bias.numpy() for ly in layers}
    bar = Progress("bias correction", total=options.iterations * len(layers), unit="layers",
                   enabled=verbose)
    for it in range(options.iterations):
        qrun = layerwise.LayerwiseRun(qmodel, frames, chunk)
        for i, layer in enumerate(layers):
            x_parts = qrun.value(layer.input)
            w_q, scale, *_ = layer.quantized_weights()
            w_deq = ops.cast(ops.cast(w_q, "float64") * scale, "float32")
            total, count = _channel_sums(layer.linear(x, w_deq) + layer.bias for x in x_parts)
            delta = targets[i] - total / max(count, 1)
            layer.bias.assign(layer.bias.numpy() + delta.astype(np.float32))
            deltas[layer.name] += delta
            bar.update(it * len(layers) + i + 1,
                       f"pass {it + 1}/{options.iterations}, {len(frames)} frames")
    bar.close()
    for layer in layers:  # one float32 add of the total, as apply_recorded_bias_correction
        total = deltas[layer.name].astype(np.float32)
        layer.bias.assign(originals[layer.name] + total)
        layer.qconfig["bias_delta"] = total.astype(float).tolist()
    return [ly.name for ly in layers]
