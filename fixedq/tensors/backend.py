"""Two tiny array namespaces so one :class:`~fixedq.tensors.FixedPoint` works on both executors.

``NUMPY`` wraps :mod:`fixedq.tensors.rounding` (the integer engine's arithmetic) and ``KERAS``
wraps :mod:`fixedq.tensors.kops` (the same equations with ``keras.ops``). Both expose the same
handful of functions; every arithmetic one cites its equation in ``docs/numerics.md``. Keras is
imported lazily, only when a Keras tensor is actually used, so the NumPy path (and therefore
``fixedq.engine``) never imports TensorFlow.

Example:
    >>> import numpy as np
    >>> backend_of(np.array([1, 2])).name
    'numpy'
    >>> NUMPY.shift_round(np.array([5, -5]), 1).tolist()   # eq. 5, half up
    [3, -2]
"""

from __future__ import annotations

import numbers

import numpy as np

from fixedq.tensors import rounding

#: Largest requantization shift (eq. 13b): keeps ``2^(S-1)`` and ``acc·M`` inside int64.
MAX_SHIFT = 62


def _is_numpy_like(values) -> bool:
    return isinstance(values, (np.ndarray, np.generic, numbers.Number, list, tuple))


class _NumpyBackend:
    """NumPy namespace: int64 ``ndarray`` values, Python ``int`` clip counts."""

    name = "numpy"

    def owns(self, values) -> bool:
        return _is_numpy_like(values)

    def to_int64(self, values):
        arr = np.asarray(values)
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(
                f"raw FixedPoint values must be integers, got an array of dtype {arr.dtype}; "
                "use FixedPoint.from_float to quantize floats"
            )
        return arr.astype(np.int64)

    def to_float64(self, x):
        arr = np.asarray(x)
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(f"expected real numbers, got an array of dtype {arr.dtype}")
        return arr.astype(np.float64)

    def check_finite(self, x) -> None:
        if not np.all(np.isfinite(x)):
            bad = np.asarray(x)[~np.isfinite(x)].ravel()[0]
            raise ValueError(
                f"cannot quantize non-finite value {bad}; inputs must be finite floats"
            )

    def first_outside(self, v, lo: int, hi: int):
        """The first value outside ``[lo, hi]``, or ``None`` when all are inside."""
        bad = (v < lo) | (v > hi)
        return int(v[bad].ravel()[0]) if np.any(bad) else None

    def shape(self, v) -> tuple:
        return tuple(np.shape(v))

    def quantize(self, x, frac_bits, lo: int, hi: int):
        """Eq. 4 on float64 ``x``: returns ``(v, n_clipped)``."""
        scaled = np.ldexp(x, np.asarray(frac_bits, dtype=np.int64))
        return rounding.saturate(rounding.round_half_up(scaled), lo, hi)

    def round_half_up(self, x):
        """Eq. 2."""
        return rounding.round_half_up(x)

    def saturate(self, v, lo: int, hi: int):
        """Eq. 3: returns ``(clipped, n_clipped)``."""
        return rounding.saturate(v, lo, hi)

    def shift_round(self, v, shift):
        """Eq. 5 with a static (per-axis) shift."""
        return rounding.shift_round(v, shift)

    def to_multiplier_shift(self, scale, scale_bits: int):
        """Eq. 6."""
        return rounding.to_multiplier_shift(scale, scale_bits)

    def clamp_shift(self, m, s, scale_bits: int, max_shift: int = MAX_SHIFT):
        """Eq. 13b: shifts above ``max_shift`` are folded into ``M`` (rounded half up, eq. 5), so
        every shift stays inside int64; such tiny scales give ``M = 0``."""
        extra = np.minimum(np.maximum(s - max_shift, 0), scale_bits + 1)
        return rounding.shift_round(m, extra), np.minimum(s, max_shift)

    def requantize(self, acc, multiplier, shift, lo: int, hi: int):
        """Eq. 7, also returning how many values clipped."""
        prod = np.asarray(acc, dtype=np.int64) * np.asarray(multiplier, dtype=np.int64)
        return rounding.saturate(rounding.shift_round(prod, shift), lo, hi)

    def ldexp(self, v, exponent):
        """``v * 2^exponent`` in float64 (exact for integers below 2^53)."""
        return np.ldexp(np.asarray(v, dtype=np.float64), np.asarray(exponent, dtype=np.int64))

    def multiply(self, a, b):
        return np.multiply(a, b)

    def add(self, a, b):
        return np.add(a, b)

    def subtract(self, a, b):
        return np.subtract(a, b)

    def negative(self, a):
        return np.negative(a)

    def sum(self, v, axis, keepdims: bool):
        return np.sum(v, axis=axis, keepdims=keepdims, dtype=np.int64)

    def matmul(self, a, b, value_bits: int):
        """Exact int64 matmul (NumPy integer matmul never rounds)."""
        return np.matmul(a, b)

    def max_abs(self, x, axis):
        return np.max(np.abs(x), axis=axis) if np.size(x) else np.zeros(())

    def divide_or_zero(self, x, s):
        """``x / s`` where ``s > 0`` and 0 where ``s == 0`` (float64)."""
        safe = np.where(s > 0, s, 1.0)
        return np.where(s > 0, x / safe, 0.0)

    def numpy(self, v):
        return np.asarray(v)


