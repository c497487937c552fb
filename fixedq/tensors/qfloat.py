"""``QFloat``: a FixedPoint times a per-axis float scale, ``x = v·2^-f·s`` (eq. 13).

Weights are stored as QFloats (eq. 14: symmetric, per output channel, ``frac_bits = 0``). At
inference the float scale never touches the value path: it is folded, together with the input and
output ``frac_bits``, into an integer multiplier and a shift per channel (eqs. 6 and 13), and the
accumulator is requantized with eq. 7.

Example:
    >>> import numpy as np
    >>> w = QFloat.from_float(np.array([[0.5, -2.0], [-0.25, 1.0]]), value_bits=7)
    >>> w.fp.values.tolist(), w.scales.tolist()
    ([[127, -127], [-63, 64]], [0.003937007874015748, 0.015748031496062992])
"""

from __future__ import annotations

import numpy as np

from fixedq.tensors import rounding
from fixedq.tensors.backend import KERAS, NUMPY, backend_of, get_backend
from fixedq.tensors.fixed_point import FixedPoint, normalize_frac_bits

DEFAULT_SCALE_BITS = 8
#: Effective scales below this fold to ``M = 0`` (eq. 13b).
TINY_SCALE = 2.0**-100


def _check_scales(scales, shape: tuple, be):
    """Validate a NumPy scale (scalar or vector over the last axis): finite and ``>= 0``."""
    if be is KERAS and not isinstance(scales, (np.ndarray, np.generic, float, int, list)):
        return scales  # an in-graph tensor (e.g. computed from a trainable kernel)
    arr = np.asarray(scales, dtype=np.float64)
    last = shape[-1] if len(shape) else None
    if arr.ndim > 1 or (arr.ndim == 1 and (last is None or arr.shape[0] != last)):
        raise ValueError(
            f"scales must be a scalar or a vector of length {last} (the last axis of values with "
            f"shape {shape}), got scales of shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        bad = arr[~(np.isfinite(arr) & (arr >= 0))].ravel()[0]
        raise ValueError(f"scales must be finite and >= 0, got {bad}")
    return arr


class QFloat:
    """A :class:`FixedPoint` ``fp`` times float ``scales`` over its last axis (eq. 13).

    Args:
        fp: the integer part.
        scales: non-negative finite floats, a scalar or one per element of the last axis
            (NumPy, or a float64 Keras tensor when the FixedPoint is a Keras one).

    Example:
        >>> q = QFloat(FixedPoint([3, -4], 1, 7), [0.5, 2.0])
        >>> q.to_float().tolist()      # [1.5 * 0.5, -2 * 2]
        [0.75, -4.0]
    """

    __slots__ = ("fp", "scales")

    def __init__(self, fp: FixedPoint, scales):
        if not isinstance(fp, FixedPoint):
            raise TypeError(f"QFloat needs a FixedPoint, got {type(fp).__name__}")
        self.fp = fp
        self.scales = _check_scales(scales, fp.shape, fp.backend)

    @property
    def backend(self):
        return self.fp.backend

    def __repr__(self) -> str:
        return f"QFloat({self.fp!r}, scales shape={tuple(np.shape(self.scales))})"

    @classmethod
    def from_float(
        cls,
        x,
        value_bits: int,
        signed: bool = True,
        per_axis: bool = True,
        backend: str | None = None,
    ) -> QFloat:
        """Symmetric quantization (eq. 14): ``s = max|x| / (2^b - 1)``, ``v = round_half_up(x/s)``.

        ``s`` is per element of the last axis (the output channel of a kernel) when
        ``per_axis``, else per tensor; ``frac_bits`` is 0. An all-zero channel gets ``s = 0``
        and ``v = 0``. Non-finite inputs raise ``ValueError``.

        Example:
            >>> q = QFloat.from_float([0.5, -1.0, 0.25], value_bits=3, per_axis=False)
            >>> q.fp.values.tolist(), float(q.scales)
            ([4, -7, 2], 0.14285714285714285)
        """
        b = rounding.check_value_bits(value_bits)
        be = get_backend(backend, x)
        xf = be.to_float64(x)
        if be is KERAS and backend_of(x) is NUMPY:
            xf = KERAS.convert_float64(xf)
        be.check_finite(xf)
        ndim = len(be.shape(xf))
        axes = tuple(range(ndim - 1)) if per_axis and ndim else None
        m = be.max_abs(xf, axes)
        # Channels with max|x| < 2^-100 count as all-zero (s = 0): keeps subnormals, which
        # TensorFlow flushes to zero, out of the arithmetic so both backends agree.
        if be is NUMPY:
            s = np.where(np.asarray(m) < TINY_SCALE, 0.0, np.asarray(m) / float((1 << b) - 1))
        else:
            ops = KERAS.ops
            s = ops.where(m < TINY_SCALE, ops.zeros_like(m), m / float((1 << b) - 1))
        v = be.round_half_up(be.divide_or_zero(xf, s))
        lo, hi = rounding.int_range(b, signed)
        v, _ = be.saturate(v, lo, hi)
        return cls(FixedPoint._wide(be, v, 0, b, signed), s)

    def to_float(self):
        """``v·2^-f·s`` in float64.

        Example:
            >>> QFloat(FixedPoint(5, 2, 4), 3.0).to_float()
            3.75
        """
        out = self.fp.to_float()
        if self.backend is KERAS:
            return out * self.scales
        result = np.asarray(out) * self.scales
        return float(result) if result.ndim == 0 else result

    def multiplier_shift(self, frac_bits, scale_bits: int = DEFAULT_SCALE_BITS):
        """Integer ``(M, S)`` with ``M·2^-S ≈ s·2^(f_out - f)`` (eqs. 6, 13, 13b: ``S <= 62``).

        Example:
            >>> q = QFloat(FixedPoint([1], 2, 7), [0.75])
            >>> [a.tolist() for a in q.multiplier_shift(frac_bits=2)]
            [[192], [8]]
        """
        f_out = normalize_frac_bits(frac_bits, self.fp.shape)
        exponent = np.asarray(f_out - self.fp.frac_bits, dtype=np.int64)
        # Scales below 2^-100 would give S > 62 + scale_bits + 1, i.e. M = 0 after eq. 13b:
        # flush them to 0 first so no subnormal float reaches eq. 6 (identical on both backends).
        if self.backend is NUMPY:
            effective = np.ldexp(self.scales, exponent)
            effective = np.where(effective < TINY_SCALE, 0.0, effective)
        else:
            ops = KERAS.ops
            effective = ops.cast(self.scales, "float64") * np.ldexp(1.0, exponent)
            effective = ops.where(effective < TINY_SCALE, ops.zeros_like(effective), effective)
        m, s = self.backend.to_multiplier_shift(effective, scale_bits)
        return self.backend.clamp_shift(m, s, scale_bits)

    def to_fixed_point(
        self,
        frac_bits,
        value_bits: int,
        signed: bool = True,
        scale_bits: int = DEFAULT_SCALE_BITS,
    ) -> tuple[FixedPoint, object]:
        """Requantize to a FixedPoint: ``y = sat(shift_round(v·M, S))`` (eqs. 7, 13).

        Returns ``(FixedPoint, n_clipped)``.

        Example:
            >>> q = QFloat(FixedPoint([100, 1000], 0, 15), 0.75)
            >>> y, n = q.to_fixed_point(frac_bits=0, value_bits=7)
            >>> y.values.tolist(), n
            ([75, 127], 1)
        """
        b = rounding.check_value_bits(value_bits)
        f_out = normalize_frac_bits(frac_bits, self.fp.shape)
        m, s = self.multiplier_shift(f_out, scale_bits)
        lo, hi = rounding.int_range(b, signed)
        v, n = self.backend.requantize(self.fp.values, m, s, lo, hi)
        return FixedPoint._wide(self.backend, v, f_out, b, signed), n

    def quantize_onto(self, x, value_bits: int = 31) -> tuple[QFloat, object]:
        """Quantize floats onto this QFloat's grid (eq. 16, the bias):
        ``v = sat(round_half_up(x·2^f / s))``, same ``frac_bits`` and ``scales``.

        Returns ``(QFloat, n_clipped)``; ``x`` broadcasts against the last axis.

        Example:
            >>> acc = QFloat(FixedPoint([0, 0], 4, 20), [0.5, 0.25])
            >>> b, n = acc.quantize_onto([1.0, 1.0])
            >>> b.fp.values.tolist()        # 1.0 * 16 / 0.5, 1.0 * 16 / 0.25
            [32, 64]
        """
        b = rounding.check_value_bits(value_bits)
        be = self.backend
        xf = be.to_float64(x)
        if be is KERAS and backend_of(x) is NUMPY:
            xf = KERAS.convert_float64(xf)
        be.check_finite(xf)
        f = self.fp.frac_bits
        scaled = be.divide_or_zero(be.ldexp(xf, f), self.scales)
        lo, hi = rounding.int_range(b, True)
        v, n = be.saturate(be.round_half_up(scaled), lo, hi)
        return QFloat(FixedPoint._wide(be, v, f, b, True), self.scales), n

    # ------------------------------------------------------------------ arithmetic
    def __mul__(self, other) -> QFloat:
        """``QFloat × FixedPoint``: exact integer product, scales carried (eqs. 10, 13).

        Example:
            >>> (QFloat(FixedPoint(3, 0, 4), 0.5) * FixedPoint(2, 1, 4)).to_float()
            1.5
        """
        if not isinstance(other, FixedPoint):
            return NotImplemented
        return QFloat(self.fp * other, self.scales)

    __rmul__ = __mul__

    def __rmatmul__(self, other) -> QFloat:
        """``FixedPoint @ QFloat`` (a dense layer): ``(x @ w.fp)`` with ``w``'s scales (eq. 17).

        Example:
            >>> x = FixedPoint([[2, 4]], 1, 7)
            >>> w = QFloat(FixedPoint([[1, 0], [1, 1]], 0, 7), [0.5, 0.25])
            >>> (x @ w).to_float().tolist()       # [1, 2] @ [[0.5, 0], [0.5, 0.25]]
            [[1.5, 0.5]]
        """
        if not isinstance(other, FixedPoint):
            return NotImplemented
        return QFloat(other @ self.fp, self.scales)

    def __add__(self, other) -> QFloat:
        """Exact sum of two QFloats sharing the same scales (e.g. accumulator + bias, eq. 17).

        Example:
            >>> a = QFloat(FixedPoint([1, 2], 0, 7), [0.5, 0.25])
            >>> (a + a).fp.values.tolist()
            [2, 4]
        """
        if not isinstance(other, QFloat):
            return NotImplemented
        same = other.scales is self.scales
        if (
            not same
            and isinstance(self.scales, np.ndarray)
            and isinstance(other.scales, np.ndarray)
        ):
            same = self.scales.shape == other.scales.shape and bool(
                np.all(self.scales == other.scales)
            )
        if not same:
            raise ValueError("QFloat + QFloat needs identical scales; requantize one side first")
        return QFloat(self.fp + other.fp, self.scales)


__all__ = ["QFloat", "DEFAULT_SCALE_BITS"]
