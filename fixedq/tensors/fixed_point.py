"""``FixedPoint``: integers ``v`` with static ``frac_bits`` f, representing ``x = v * 2^-f``.

A FixedPoint holds int64 ``values`` (a NumPy array for the integer engine, a Keras tensor inside
layers) plus static metadata: ``frac_bits`` (a scalar, or a vector over the last axis),
``value_bits`` (magnitude bits, sign excluded) and ``signed``. Every operation is exact or uses
one documented rounding rule; equation numbers refer to ``docs/numerics.md``.

Example:
    >>> import numpy as np
    >>> x, n_clipped = FixedPoint.from_float(np.pi, frac_bits=6, value_bits=8, signed=False)
    >>> int(x.values), x.to_float(), n_clipped
    (201, 3.140625, 0)
"""

from __future__ import annotations

import numpy as np

from fixedq.tensors import rounding
from fixedq.tensors.backend import KERAS, NUMPY, backend_of, get_backend

#: Widest magnitude an intermediate result (product, accumulator) may reach: int64.
MAX_WIDE_BITS = 63
#: Largest allowed ``|frac_bits|`` (shifts must stay inside int64).
MAX_FRAC_BITS = 62


def _check_signed(signed) -> bool:
    if not isinstance(signed, (bool, np.bool_)):
        raise TypeError(f"signed must be a bool, got {signed!r}")
    return bool(signed)


def _wide_range(value_bits: int, signed: bool) -> tuple[int, int]:
    """Eq. 1 without the 31-bit limit (used for intermediate results up to 62 bits)."""
    hi = (1 << value_bits) - 1
    return (-(1 << value_bits) if signed else 0), hi


def normalize_frac_bits(frac_bits, shape: tuple) -> np.ndarray:
    """Validate ``frac_bits`` against a values ``shape``; return a 0-d or 1-d int64 array.

    A scalar is per-tensor; a 1-d vector must have one entry per element of the last axis.

    Example:
        >>> normalize_frac_bits([1, 2, 3], (4, 3)).tolist()
        [1, 2, 3]
    """
    arr = np.asarray(frac_bits)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        if (
            np.issubdtype(arr.dtype, np.floating)
            and np.all(np.isfinite(arr))
            and np.all(arr == np.round(arr))
        ):
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"frac_bits must be integers, got {frac_bits!r}")
    arr = arr.astype(np.int64)
    last = shape[-1] if len(shape) else None
    if arr.ndim > 1 or (arr.ndim == 1 and last is not None and arr.shape[0] != last):
        raise ValueError(
            f"frac_bits must be a scalar or a vector of length {last} (the last axis of values "
            f"with shape {shape}), got frac_bits of shape {arr.shape}"
        )
    if arr.ndim == 1 and not len(shape):
        raise ValueError(
            f"per-axis frac_bits need values with at least one axis, got a scalar and "
            f"frac_bits of shape {arr.shape}"
        )
    if np.any(np.abs(arr) > MAX_FRAC_BITS):
        raise ValueError(f"frac_bits must be in [-{MAX_FRAC_BITS}, {MAX_FRAC_BITS}], got {arr}")
    return arr


def _bits_for_count(n: int) -> int:
    """``ceil(log2(n))`` for ``n >= 1`` (extra bits of a sum of n terms, eq. 11)."""
    return max(int(n) - 1, 0).bit_length()


