"""Integer rounding, shifting, saturation and requantization: the NumPy reference.

Every function here implements one numbered equation of ``docs/numerics.md``. The Keras
executor (:mod:`fixedq.tensors.kops`) implements the same equations with ``keras.ops``; the
integer engine uses these NumPy functions directly. All integer results are ``int64``.

Example:
    >>> import numpy as np
    >>> from fixedq.tensors.rounding import quantize_float, shift_round
    >>> int(quantize_float(np.pi, frac_bits=6, value_bits=8, signed=False)[0])
    201
    >>> shift_round(np.array([5, -5, 6]), 1).tolist()   # 2.5 -> 3, -2.5 -> -2, 3 -> 3
    [3, -2, 3]
"""

from __future__ import annotations

import numpy as np

MAX_VALUE_BITS = 31
MAX_SCALE_BITS = 24
#: Eq. 13b: the largest requantization shift ``S`` (so ``2^(S-1)`` and every rounding add stay
#: inside int64 in both executors).
MAX_SHIFT = 62
#: Eq. 13b: effective scales below ``2^-100`` are flushed to 0 before eq. 6 (they would give
#: ``M = 0`` after the cap anyway; this keeps subnormal floats, which TensorFlow flushes to zero,
#: out of the arithmetic, so both executors agree).
TINY_SCALE = 2.0**-100
#: ``round_half_up`` saturates its results to ``[-2^62, 2^62]`` (eq. 2): a power of two, exact
#: in float64, so no float -> int64 cast can overflow (2^63 - 1 itself rounds up to 2^63).
ROUND_LIMIT = float(2**62)
#: Eq. 5b: the rounding rules of requantization (``rounding`` attribute of the engine's
#: requantizing ops). ``half_up`` is fixedq's own (eq. 5, the default everywhere); the others
#: reproduce imported programs: ``half_even`` (ONNX QLinear/QDQ), ``half_away`` (TFLite's
#: ``RoundingDivideByPOT`` and integer divisions) and ``tflite`` (eq. 7b: TFLite's
#: ``SaturatingRoundingDoublingHighMul`` then ``RoundingDivideByPOT``) and ``fp32`` (eq. 7c:
#: XNNPACK's float32 requantization, the only rule with float arithmetic on the value path).
ROUNDINGS = ("half_up", "half_even", "half_away", "tflite", "fp32")
DEFAULT_ROUNDING = "half_up"


def check_value_bits(value_bits: int, name: str = "value_bits") -> int:
    """Validate a magnitude bit count (1..31) and return it as ``int``.

    Example:
        >>> check_value_bits(7)
        7
    """
    if isinstance(value_bits, bool) or not isinstance(value_bits, (int, np.integer)):
        raise TypeError(f"{name} must be an integer in [1, {MAX_VALUE_BITS}], got {value_bits!r}")
    if not 1 <= int(value_bits) <= MAX_VALUE_BITS:
        raise ValueError(f"{name} must be in [1, {MAX_VALUE_BITS}], got {value_bits}")
    return int(value_bits)


def int_range(value_bits: int, signed: bool = True) -> tuple[int, int]:
    """Integer range of a quantity with ``value_bits`` magnitude bits (eq. 1).

    Signed: ``[-2^b, 2^b - 1]``; unsigned: ``[0, 2^b - 1]``.

    Example:
        >>> int_range(7), int_range(8, signed=False)
        ((-128, 127), (0, 255))
    """
    b = check_value_bits(value_bits)
    hi = (1 << b) - 1
    return (-(1 << b) if signed else 0), hi


