"""Calibration: per-channel running min/max of chosen tensors of a float model, streamed.

Example:
    >>> import keras, numpy as np
    >>> x = keras.Input((3,), name="x")
    >>> model = keras.Model(x, keras.layers.Dense(2, name="fc")(x))
    >>> stats = calibrate(model, np.ones((8, 3), "float32"), verbose=False)
    >>> sorted(stats), stats["fc"].maximum.shape
    (['fc', 'x'], (2,))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np

from fixedq.models.samples import DEFAULT_NUM_SAMPLES, iter_batches
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
        lo, hi = batch.min(axis=axes), batch.max(axis=axes)
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
            self.hist_pos = np.zeros((channels, bins), dtype=np.int64)
            self.hist_neg = np.zeros((channels, bins), dtype=np.int64)
        scale = bins / self.top
        offsets = np.arange(channels) * bins
        for part, hist in ((np.maximum(flat, 0.0), self.hist_pos),
                           (np.maximum(-flat, 0.0), self.hist_neg)):
            idx = np.minimum((part * scale).astype(np.int64), bins - 1) + offsets
            nonzero = part > 0
            counts = np.bincount(idx[nonzero], minlength=channels * bins)
            hist += counts.reshape(channels, bins)
            hist[:, 0] += np.count_nonzero(~nonzero, axis=0)

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
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names]) if names \
        else None
    stats: dict[str, RangeStats] = {}
    per_pass = min(num_samples, len(samples)) if isinstance(samples, np.ndarray) \
        else num_samples
    total = per_pass * epochs * (2 if histograms else 1)
    done = 0
    bar = Progress("calibrating", total=total, unit="samples", enabled=verbose)
    passes = ("ranges", "histograms") if histograms else ("ranges",)
    for which in passes:
        if which == "histograms" and not (isinstance(samples, np.ndarray)
                                          or hasattr(samples, "as_numpy_iterator")):
            raise ValueError("histogram calibration methods read the samples twice: pass a "
                             "NumPy array or a tf.data.Dataset, not a generator")
        for batch in iter_batches(samples, model.inputs[0].shape, num_samples, batch_size,
                                  epochs):
            outputs = probe.predict_on_batch(batch) if probe is not None else []
            if len(names) == 1:
                outputs = [outputs]
            for name, out in zip([input_name, *names], [batch, *outputs], strict=True):
                out = np.asarray(out, dtype=np.float64)
                if which == "histograms":
                    stats[name].add_histogram(out, bins)
                elif name not in stats:
                    axes = tuple(range(out.ndim - 1))
                    lo, hi = out.min(axis=axes), out.max(axis=axes)
                    stats[name] = RangeStats(lo, hi, [hi], [-lo])
                else:
                    stats[name].update(out)
            done += len(batch)
            bar.update(done)
    bar.close()
    return stats
