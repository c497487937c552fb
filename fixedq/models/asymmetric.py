"""Asymmetric activation windows: calibrated ``[low, high]`` per channel (docs/accuracy.md).

A symmetric signed n-bit activation spends half of its 2^n integers on negative values even
when a tensor is mostly positive (a linear bottleneck, a BatchNormalization output, logits).
With ``asymmetric_activations=True`` the integer window ``[lo, lo + 2^n - 1]`` of each
channel is placed to fit the calibrated range instead, which can buy one more fractional bit
(eqs. 35-37 of docs/numerics.md). The calibration method clips each side on its own: the
negative side is handled as the positive side of the mirrored statistics.

Example:
    >>> import numpy as np
    >>> from fixedq.models.calibrate import RangeStats
    >>> from fixedq.models.calibration_methods import CalibrationMethod
    >>> low, high = select_window(RangeStats(np.array([-0.1]), np.array([3.0])),
    ...                           CalibrationMethod(), bits=4)
    >>> low.tolist(), high.tolist()
    ([-0.1], [3.0])
"""

from __future__ import annotations

import numpy as np

from fixedq.models.calibrate import RangeStats
from fixedq.models.calibration_methods import CalibrationMethod, select_range


def mirrored(stats: RangeStats) -> RangeStats:
    """The statistics of ``-x`` given those of ``x``.

    Example:
        >>> m = mirrored(RangeStats(np.array([-1.0]), np.array([2.0])))
        >>> m.minimum.tolist(), m.maximum.tolist()
        ([-2.0], [1.0])
    """
    return RangeStats(-stats.maximum, -stats.minimum, list(stats.batch_neg),
                      list(stats.batch_pos), stats.hist_neg, stats.hist_pos)


def select_window(stats: RangeStats, method: CalibrationMethod,
                  bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(low, high)`` of an asymmetric ``bits``-bit window chosen by ``method``.

    Each side is clipped by ``method`` as an unsigned tensor of ``bits - 1`` value bits (the
    share of the window a symmetric spec would give it), so ``"max"`` keeps the running
    extremes. ``low <= 0 <= high``.
    """
    high = select_range(stats, method, signed=False, value_bits=max(bits - 1, 1))
    low = -select_range(mirrored(stats), method, signed=False, value_bits=max(bits - 1, 1))
    return low, high


def clip_window(stats: RangeStats, magnitude) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)`` of the calibrated extremes clipped to ``[-magnitude, magnitude]`` (a
    q-config ``range`` override applied to an asymmetric tensor)."""
    mag = np.asarray(magnitude, dtype=np.float64)
    return np.maximum(np.minimum(stats.minimum, 0.0), -mag), np.minimum(
        np.maximum(stats.maximum, 0.0), mag)