def round_half_up(x: np.ndarray) -> np.ndarray:
    """Round a float64 array to the nearest integer, ties toward +inf (eq. 2): ``floor(x + 1/2)``.

    Computed as ``floor(x) + [x - floor(x) >= 1/2]``, which is exact for every float64 (the
    literal ``floor(x + 0.5)`` is not: ``0.49999999999999994 + 0.5`` rounds to 1.0, and so does
    ``2^52 + 1 + 0.5`` to ``2^52 + 2``). Results saturate at ``±2^62`` (``±inf`` included) so
    that the float -> int64 conversion can never overflow; NaN is not a number to round
    (callers reject or replace it first).

    Example:
        >>> round_half_up(np.array([0.5, -0.5, 1.49, -1.5, 0.49999999999999994])).tolist()
        [1, 0, 1, -1, 0]
        >>> round_half_up(np.array([1e30, -np.inf, 2.0**52 + 1])).tolist() == [
        ...     2**62, -2**62, 2**52 + 1]
        True
    """
    x = np.clip(np.asarray(x, dtype=np.float64), -ROUND_LIMIT, ROUND_LIMIT)
    down = np.floor(x)
    return down.astype(np.int64) + (x - down >= 0.5)


def saturate(v: np.ndarray, lo, hi) -> tuple[np.ndarray, int]:
    """Clip integers into ``[lo, hi]`` (eq. 3); returns the result and how many values clipped.

    Example:
        >>> saturate(np.array([-300, 5, 300]), -128, 127)[1]
        2
    """
    v = np.asarray(v, dtype=np.int64)
    out = np.clip(v, lo, hi)
    return out, int(np.count_nonzero(out != v))


def quantize_float(x, frac_bits, value_bits: int, signed: bool = True) -> tuple[np.ndarray, int]:
    """Float to integer ``v = sat(round_half_up(x * 2^f))`` (eq. 4); returns ``(v, n_clipped)``.

    ``x`` is converted to float64 first; multiplying by a power of two is exact, so the only
    rounding is the documented one. Finite values of any magnitude saturate (the float is
    clipped before the integer conversion, so nothing overflows). Non-finite inputs raise
    ``ValueError`` (the model's input quantizer instead saturates ``±inf``, see
    :func:`quantize_input`).

    Example:
        >>> quantize_float(np.array([3.14159]), 3, 8, signed=False)[0].tolist()
        [25]
        >>> quantize_float(np.array([1e300, -1e300]), 3, 7)[0].tolist()
        [127, -128]
    """
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        bad = x[~np.isfinite(x)].ravel()[0]
        raise ValueError(f"cannot quantize non-finite value {bad}; inputs must be finite floats")
    with np.errstate(over="ignore"):  # |x * 2^f| beyond float64: inf, which saturates
        scaled = np.ldexp(x, np.asarray(frac_bits, dtype=np.int64))
    lo, hi = int_range(value_bits, signed)
    return saturate(round_half_up(scaled), lo, hi)


def quantize_input(x, frac_bits, lo, hi) -> np.ndarray:
    """The input quantizer (eq. 4): ``v = sat(round_half_up(x * 2^f))`` on float64, saturating.

    ``x * 2^f`` is clipped to ``[lo, hi]`` *in float* before rounding (the same result as
    rounding first, since rounding is monotonic and keeps integers, but no conversion can
    overflow): ``+inf`` and every large value give ``hi``, ``-inf`` gives ``lo``. NaN must be
    handled by the caller (the engine rejects it, the Keras layer maps it to 0). Returns int64.

    Example:
        >>> quantize_input(np.array([1.0, 7e16, np.inf, -np.inf]), 5, -128, 127).tolist()
        [32, 127, 127, -128]
    """
    with np.errstate(over="ignore"):
        scaled = np.ldexp(np.asarray(x, dtype=np.float64), np.asarray(frac_bits, dtype=np.int64))
    return round_half_up(np.clip(scaled, lo, hi))


def check_rounding(rounding) -> str:
    """Validate a rounding rule name (one of :data:`ROUNDINGS`) and return it.

    Example:
        >>> check_rounding("half_even")
        'half_even'
    """
    if not isinstance(rounding, str) or rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {list(ROUNDINGS)}, got {rounding!r}")
    return rounding