class _KerasBackend:
    """``keras.ops`` namespace: int64 tensors, int64 scalar-tensor clip counts."""

    name = "keras"

    @property
    def ops(self):
        from keras import ops

        return ops

    @property
    def kops(self):
        from fixedq.tensors import kops

        return kops

    def owns(self, values) -> bool:
        return not _is_numpy_like(values)

    def to_int64(self, values):
        from keras import backend

        dtype = str(backend.standardize_dtype(values.dtype))
        if not dtype.startswith(("int", "uint")):
            raise TypeError(
                f"raw FixedPoint values must be integers, got a tensor of dtype {dtype}; "
                "use FixedPoint.from_float to quantize floats"
            )
        return self.ops.cast(values, "int64")

    def to_float64(self, x):
        return self.ops.cast(x, "float64")

    def _eager(self, x):
        try:
            return self.ops.convert_to_numpy(x)
        except Exception:  # symbolic tensor inside a traced graph: no eager check possible
            return None

    def check_finite(self, x) -> None:
        arr = self._eager(x)
        if arr is not None:
            NUMPY.check_finite(arr)

    def first_outside(self, v, lo: int, hi: int):
        arr = self._eager(v)
        return None if arr is None else NUMPY.first_outside(arr, lo, hi)

    def shape(self, v) -> tuple:
        return tuple(v.shape)

    def quantize(self, x, frac_bits, lo: int, hi: int):
        """Eq. 4 with ``keras.ops``; the count is an int64 scalar tensor."""
        scale = np.ldexp(1.0, np.asarray(frac_bits, dtype=np.int64))
        return self.saturate(self.kops.round_half_up(x * scale), lo, hi)

    def round_half_up(self, x):
        """Eq. 2."""
        return self.kops.round_half_up(x)

    def saturate(self, v, lo: int, hi: int):
        """Eq. 3: returns ``(clipped, n_clipped)``."""
        v = self.ops.cast(v, "int64")
        out = self.kops.saturate(v, lo, hi)
        count = self.ops.sum(self.ops.cast(self.ops.not_equal(out, v), "int64"))
        return out, count

    def shift_round(self, v, shift):
        """Eq. 5 with a static (per-axis) shift."""
        return self.kops.shift_round(v, shift)

    def to_multiplier_shift(self, scale, scale_bits: int):
        """Eq. 6 (in-graph)."""
        return self.kops.to_multiplier_shift(scale, scale_bits)

    def clamp_shift(self, m, s, scale_bits: int, max_shift: int = MAX_SHIFT):
        """Eq. 13b in-graph (see the NumPy twin)."""
        ops = self.ops
        extra = ops.minimum(ops.maximum(s - max_shift, 0), scale_bits + 1)
        return self.kops.shift_round_dynamic(m, extra), ops.minimum(s, max_shift)

    def requantize(self, acc, multiplier, shift, lo: int, hi: int):
        """Eq. 7 with (possibly in-graph) ``M`` and ``S``, also returning the clip count."""
        prod = self.ops.cast(acc, "int64") * self.ops.cast(multiplier, "int64")
        return self.saturate(self.kops.shift_round_dynamic(prod, shift), lo, hi)

    def ldexp(self, v, exponent):
        return self.ops.cast(v, "float64") * np.ldexp(1.0, np.asarray(exponent, dtype=np.int64))

    def multiply(self, a, b):
        return self.ops.multiply(a, b)

    def add(self, a, b):
        return self.ops.add(a, b)

    def subtract(self, a, b):
        return self.ops.subtract(a, b)

    def negative(self, a):
        return self.ops.negative(a)

    def sum(self, v, axis, keepdims: bool):
        return self.ops.sum(v, axis=axis, keepdims=keepdims)

    def matmul(self, a, b, value_bits: int):
        """Exact int64 matmul. ``keras.ops.matmul`` computes integer inputs in float32 (inexact
        past 2^24), so pick the exact path from the static bound ``value_bits`` (eq. 19):
        float32 BLAS if the result fits 24 bits, float64 BLAS if it fits 53, else an int64
        broadcast multiply-and-sum."""
        ops = self.ops
        if value_bits <= 53:
            dtype = "float32" if value_bits <= 24 else "float64"
            out = ops.matmul(ops.cast(a, dtype), ops.cast(b, dtype))
            return ops.cast(out, "int64")
        return ops.sum(ops.multiply(ops.expand_dims(a, -1), b), axis=-2)

    def max_abs(self, x, axis):
        return self.ops.max(self.ops.abs(x), axis=axis)

    def divide_or_zero(self, x, s):
        ops = self.ops
        positive = ops.greater(s, 0)
        safe = ops.where(positive, s, ops.ones_like(s))
        return ops.where(positive, ops.divide(x, safe), ops.zeros_like(x))

    def numpy(self, v):
        return self.ops.convert_to_numpy(v)

    def convert_int64(self, values):
        return self.ops.convert_to_tensor(np.asarray(values, dtype=np.int64))

    def convert_float64(self, values):
        return self.ops.convert_to_tensor(np.asarray(values, dtype=np.float64))


NUMPY = _NumpyBackend()
KERAS = _KerasBackend()
BACKENDS = {"numpy": NUMPY, "keras": KERAS}


def backend_of(values):
    """The namespace owning ``values``: NumPy for arrays/numbers/lists, Keras for tensors.

    Example:
        >>> backend_of([1, 2, 3]).name
        'numpy'
    """
    return NUMPY if _is_numpy_like(values) else KERAS


def get_backend(name: str | None, values):
    """Resolve an explicit backend name (``"numpy"``/``"keras"``) or infer it from ``values``.

    Example:
        >>> get_backend(None, 3.0).name, get_backend("keras", 3.0).name
        ('numpy', 'keras')
    """
    if name is None:
        return backend_of(values)
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)} or None, got {name!r}")
    return BACKENDS[name]
