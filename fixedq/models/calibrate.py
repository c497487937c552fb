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

import sys
from dataclasses import dataclass

import keras
import numpy as np

from fixedq.models.samples import DEFAULT_NUM_SAMPLES, iter_batches


@dataclass
class RangeStats:
    """Per-channel running minimum and maximum of one tensor (last axis = channels)."""

    minimum: np.ndarray
    maximum: np.ndarray

    def update(self, batch: np.ndarray) -> None:
        axes = tuple(range(batch.ndim - 1))
        self.minimum = np.minimum(self.minimum, batch.min(axis=axes))
        self.maximum = np.maximum(self.maximum, batch.max(axis=axes))

    def to_config(self) -> dict:
        return {"min": self.minimum.astype(float).tolist(),
                "max": self.maximum.astype(float).tolist()}

    @classmethod
    def from_config(cls, cfg: dict) -> RangeStats:
        lo = np.asarray(cfg["min"], dtype=np.float64)
        hi = np.asarray(cfg["max"], dtype=np.float64)
        if lo.shape != hi.shape or lo.ndim != 1 or not np.all(np.isfinite(lo + hi)):
            raise ValueError(f"calibration stats need equal-length finite 'min'/'max' lists, "
                             f"got {cfg!r:.120}")
        return cls(lo, hi)


def _progress(done: int, total: int, width: int = 30) -> None:
    filled = int(width * min(done, total) / max(total, 1))
    sys.stderr.write(f"\rcalibrating [{'#' * filled}{'.' * (width - filled)}] "
                     f"{min(done, total)}/{total} samples")
    sys.stderr.flush()


def calibrate(model: keras.Model, samples, layer_names=None, num_samples: int = DEFAULT_NUM_SAMPLES,
              batch_size: int | None = None, epochs: int = 1,
              verbose: bool = True) -> dict[str, RangeStats]:
    """Run ``model`` on ``samples`` and record per-channel min/max of each named layer's output.

    Args:
        model: a float Keras 3 functional model with one input.
        samples: NumPy array, ``tf.data.Dataset`` (of ``x`` or ``(x, y)``) or generator.
        layer_names: layers whose outputs are recorded (default: all); the model input's own
            name is always recorded.
        num_samples, batch_size, epochs: how much data to read (streamed, batch by batch).
        verbose: show a progress line on stderr.

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
    total = num_samples * epochs
    done = 0
    for batch in iter_batches(samples, model.inputs[0].shape, num_samples, batch_size, epochs):
        outputs = probe.predict_on_batch(batch) if probe is not None else []
        if len(names) == 1:
            outputs = [outputs]
        for name, out in zip([input_name, *names], [batch, *outputs], strict=True):
            out = np.asarray(out, dtype=np.float64)
            if name not in stats:
                axes = tuple(range(out.ndim - 1))
                stats[name] = RangeStats(out.min(axis=axes), out.max(axis=axes))
            else:
                stats[name].update(out)
        done += len(batch)
        if verbose:
            _progress(done, total)
    if verbose:
        sys.stderr.write("\n")
    return stats