def shift_round(v, shift, rounding: str = DEFAULT_ROUNDING) -> np.ndarray:
    """Arithmetic shift with rounding (eq. 5): ``s > 0`` divides by ``2^s`` rounding half up,
    ``s < 0`` multiplies by ``2^-s`` (exact), ``s == 0`` is the identity.

    ``shift`` broadcasts against ``v`` (per-axis shifts over the last axis). A right shift is
    computed as ``((v >> (s-1)) + 1) >> 1`` (= ``floor((v + 2^(s-1)) / 2^s)``): no add can
    overflow, and every shift ``s >= 64`` is defined (the result is 0, as ``|v| < 2^63``).

    ``rounding="fp32"`` is eq. 7c with ``M = 1`` (float32 arithmetic, see
    :func:`requantize_fp32`). The integer rules follow.

    ``rounding`` (eq. 5b) changes only what happens on exact ties ``v / 2^s = k + 1/2``:
    ``half_up`` gives ``k + 1``, ``half_even`` the even one of ``k, k + 1``, ``half_away`` the
    one farther from zero (``tflite`` is ``half_away`` here: TFLite's ``RoundingDivideByPOT``).
    The non-default rules start from the half-up result and step down by one on the ties they
    round differently, so every rule is exact over the whole shift range (``|v| < 2^63``).

    Example:
        >>> shift_round(np.array([7, 7, 7]), np.array([2, 0, -2])).tolist()
        [2, 7, 28]
        >>> shift_round(np.array([2**62, -2**62, 2**62 - 1]), 63).tolist()   # ties, S >= 63
        [1, 0, 0]
        >>> [shift_round(np.array([5, -5, 6, -6]), 2, r).tolist()   # 1.25 -1.25 1.5 -1.5
        ...  for r in ("half_up", "half_even", "half_away")]
        [[1, -1, 2, -1], [1, -1, 2, -2], [1, -1, 2, -2]]
        >>> [shift_round(np.array([10, -10, 14, -14]), 2, r).tolist()   # 2.5 -2.5 3.5 -3.5
        ...  for r in ("half_up", "half_even", "half_away")]
        [[3, -2, 4, -3], [2, -2, 4, -4], [3, -3, 4, -4]]
    """
    v = np.asarray(v, dtype=np.int64)
    s = np.asarray(shift, dtype=np.int64)
    if rounding == "fp32":
        return requantize_fp32(v, 1, s)
    left = np.maximum(-s, 0)
    if np.any(left):
        v = np.left_shift(v, left)
    first = np.minimum(np.maximum(s - 1, 0), 63)
    up = (s > 0).astype(np.int64)
    out = np.right_shift(np.right_shift(v, first) + up, up)
    if rounding == DEFAULT_ROUNDING:
        return out
    check_rounding(rounding)
    # a tie: the low s bits of v are exactly 2^(s-1) (s in 1..63; |v| < 2^63 has none above)
    bits = np.minimum(np.maximum(s, 1), 63).astype(np.uint64)
    low = v.astype(np.uint64) & ((np.uint64(1) << bits) - np.uint64(1))
    tie = (s > 0) & (s <= 63) & (low == (np.uint64(1) << (bits - np.uint64(1))))
    if rounding == "half_even":  # half up gave the odd k + 1: step down to k
        return out - (tie & (out % 2 == 1))
    return out - (tie & (v < 0))  # half_away / tflite: negative ties go down, away from 0


