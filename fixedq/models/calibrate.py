"""Calibration: per-channel running min/max of chosen tensors of a float model, streamed.

Memory does not grow with the number of samples: batches are streamed, and only statistics
are kept (per-channel extremes, one per-channel maximum per batch, histograms). The extremes
are reduced inside the model (a probe whose outputs are the per-channel min and max of each
recorded tensor), so no activation map leaves TensorFlow; each batch runs in sub-batches of at
most :func:`chunk_size` samples (activation memory bounded by :data:`MEMORY_BUDGET`). The
statistics do not depend on how a batch is split: min, max and histogram counts are exact
under any split, and ``batch_pos``/``batch_neg`` hold one entry per batch of ``batch_size``.

Example:
    >>> import keras, numpy as np
    >>> x = keras.Input((3,), name="x")
    >>> model = keras.Model(x, keras.layers.Dense(2, name="fc")(x))
    >>> stats = calibrate(model, np.ones((8, 3), "float32"), verbose=False)
    >>> sorted(stats), stats["fc"].maximum.shape
    (['fc', 'x'], (2,))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import keras
import numpy as np

from fixedq.models.samples import DEFAULT_NUM_SAMPLES, iter_batches, rereadable
from fixedq.progress import Progress


@dataclass
class RangeStats:
    """Per-channel statistics of one tensor (last axis = channels).

    ``minimum``/``maximum`` are running extremes; ``batch_pos``/``batch_neg`` list the
    per-batch maxima of ``x`` and ``-x`` (for ``moving_average`` and ``mean_std``);
    ``hist_pos``/``hist_neg`` are histograms of ``max(x, 0)`` and ``max(-x, 0)`` over
    ``[0, top]`` filled by a second pass when a histogram method is used.
    """

    minimum: np.ndarray
    maximum: np.ndarray
    batch_pos: list = field(default_factory=list)
    batch_neg: list = field(default_factory=list)
    hist_pos: np.ndarray | None = None
    hist_neg: np.ndarray | None = None

    def update(self, batch: np.ndarray) -> None:
        axes = tuple(range(batch.ndim - 1))
        self.update_range(batch.min(axis=axes), batch.max(axis=axes))

    def update_range(self, lo: np.ndarray, hi: np.ndarray) -> None:
        """Add one batch given by its per-channel minimum ``lo`` and maximum ``hi``."""
        lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        self.minimum = np.minimum(self.minimum, lo)
        self.maximum = np.maximum(self.maximum, hi)
        self.batch_pos.append(hi)
        self.batch_neg.append(-lo)

    @property
    def top(self) -> np.ndarray:
        """Upper edge of the histograms: the largest magnitude seen per channel."""
        return np.maximum(np.maximum(np.abs(self.minimum), np.abs(self.maximum)), 1e-30)

    def add_histogram(self, batch: np.ndarray, bins: int) -> None:
        flat = batch.reshape(-1, batch.shape[-1]).astype(np.float64)
        channels = flat.shape[1]
        if self.hist_pos is None:
            # uint32 counts (half of int64: 4-bit quantize of a 224x224 MobileNetV2 holds ~17k
            # channels x 2 x 1024 bins), widened to int64 once the rows seen pass 2^31 - 1
            # (so that pos + neg still fits)
            self.hist_pos = np.zeros((channels, bins), dtype=np.uint32)
            self.hist_neg = np.zeros((channels, bins), dtype=np.uint32)
        # every value seen lands in one bin of hist_pos: its first channel counts the rows
        rows = int(self.hist_pos[0].sum(dtype=np.int64)) + len(flat)
        if self.hist_pos.dtype != np.int64 and rows > np.iinfo(np.int32).max:
            self.hist_pos = self.hist_pos.astype(np.int64)
            self.hist_neg = self.hist_neg.astype(np.int64)
        scale = bins / self.top
        offsets = np.arange(channels) * bins
        for part, hist in ((np.maximum(flat, 0.0), self.hist_pos),
                           (np.maximum(-flat, 0.0), self.hist_neg)):
            idx = np.minimum((part * scale).astype(np.int64), bins - 1) + offsets
            nonzero = part > 0
            counts = np.bincount(idx[nonzero], minlength=channels * bins)
            hist += counts.reshape(channels, bins).astype(hist.dtype)
            hist[:, 0] += np.count_nonzero(~nonzero, axis=0).astype(hist.dtype)

    def _mean_std(self, values: list) -> tuple[np.ndarray, np.ndarray]:
        arr = np.asarray(values if values else [self.maximum], dtype=np.float64)
        return arr.mean(axis=0), arr.std(axis=0)

    def mean_std_pos(self):
        return self._mean_std(self.batch_pos)

    def mean_std_neg(self):
        return self._mean_std(self.batch_neg)

    def ema(self, values: list, momentum: float) -> np.ndarray:
        acc = None
        for v in values or [self.maximum]:
            acc = np.asarray(v, np.float64) if acc is None else momentum * acc + (1 - momentum) * v
        return acc

    def to_config(self) -> dict:
        return {"min": self.minimum.astype(float).tolist(),
                "max": self.maximum.astype(float).tolist()}

    @classmethod
    def from_config(cls, cfg: dict) -> RangeStats:
        if not isinstance(cfg, dict) or not {"min", "max"} <= set(cfg):
            raise ValueError("calibration stats must be an object {\"min\": [...], \"max\": "
                             f"[...]}} (as 'fixedq config' writes them), got {cfg!r:.120}")
        try:
            lo = np.asarray(cfg["min"], dtype=np.float64)
            hi = np.asarray(cfg["max"], dtype=np.float64)
        except (TypeError, ValueError):
            lo = hi = np.zeros((0, 0))  # rejected just below, with the values shown
        if lo.shape != hi.shape or lo.ndim != 1 or not np.all(np.isfinite(lo + hi)):
            raise ValueError(f"calibration stats need equal-length finite 'min'/'max' lists, "
                             f"got {cfg!r:.120}")
        return cls(lo, hi)


def calibrate(model: keras.Model, samples, layer_names=None, num_samples: int = DEFAULT_NUM_SAMPLES,
              batch_size: int | None = None, epochs: int = 1,
              verbose: bool = True, histograms: bool = False,
              bins: int = 1024) -> dict[str, RangeStats]:
    """Run ``model`` on ``samples`` and record per-channel min/max of each named layer's output.

    Args:
        model: a float Keras 3 functional model with one input.
        samples: NumPy array, ``tf.data.Dataset`` (of ``x`` or ``(x, y)``) or generator.
        layer_names: layers whose outputs are recorded (default: all); the model input's own
            name is always recorded.
        num_samples, batch_size, epochs: how much data to read (streamed, batch by batch).
        verbose: show a progress line on stderr.
        histograms: also fill per-channel histograms (a second pass over the samples; needed
            by the ``percentile``, ``histogram`` and ``mse`` calibration methods).
        bins: histogram bins.

    Returns:
        ``{name: RangeStats}``.
    """
    if len(model.inputs) != 1:
        raise ValueError(f"calibration supports models with one input, {model.name!r} has "
                         f"{len(model.inputs)}")
    input_name = model.inputs[0]._keras_history.operation.name
    names = [layer.name for layer in model.layers if layer.name != input_name] \
        if layer_names is None else [n for n in layer_names if n != input_name]
    missing = [n for n in names if n not in {layer.name for layer in model.layers}]
    if missing:
        raise ValueError(f"layers {missing} are not in model {model.name!r}")
    stats: dict[str, RangeStats] = {}
    per_pass = min(num_samples, len(samples)) if isinstance(samples, np.ndarray) \
        else num_samples
    total = per_pass * epochs * (2 if histograms else 1)
    done = 0
    bar = Progress("calibrating", total=total, unit="samples", enabled=verbose)
    passes = ("ranges", "histograms") if histograms else ("ranges",)
    outputs = [model.get_layer(n).output for n in names]
    for which in passes:
        if which == "histograms" and not rereadable(samples):
            raise ValueError("histogram calibration methods read the samples twice: pass a "
                             "NumPy array or a tf.data.Dataset, not a generator")
        if which == "ranges":
            probe = _extremes_probe(model, outputs)
            chunk = chunk_size(LIVE_TENSORS * max(map(_elements, [*outputs, *model.inputs])))
        else:
            probe = keras.Model(model.inputs, outputs) if names else None
            chunk = chunk_size(sum(map(_elements, outputs))
                               + LIVE_TENSORS * max(map(_elements, [*outputs, *model.inputs])))
        for batch in iter_batches(samples, model.inputs[0].shape, num_samples, batch_size,
                                  epochs):
            if which == "ranges":
                _add_ranges(stats, input_name, names, probe, batch, chunk)
            else:
                for start in range(0, len(batch), chunk):
                    part = batch[start:start + chunk]
                    outs = probe.predict_on_batch(part) if probe is not None else []
                    if len(names) == 1:
                        outs = [outs]
                    for name, out in zip([input_name, *names], [part, *outs], strict=True):
                        stats[name].add_histogram(np.asarray(out), bins)
                    del outs
            done += len(batch)
            bar.update(done)
    bar.close()
    return stats


#: Bytes of activations one sub-batch of calibration may hold (see :func:`chunk_size`).
MEMORY_BUDGET = 256 * 2**20
#: Live activation maps assumed per sample while the probe runs (the widest tensor times this).
LIVE_TENSORS = 6


def chunk_size(elements: int, budget: int | None = None) -> int:
    """Samples per sub-batch when one sample holds ``elements`` activation values at a time
    (12 bytes each: float32 in TensorFlow plus a float64 copy) within ``budget`` bytes
    (default :data:`MEMORY_BUDGET`); at least 1.

    Example:
        >>> chunk_size(6 * 112 * 112 * 96)  # MobileNetV2 @ 224: 6 maps of its widest tensor
        3
    """
    budget = MEMORY_BUDGET if budget is None else budget
    return max(1, int(budget // (12 * max(int(elements), 1))))


def _elements(tensor) -> int:
    return math.prod(d or 1 for d in tensor.shape[1:])


def _extremes_probe(model: keras.Model, outputs) -> keras.Model | None:
    """A model whose outputs are ``(min, max)`` over every axis but the last of each tensor.

    The reduced axes are kept (size 1): under a ``tf.distribute`` strategy every replica's
    extremes come back stacked on axis 0 and :func:`_add_ranges` reduces over them.
    """
    if not outputs:
        return None
    reduced = []
    for out in outputs:
        axes = tuple(range(max(len(out.shape) - 1, 1)))
        reduced += [keras.ops.min(out, axis=axes, keepdims=True),
                    keras.ops.max(out, axis=axes, keepdims=True)]
    return keras.Model(model.inputs, reduced)


def _over_replicas(value, reduce) -> np.ndarray:
    """Reduce a probe output ``(replicas, 1, ..., 1, C)`` (or ``(replicas,)``) to ``(C,)``."""
    arr = np.asarray(value)
    return reduce(arr.reshape(-1, *arr.shape[max(arr.ndim - 1, 1):]), axis=0)


def _add_ranges(stats: dict, input_name: str, names: list, probe, batch: np.ndarray,
                chunk: int) -> None:
    """One batch's per-channel extremes (over sub-batches of ``chunk``) into ``stats``."""
    axes = tuple(range(max(batch.ndim - 1, 1)))
    lows = {input_name: batch.min(axis=axes)}
    highs = {input_name: batch.max(axis=axes)}
    for start in range(0, len(batch), chunk):
        if probe is None:
            break
        outs = probe.predict_on_batch(batch[start:start + chunk])
        for i, name in enumerate(names):
            lo, hi = _over_replicas(outs[2 * i], np.min), _over_replicas(outs[2 * i + 1], np.max)
            lows[name] = lo if name not in lows else np.minimum(lows[name], lo)
            highs[name] = hi if name not in highs else np.maximum(highs[name], hi)
    for name in (input_name, *names):
        lo = np.asarray(lows[name], np.float64)
        hi = np.asarray(highs[name], np.float64)
        if name not in stats:
            stats[name] = RangeStats(lo, hi, [hi], [-lo])
        else:
            stats[name].update_range(lo, hi)
