"""Calibration methods: how a per-channel range is chosen from the calibration statistics.

- ``max`` (the default above 4 bits): running max of ``|x|`` over all samples.
- ``moving_average``: exponential moving average (``momentum``) of per-batch maxima.
- ``mean_std``: mean + ``n_std`` x std of the per-batch maxima (Distiller's AVG + n*STD),
  never above the max.
- ``percentile``: the ``percentile`` of ``|x|`` from a histogram of ``bins`` bins.
- ``histogram``: outlier clipping: the top of the last histogram bin that still holds at least
  ``outlier_fraction`` of the values; sparse outlier bins above it are dropped.
- ``mse`` (the default at 4 bits or less, :func:`auto_method`): the power-of-two grid
  (frac_bits) that minimizes the expected squared error over the histogram: rounding noise
  ``step^2 / 12`` inside the range plus the clipping error outside.

For activations after a fused ReLU the statistics of ``max(x, 0)`` are used (and ``max_value``
caps the range); for signed activations those of ``|x|``.

Example:
    >>> m = CalibrationMethod("percentile", percentile=99.9)
    >>> m.needs_histogram
    True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from fixedq.layers.params import dataclass_from_dict

METHODS = ("max", "moving_average", "mean_std", "percentile", "histogram", "mse")
_HIST = ("percentile", "histogram", "mse")


@dataclass(frozen=True)
class CalibrationMethod:
    """A calibration method and its parameters (see the module table)."""

    name: str = "max"
    percentile: float = 99.99
    n_std: float = 3.0
    momentum: float = 0.9
    bins: int = 1024
    outlier_fraction: float = 1e-4

    def __post_init__(self):
        if self.name not in METHODS:
            raise ValueError(f"unknown calibration method {self.name!r}; allowed: {METHODS}")
        if not 0 < float(self.percentile) <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile!r}")
        if not float(self.n_std) >= 0:
            raise ValueError(f"n_std must be >= 0, got {self.n_std!r}")
        if not 0 < float(self.momentum) < 1:
            raise ValueError(f"momentum must be in (0, 1), got {self.momentum!r}")
        if isinstance(self.bins, bool) or not isinstance(self.bins, int) or self.bins < 16:
            raise ValueError(f"bins must be an integer >= 16, got {self.bins!r}")
        if not 0 <= float(self.outlier_fraction) < 1:
            raise ValueError(f"outlier_fraction must be in [0, 1), got {self.outlier_fraction!r}")

    @property
    def needs_histogram(self) -> bool:
        return self.name in _HIST

    @property
    def depends_on_bits(self) -> bool:
        """Whether the range it picks depends on the tensor's bit width (``mse``: the grid of
        that width with the least error); the others pick from the statistics alone.

        Example:
            >>> CalibrationMethod("mse").depends_on_bits, CalibrationMethod("max").depends_on_bits
            (True, False)
        """
        return self.name == "mse"

    def to_config(self) -> dict:
        return asdict(self)

    @classmethod
    def get(cls, value) -> CalibrationMethod:
        """Accept a method, its name, or its config dict.

        Example:
            >>> CalibrationMethod.get("mse").name
            'mse'
        """
        if isinstance(value, CalibrationMethod):
            return value
        if value is None:
            return cls()
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, dict):
            return dataclass_from_dict(cls, value, "calibration method")
        raise TypeError(f"a calibration method must be a name, a dict or a CalibrationMethod, "
                        f"got {type(value).__name__}")


#: Activation widths at or below which :func:`auto_method` picks ``mse`` instead of ``max``.
AUTO_MSE_BITS = 4


def auto_method(bits: int) -> CalibrationMethod:
    """The default calibration method of a tensor quantized to ``bits`` bits when none is
    given: ``mse`` at :data:`AUTO_MSE_BITS` bits or less, ``max`` above. At 4 bits a grid of
    16 levels spread up to the largest value ever seen leaves most values on a few levels;
    QAT cannot move an activation's grid afterwards (bench/studies/act4_calibration_study.md:
    the measurements behind this default).

    Example:
        >>> auto_method(4).name, auto_method(8).name
        ('mse', 'max')
    """
    return CalibrationMethod("mse") if int(bits) <= AUTO_MSE_BITS else CalibrationMethod()


def _histogram(stats, signed: bool):
    if stats.hist_pos is None:
        return None
    pos = stats.hist_pos.astype(np.int64)  # counts may be stored as uint32
    return pos + stats.hist_neg if signed else pos


def _from_histogram(hist: np.ndarray, top: np.ndarray, method: CalibrationMethod,
                    value_bits: int) -> np.ndarray:
    channels, bins = hist.shape
    width = top / bins
    total = np.maximum(hist.sum(axis=1), 1)
    out = np.array(top, dtype=np.float64)
    if method.name == "percentile":
        cum = np.cumsum(hist, axis=1) / total[:, None]
        idx = np.argmax(cum >= method.percentile / 100.0 - 1e-12, axis=1)
        return (idx + 1) * width
    if method.name == "histogram":
        keep = hist >= method.outlier_fraction * total[:, None]
        last = bins - 1 - np.argmax(keep[:, ::-1], axis=1)
        return np.where(keep.any(axis=1), (last + 1) * width, out)
    # mse: try power-of-two grids from the one that holds the max down to 6 bits finer.
    centers = (np.arange(bins) + 0.5)[None, :] * width[:, None]
    best_err = np.full(channels, np.inf)
    levels = 2.0**value_bits - 1
    for c in range(channels):
        if top[c] <= 0:
            continue
        f0 = value_bits - math.ceil(math.log2(top[c]))
        for f in range(f0 - 1, f0 + 7):
            step = 2.0**-f
            clip = levels * step
            if clip > 4 * top[c]:
                continue
            over = np.maximum(centers[c] - clip, 0.0)
            err = float(np.sum(hist[c] * (over**2 + np.where(over > 0, 0.0, step**2 / 12))))
            if err < best_err[c]:
                best_err[c], out[c] = err, min(clip, top[c])
    return out


def select_range(stats, method: CalibrationMethod, signed: bool, value_bits: int,
                 max_value=None) -> np.ndarray:
    """Per-channel range of ``stats`` for a tensor quantized to ``value_bits`` (unsigned after
    a fused ReLU with optional ``max_value``).

    Example:
        >>> from fixedq.models.calibrate import RangeStats
        >>> s = RangeStats(np.array([-2.0]), np.array([4.0]))
        >>> select_range(s, CalibrationMethod(), signed=True, value_bits=7).tolist()
        [4.0]
    """
    if signed:
        full = np.maximum(np.abs(stats.minimum), np.abs(stats.maximum))
    else:
        full = np.maximum(stats.maximum, 0.0)
    if method.name == "max":
        rng = full
    elif method.name == "moving_average":
        rng = stats.ema(stats.batch_pos, method.momentum)
        if signed:
            rng = np.maximum(rng, stats.ema(stats.batch_neg, method.momentum))
    elif method.name == "mean_std":
        mean, std = stats.mean_std_pos()
        rng = mean + method.n_std * std
        if signed:
            mean, std = stats.mean_std_neg()
            rng = np.maximum(rng, mean + method.n_std * std)
    else:
        hist = _histogram(stats, signed)
        if hist is None:
            raise ValueError(f"calibration method {method.name!r} needs histograms; calibrate "
                             "with histograms=True")
        rng = _from_histogram(hist, stats.top, method, value_bits)
    rng = np.minimum(np.maximum(np.asarray(rng, dtype=np.float64), 0.0), full)
    if not signed and max_value is not None:
        rng = np.minimum(rng, float(max_value))
    return rng