def to_multiplier_shift(scale, scale_bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Fold positive float scales into integers ``M`` and shifts ``S``: ``scale ~ M·2^-S``
    (eqs. 6 and 13b).

    ``M`` has exactly ``scale_bits`` bits (``2^(n-1) <= M < 2^n``) for every scale whose shift
    is at most 62, so the relative error is at most ``2^-n``; a zero scale gives
    ``M = 0, S = 0``. ``S`` may be negative for scales larger than ``2^n``. Eq. 13b: scales
    below ``2^-100`` are flushed to 0, and a shift above 62 is capped at 62 with the excess
    folded into ``M`` (``M <- shift_round(M, min(S - 62, n + 1))``, 0 when the excess is
    ``n + 1`` or more), so no requantization ever shifts by more than 62.

    Example:
        >>> m, s = to_multiplier_shift(np.array([0.75, 3.0]), scale_bits=8)
        >>> m.tolist(), s.tolist()
        ([192, 192], [8, 6])
        >>> [a.tolist() for a in to_multiplier_shift(np.array([2.0**-56, 1e-25, 1e-40]))]
        [[64, 0, 0], [62, 62, 0]]
    """
    if isinstance(scale_bits, bool) or not 1 <= int(scale_bits) <= MAX_SCALE_BITS:
        raise ValueError(f"scale_bits must be in [1, {MAX_SCALE_BITS}], got {scale_bits!r}")
    scale = np.asarray(scale, dtype=np.float64)
    if not np.all(np.isfinite(scale)) or np.any(scale < 0):
        raise ValueError(f"scales must be finite and >= 0, got {scale[~(scale >= 0)][:3]}")
    zero = scale < TINY_SCALE  # eq. 13b: flushed to 0
    scale = np.where(zero, 1.0, scale)
    _, e = np.frexp(scale)  # scale = m * 2^e with m in [0.5, 1)
    shift = scale_bits - e.astype(np.int64)
    mult = round_half_up(np.ldexp(scale, shift))
    overflow = mult >= (1 << scale_bits)  # rounding up to 2^n: renormalize
    mult = np.where(overflow, mult >> 1, mult)
    shift = np.where(overflow, shift - 1, shift)
    extra = np.minimum(np.maximum(shift - MAX_SHIFT, 0), scale_bits + 1)  # eq. 13b
    mult = shift_round(mult, extra)
    shift = np.minimum(shift, MAX_SHIFT)
    return np.where(zero, 0, mult).astype(np.int64), np.where(zero, 0, shift).astype(np.int64)


def requantize(acc, multiplier, shift, lo, hi, rounding: str = DEFAULT_ROUNDING) -> np.ndarray:
    """Requantize an accumulator (eq. 7): ``sat(shift_round(acc * M, S), lo, hi)`` in int64.

    ``rounding`` (eq. 5b) is the tie rule of the shift; ``"tflite"`` is eq. 7b instead
    (:func:`requantize_tflite`: TFLite's two-step fixed-point multiply, ``M`` a Q31 multiplier).

    Example:
        >>> requantize(np.array([1000]), 192, 8, -128, 127).tolist()   # 1000 * 0.75 = 750
        [127]
        >>> requantize(np.array([-5, -6]), 1, 2, -128, 127, "half_even").tolist()
        [-1, -2]
    """
    if rounding == "tflite":
        return np.clip(requantize_tflite(acc, multiplier, shift), lo, hi)
    if rounding == "fp32":
        return requantize_fp32(acc, multiplier, shift, lo, hi)
    prod = np.asarray(acc, dtype=np.int64) * np.asarray(multiplier, dtype=np.int64)
    return np.clip(shift_round(prod, shift, rounding), lo, hi)


def requantize_tflite(acc, multiplier, shift) -> np.ndarray:
    """TFLite's ``MultiplyByQuantizedMultiplier`` (eq. 7b), exactly, in int64 (no clip).

    ``M`` is TFLite's Q31 multiplier (``2^30 <= M < 2^31``, or 0) and ``S = 31 - e`` for
    TFLite's exponent ``e`` (so the scale is ``M · 2^-S`` as in eq. 7). With ``l = max(e, 0)``
    and ``r = max(-e, 0)``: ``h = floor((acc · 2^l · M + 2^30) / 2^31)`` — gemmlowp's
    ``SaturatingRoundingDoublingHighMul``, whose nudge ``1 - 2^30`` for negative products
    under C's truncating division makes it round half up (toward +inf), not half away — then
    ``y = shift_round(h, r, "half_away")`` (``RoundingDivideByPOT``). The rounding happens
    twice, so ``y`` can differ by one from a single rounding of ``acc · M · 2^-S``. TFLite
    computes ``acc · 2^l`` in int32 (``l > 0`` only for scales above 1/2); here it is int64,
    the same wherever TFLite's value is defined.

    Example:
        >>> m, e = 1 << 30, -1            # TFLite's (M, e) of the scale 1/4
        >>> requantize_tflite(np.array([2, -2, 6, -6]), m, 31 - e).tolist()  # 0.5 -0.5 1.5 -1.5
        [1, -1, 2, -2]
    """
    s = np.asarray(shift, dtype=np.int64)
    e = 31 - s
    x = np.left_shift(np.asarray(acc, dtype=np.int64), np.maximum(e, 0))
    high = shift_round(x * np.asarray(multiplier, dtype=np.int64), 31)
    return shift_round(high, np.maximum(-e, 0), "half_away")


def fp32_scale(multiplier, shift) -> np.ndarray:
    """The float32 scale of eq. 7c: ``float32(M · 2^-S)`` (exact when ``M < 2^24``, the
    significand of a float32 scale; :func:`float32_multiplier_shift` gives that form).

    Example:
        >>> fp32_scale(np.array([3]), np.array([4])).tolist()
        [0.1875]
    """
    m = np.asarray(multiplier, dtype=np.int64).astype(np.float64)
    return np.ldexp(m, -np.asarray(shift, dtype=np.int64)).astype(np.float32)


def float32_multiplier_shift(scale) -> tuple[np.ndarray, np.ndarray]:
    """``(M, S)`` with ``M · 2^-S == scale`` exactly, for float32 scales (``M < 2^24``).

    The engine stores eq. 7c's float32 scales this way: the integer significand and shift of
    the float32 value, so a program file holds only integers and the scale is recovered
    exactly by :func:`fp32_scale`. Zero gives ``(0, 0)``.

    Example:
        >>> [a.tolist() for a in float32_multiplier_shift(np.float32([0.1875, 0.1, 0.0]))]
        [[3, 13421773, 0], [4, 27, 0]]
    """
    scale = np.asarray(scale, dtype=np.float32).astype(np.float64)
    if not np.all(np.isfinite(scale)) or np.any(scale < 0):
        raise ValueError(f"float32 scales must be finite and >= 0, got {scale.ravel()[:3]}")
    mant, exp = np.frexp(scale)  # scale = mant * 2^exp, mant in [0.5, 1)
    m = np.ldexp(mant, 24).astype(np.int64)  # exact: a float32 has 24 significand bits
    s = 24 - exp.astype(np.int64)
    while True:  # strip trailing zero bits (the smallest M; same value)
        even = (m != 0) & (m % 2 == 0)
        if not np.any(even):
            break
        m = np.where(even, m // 2, m)
        s = np.where(even, s - 1, s)
    return m, np.where(m == 0, 0, s)


def requantize_fp32(acc, multiplier, shift, lo=None, hi=None) -> np.ndarray:
    """XNNPACK's ``fp32`` requantization (eq. 7c), exactly: float32 arithmetic by design.

    ``y = sat(rint(float32(float32(acc) · float32(M · 2^-S))))``: the accumulator is rounded to
    float32 (nearest, ties to even: exact for ``|acc| <= 2^24``), multiplied by the float32
    scale in float32 (one IEEE rounding), rounded to the nearest integer with ties to even
    (XNNPACK's magic-number add ``+ 12582912.0f`` or ``lrintf``; clamping first, as XNNPACK
    does, gives the same result because the bounds are integers) and clipped to ``[lo, hi]``
    when they are given. IEEE float32 is deterministic, so NumPy's float32 reproduces it bit
    for bit; unlike fixedq's integer rules, this one is float arithmetic on purpose (to equal
    TFLite's default XNNPACK delegate).

    Example:
        >>> m, s = float32_multiplier_shift(np.float32([0.5]))
        >>> requantize_fp32(np.array([1, 3, -1, -3, 5]), m, s).tolist()   # ties to even
        [0, 2, 0, -2, 2]
        >>> requantize_fp32(np.array([16777217]), 1, 0).tolist()   # float32(2^24 + 1) = 2^24
        [16777216]
    """
    acc32 = np.asarray(acc, dtype=np.int64).astype(np.float32)
    prod = acc32 * fp32_scale(multiplier, shift)  # float32 * float32 -> float32
    prod = np.clip(prod, np.float32(-ROUND_LIMIT), np.float32(ROUND_LIMIT))  # no overflow
    out = np.rint(prod).astype(np.int64)
    return out if lo is None else np.clip(out, lo, hi)