class FixedPoint:
    """Integer values with static ``frac_bits``, ``value_bits`` and ``signed`` (``x = v·2^-f``).

    Args:
        values: integers (NumPy integer array/number, or an integer Keras tensor), cast to int64.
        frac_bits: int, or a vector with one entry per element of the last axis (per-axis).
        value_bits: magnitude bits excluding the sign, in ``[1, 31]``.
        signed: signed range ``[-2^b, 2^b-1]`` or unsigned ``[0, 2^b-1]`` (eq. 1).

    Raises ``ValueError`` naming the offending value when a raw integer is outside the range
    (checked whenever the values are concrete; inside a traced Keras graph it cannot be).

    Example:
        >>> x = FixedPoint([6, 25], frac_bits=[1, 3], value_bits=8, signed=False)
        >>> x.to_float().tolist()
        [3.0, 3.125]
    """

    __slots__ = ("values", "frac_bits", "value_bits", "signed", "backend")

    def __init__(self, values, frac_bits, value_bits: int, signed: bool = True):
        value_bits = rounding.check_value_bits(value_bits)
        be = backend_of(values)
        v = be.to_int64(values)
        self._init(be, v, frac_bits, value_bits, _check_signed(signed))
        lo, hi = self.int_range
        bad = be.first_outside(v, lo, hi)
        if bad is not None:
            kind = "signed" if self.signed else "unsigned"
            raise ValueError(
                f"raw value {bad} is outside [{lo}, {hi}], the range of a {kind} FixedPoint "
                f"with value_bits={value_bits}"
            )

    def _init(self, be, v, frac_bits, value_bits: int, signed: bool) -> None:
        self.backend = be
        self.values = v
        self.frac_bits = normalize_frac_bits(frac_bits, be.shape(v))
        self.value_bits = value_bits
        self.signed = signed

    @classmethod
    def _wide(cls, be, v, frac_bits, value_bits: int, signed: bool) -> FixedPoint:
        """Internal constructor for results up to ``MAX_WIDE_BITS`` (no range check needed:
        the width follows from eqs. 8-12)."""
        if value_bits > MAX_WIDE_BITS:
            raise ValueError(
                f"result would need value_bits={value_bits}, more than the {MAX_WIDE_BITS} an "
                "int64 holds; downscale or saturate the operands first"
            )
        obj = cls.__new__(cls)
        f = np.asarray(frac_bits, dtype=np.int64)
        shape = be.shape(v)
        if f.ndim == 1 and len(shape) and shape[-1] is not None and f.shape[0] != shape[-1]:
            f = np.broadcast_to(f, (shape[-1],)).copy()
        obj._init(be, v, f, max(int(value_bits), 1), bool(signed))
        return obj

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_float(
        cls, x, frac_bits, value_bits: int, signed: bool = True, backend: str | None = None
    ) -> tuple[FixedPoint, object]:
        """Quantize floats: ``v = sat(round_half_up(x·2^f))`` (eq. 4; eqs. 2 and 3).

        Rounding is to nearest with ties toward +inf; values outside the range of eq. 1
        saturate. Returns ``(FixedPoint, n_clipped)`` (an ``int`` for NumPy, an int64 scalar
        tensor for Keras). ``backend`` forces ``"numpy"`` or ``"keras"``; by default it follows
        the type of ``x``. Non-finite inputs raise ``ValueError``.

        Example:
            >>> x, n = FixedPoint.from_float([3.14159, 300.0], 3, value_bits=8, signed=False)
            >>> x.values.tolist(), n
            ([25, 255], 1)
        """
        value_bits = rounding.check_value_bits(value_bits)
        signed = _check_signed(signed)
        be = get_backend(backend, x)
        xf = be.to_float64(x)
        if be is KERAS and backend_of(x) is NUMPY:
            xf = KERAS.convert_float64(xf)
        be.check_finite(xf)
        f = normalize_frac_bits(frac_bits, be.shape(xf))
        lo, hi = rounding.int_range(value_bits, signed)
        v, n_clipped = be.quantize(xf, f, lo, hi)
        return cls._wide(be, v, f, value_bits, signed), n_clipped

    def to_float(self):
        """The represented real numbers ``v·2^-f`` as float64 (exact below 2^53).

        Example:
            >>> FixedPoint(201, 6, 8, signed=False).to_float()
            3.140625
        """
        out = self.backend.ldexp(self.values, -self.frac_bits)
        return float(out) if self.backend is NUMPY and np.ndim(out) == 0 else out

    def to_numpy(self) -> FixedPoint:
        """The same FixedPoint with NumPy values (e.g. to compare a Keras result with the engine).

        Example:
            >>> FixedPoint([1, 2], 0, 3).to_numpy().values.tolist()
            [1, 2]
        """
        v = np.asarray(self.backend.numpy(self.values), dtype=np.int64)
        return FixedPoint._wide(NUMPY, v, self.frac_bits, self.value_bits, self.signed)

    def to_keras(self) -> FixedPoint:
        """The same FixedPoint with int64 Keras tensor values."""
        v = self.values if self.backend is KERAS else KERAS.convert_int64(self.values)
        return FixedPoint._wide(KERAS, v, self.frac_bits, self.value_bits, self.signed)

    # ------------------------------------------------------------------ properties
    @property
    def int_range(self) -> tuple[int, int]:
        """``(lo, hi)`` of eq. 1 for this FixedPoint's ``value_bits``/``signed``."""
        return _wide_range(self.value_bits, self.signed)

    @property
    def per_axis(self) -> bool:
        """True when ``frac_bits`` is a vector over the last axis."""
        return self.frac_bits.ndim == 1

    @property
    def shape(self) -> tuple:
        return self.backend.shape(self.values)

    def __repr__(self) -> str:
        f = self.frac_bits.tolist()
        return (
            f"FixedPoint(shape={self.shape}, frac_bits={f}, value_bits={self.value_bits}, "
            f"signed={self.signed}, backend={self.backend.name})"
        )

    # ------------------------------------------------------------------ precision changes
    def _shifted(self, shift: np.ndarray, new_frac: np.ndarray) -> FixedPoint:
        """Eq. 5 per axis; width per eq. 12 (left shift grows, rounding right shift shrinks)."""
        shift = np.asarray(shift, dtype=np.int64)
        if self.value_bits >= MAX_WIDE_BITS and np.any(shift > 0):
            raise ValueError(
                f"cannot round a {self.value_bits}-bit FixedPoint: the half-LSB of eq. 5 could "
                "overflow int64; saturate it to at most 62 value bits first"
            )
        v = self.backend.shift_round(self.values, shift)
        widths = self.value_bits - shift + (shift > 0)  # rounding can reach 2^(b-s)
        bits = int(np.max(widths)) if widths.size else self.value_bits
        return FixedPoint._wide(self.backend, v, new_frac, max(bits, 1), self.signed)

    def _target(self, frac_bits) -> np.ndarray:
        f = normalize_frac_bits(frac_bits, self.shape)
        return np.broadcast_to(f, np.broadcast_shapes(f.shape, self.frac_bits.shape)).copy()

    def upscale(self, frac_bits) -> FixedPoint:
        """More fractional bits, exactly: ``v' = v·2^(f'-f)`` (eqs. 5 and 8); ``value_bits`` grows.

        Example:
            >>> FixedPoint(3, 1, 4).upscale(3).values.item()
            12
        """
        target = self._target(frac_bits)
        if np.any(target < self.frac_bits):
            raise ValueError(
                f"upscale needs frac_bits >= the current {self.frac_bits.tolist()}, got "
                f"{np.asarray(frac_bits).tolist()}; use downscale or rescale to drop bits"
            )
        return self._shifted(self.frac_bits - target, target)

    def downscale(self, frac_bits) -> FixedPoint:
        """Fewer fractional bits, rounding half up: ``v' = shift_round(v, f - f')`` (eq. 5, 12).

        Example:
            >>> FixedPoint([5, -5], 1, 4).downscale(0).values.tolist()   # 2.5 -> 3, -2.5 -> -2
            [3, -2]
        """
        target = self._target(frac_bits)
        if np.any(target > self.frac_bits):
            raise ValueError(
                f"downscale needs frac_bits <= the current {self.frac_bits.tolist()}, got "
                f"{np.asarray(frac_bits).tolist()}; use upscale or rescale to add bits"
            )
        return self._shifted(self.frac_bits - target, target)

    def align(self, frac_bits) -> FixedPoint:
        """Change ``frac_bits`` per axis with eq. 5 (exact where it grows, rounded where it
        shrinks); no saturation. ``align(f).frac_bits == f`` broadcast to this shape.

        Example:
            >>> FixedPoint([5, 5], [1, 1], 4).align([2, 0]).values.tolist()
            [10, 3]
        """
        target = self._target(frac_bits)
        shift = self.frac_bits - target
        if np.all(shift <= 0):
            return self.upscale(target)
        if np.all(shift >= 0):
            return self.downscale(target)
        grown = self.upscale(np.maximum(self.frac_bits, target))
        return grown.downscale(target)

    def saturate(self, value_bits: int, signed: bool | None = None) -> tuple[FixedPoint, object]:
        """Clip into the range of ``value_bits``/``signed`` (eqs. 1, 3); returns the clip count.

        Example:
            >>> y, n = FixedPoint([-300, 5, 300], 0, 10).saturate(7)
            >>> y.values.tolist(), n
            ([-128, 5, 127], 2)
        """
        value_bits = rounding.check_value_bits(value_bits)
        signed = self.signed if signed is None else _check_signed(signed)
        lo, hi = rounding.int_range(value_bits, signed)
        v, n = self.backend.saturate(self.values, lo, hi)
        return FixedPoint._wide(self.backend, v, self.frac_bits, value_bits, signed), n

    def rescale(
        self, frac_bits, value_bits: int, signed: bool | None = None
    ) -> tuple[FixedPoint, object]:
        """Precision change: ``v' = sat(shift_round(v, f - f'))`` (eq. 12); returns clip count.

        Example:
            >>> y, n = FixedPoint(201, 6, 8, signed=False).rescale(3, 8, signed=False)
            >>> y.values.item(), n    # 3.140625 -> 3.125 at 3 fractional bits
            (25, 0)
        """
        return self.align(frac_bits).saturate(value_bits, signed)

    # ------------------------------------------------------------------ arithmetic
    def _coerce(self, other, op: str) -> FixedPoint:
        if not isinstance(other, FixedPoint):
            raise TypeError(
                f"FixedPoint {op} needs another FixedPoint, got {type(other).__name__}; "
                "quantize it first with FixedPoint.from_float"
            )
        if other.backend is not self.backend:
            raise TypeError(
                f"cannot combine a {self.backend.name} FixedPoint with a {other.backend.name} "
                "one; convert with to_numpy() or to_keras()"
            )
        return other

    def _aligned_pair(self, other: FixedPoint) -> tuple[FixedPoint, FixedPoint]:
        """Eq. 8: both operands at ``f = max(f_a, f_b)`` by exact left shifts."""
        f = np.maximum(self.frac_bits, other.frac_bits)
        fa = np.broadcast_to(f, np.broadcast_shapes(f.shape, self.frac_bits.shape))
        fb = np.broadcast_to(f, np.broadcast_shapes(f.shape, other.frac_bits.shape))
        return self._shifted(self.frac_bits - fa, fa.copy()), other._shifted(
            other.frac_bits - fb, fb.copy()
        )

    def _addsub(self, other, sub: bool) -> FixedPoint:
        other = self._coerce(other, "-" if sub else "+")
        a, b = self._aligned_pair(other)
        op = self.backend.subtract if sub else self.backend.add
        v = op(a.values, b.values)
        bits = max(a.value_bits, b.value_bits) + 1  # eq. 9
        signed = a.signed or b.signed or sub
        f = np.maximum(a.frac_bits, b.frac_bits)
        return FixedPoint._wide(self.backend, v, f, bits, signed)

    def __add__(self, other) -> FixedPoint:
        """Exact sum after alignment (eqs. 8, 9).

        Example:
            >>> (FixedPoint(3, 1, 4) + FixedPoint(1, 2, 4)).to_float()   # 1.5 + 0.25
            1.75
        """
        return self._addsub(other, sub=False)

    def __sub__(self, other) -> FixedPoint:
        """Exact difference after alignment (eqs. 8, 9); the result is signed.

        Example:
            >>> (FixedPoint(3, 1, 4) - FixedPoint(1, 2, 4)).to_float()
            1.25
        """
        return self._addsub(other, sub=True)

    def __neg__(self) -> FixedPoint:
        """Exact negation (eq. 9 with a zero operand); signed ``-(-2^b)`` needs one more bit.

        Example:
            >>> (-FixedPoint(-8, 0, 3)).values.item()
            8
        """
        bits = self.value_bits + 1 if self.signed else self.value_bits
        v = self.backend.negative(self.values)
        return FixedPoint._wide(self.backend, v, self.frac_bits, bits, True)

    def __mul__(self, other) -> FixedPoint:
        """Exact product: ``v = v_a·v_b``, ``f = f_a + f_b`` (eq. 10).

        Example:
            >>> p = FixedPoint(3, 1, 4) * FixedPoint(-5, 2, 4)   # 1.5 * -1.25
            >>> p.to_float(), p.frac_bits.item(), p.value_bits
            (-1.875, 3, 9)
        """
        if not isinstance(other, FixedPoint):
            return NotImplemented
        other = self._coerce(other, "*")
        v = self.backend.multiply(self.values, other.values)
        f = self.frac_bits + other.frac_bits
        bits = self.value_bits + other.value_bits + int(self.signed and other.signed)
        return FixedPoint._wide(self.backend, v, f, bits, self.signed or other.signed)

    def sum(self, axis=None, keepdims: bool = False) -> FixedPoint:
        """Exact sum over ``axis`` (eq. 11); per-axis ``frac_bits`` are aligned first (eq. 8)
        when the last axis is reduced. Width grows by ``ceil(log2(n))`` bits.

        Example:
            >>> s = FixedPoint([[1, 2], [3, 4]], [0, 1], 4).sum()   # 1 + 1 + 3 + 2
            >>> s.to_float(), s.frac_bits.item(), s.value_bits
            (7.0, 1, 7)
        """
        shape = self.shape
        ndim = len(shape)
        axes = (
            tuple(range(ndim))
            if axis is None
            else (tuple(axis) if isinstance(axis, (tuple, list)) else (axis,))
        )
        axes = tuple(sorted({int(a) % ndim for a in axes})) if ndim else ()
        n = 1
        for a in axes:
            if shape[a] is None:
                raise ValueError(f"sum needs a static size for axis {a}, got shape {shape}")
            n *= int(shape[a])
        src = self
        f = self.frac_bits
        if ndim and (ndim - 1) in axes:
            f = np.asarray(np.max(self.frac_bits) if self.frac_bits.size else 0, dtype=np.int64)
            src = self.upscale(f) if self.per_axis else self
        ax = axes if axis is not None else None
        v = self.backend.sum(src.values, ax, keepdims)
        if ndim and (ndim - 1) in axes and keepdims:
            f = f.reshape(())
        bits = src.value_bits + _bits_for_count(n)
        return FixedPoint._wide(self.backend, v, f, bits, self.signed)

    def __matmul__(self, other) -> FixedPoint:
        """Exact matrix product (eqs. 10, 11): ``(..., K) @ (K, N)``.

        ``self`` may have per-axis ``frac_bits`` over K (aligned first, eq. 8); ``other``'s
        per-axis ``frac_bits`` over N carry through; ``f = f_a + f_b``.

        Example:
            >>> a = FixedPoint([[1, 2]], 1, 4)
            >>> w = FixedPoint([[1, 0], [1, 1]], [0, 2], 4)
            >>> (a @ w).to_float().tolist()     # [0.5, 1] @ [[1, 0], [1, 0.25]]
            [[1.5, 0.25]]
        """
        if not isinstance(other, FixedPoint):
            return NotImplemented
        other = self._coerce(other, "@")
        sa, sb = self.shape, other.shape
        if len(sa) < 1 or len(sb) != 2:
            raise ValueError(f"matmul needs shapes (..., K) @ (K, N), got {sa} @ {sb}")
        k = sb[0]
        if k is None:
            raise ValueError(f"matmul needs a static contraction size K, got shape {sb}")
        a = self.upscale(np.max(self.frac_bits)) if self.per_axis else self
        f = np.max(a.frac_bits) + other.frac_bits  # a is aligned: one frac_bits over K
        bits = (
            a.value_bits
            + other.value_bits
            + int(a.signed and other.signed)
            + _bits_for_count(int(k))
        )
        if bits > MAX_WIDE_BITS:  # fail before computing (eq. 11 bound)
            FixedPoint._wide(self.backend, a.values, 0, bits, True)
        v = self.backend.matmul(a.values, other.values, bits)
        return FixedPoint._wide(self.backend, v, f, bits, a.signed or other.signed)


def accumulator_bits(
    value_bits_a: int, value_bits_b: int, fan_in: int, signed_a: bool = True, signed_b: bool = True
) -> int:
    """Magnitude bits of a sum of ``fan_in`` products (eqs. 10, 11).

    Example:
        >>> accumulator_bits(7, 8, 3 * 3 * 64, signed_a=True, signed_b=False)
        25
    """
    if int(fan_in) < 1:
        raise ValueError(f"fan_in must be >= 1, got {fan_in}")
    return (
        int(value_bits_a)
        + int(value_bits_b)
        + int(signed_a and signed_b)
        + _bits_for_count(int(fan_in))
    )


__all__ = ["FixedPoint", "accumulator_bits", "normalize_frac_bits", "MAX_WIDE_BITS"]
