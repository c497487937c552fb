"""Static description of a quantized activation tensor: bits, sign and frac_bits.

Between layers a quantized tensor is an on-grid float ``x = v * 2^-f`` (DESIGN decision 4);
a :class:`QSpec` says what ``v`` and ``f`` are allowed to be. ``frac_bits`` is one integer
(per-tensor) or a tuple over the last axis (per-axis).

An *asymmetric* spec (``lo`` set, docs/numerics.md eqs. 35-37) is a signed n-bit tensor whose
integer window ``[lo, lo + 2^n - 1]`` is placed per channel to fit a skewed range instead of
``[-2^(n-1), 2^(n-1) - 1]``; it always contains 0.

Example:
    >>> from fixedq.layers.spec import QSpec
    >>> s = QSpec.from_range([3.14159], value_bits=8, signed=False)
    >>> s.frac_bits, s.int_bounds()
    ((6,), (0, 255))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fixedq.tensors.rounding import int_range

# A dead or near-constant channel would get a huge frac_bits; keep every channel within this
# many bits of the widest one so that per-axis alignment stays cheap (docs/numerics.md eq. 23).
MAX_FRAC_SPREAD = 8
#: Ranges below this are treated as zero (a dead tensor): 2^f of their frac_bits would overflow.
DEAD_RANGE = 2.0**-64


def frac_bits_for_range(rng, value_bits: int, spread: int = MAX_FRAC_SPREAD) -> tuple[int, ...]:
    """Largest frac_bits whose grid holds ``range`` without clipping (eq. 22).

    ``f = value_bits - ceil(log2(range))``, minus one more when ``range * 2^f`` would round to
    ``2^value_bits`` (a range that is an exact power of two, e.g. 1.0 in 8 unsigned bits, gets
    f = 7 so that 1.0 is representable). Ranges below ``max(range) * 2^-spread`` (and zero)
    are raised to that floor first.

    Example:
        >>> frac_bits_for_range([3.14, 0.5, 0.0], value_bits=7)
        (5, 7, 13)
        >>> frac_bits_for_range([1.0, 0.99], value_bits=8)
        (7, 8)
    """
    r = np.atleast_1d(np.asarray(rng, dtype=np.float64))
    if r.size == 0 or not np.all(np.isfinite(r)) or np.any(r < 0):
        raise ValueError(f"calibration ranges must be finite and >= 0, got {r[:4].tolist()}")
    top = float(r.max())
    if top < DEAD_RANGE:  # nothing but (sub)denormal values: a dead tensor
        top = 1.0
    r = np.maximum(r, top * 2.0**-spread)
    top_int = 2.0**value_bits - 0.5  # round_half_up(r * 2^f) <= 2^b - 1
    out = []
    for x in r.tolist():
        f = int(value_bits - math.ceil(math.log2(x)))
        if x * 2.0**f >= top_int:
            f -= 1
        out.append(f)
    return tuple(out)


def window_for_range(low, high, bits: int, per_tensor: bool = False,
                     spread: int = MAX_FRAC_SPREAD) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """frac_bits and window starts of an asymmetric ``bits``-bit spec (eqs. 35-36).

    Each channel's range ``[low, high]`` is first widened to contain 0. ``f`` is the largest
    integer with ``round(high * 2^f) - round(low * 2^f) <= 2^bits - 1`` (``round`` is eq. 2's
    round-half-up); the spare integers of the window are split evenly below and above, so
    ``lo = round(low * 2^f) - floor(slack / 2)``. Widths below ``max(width) * 2^-spread`` are
    raised to that floor first (eq. 23). With ``per_tensor`` one ``f`` (the largest that fits
    every channel) is shared, and each channel still gets its own ``lo``.

    Example:
        >>> window_for_range([-0.1], [3.0], bits=4)
        ((2,), (-1,))
        >>> window_for_range([-1.0, -0.5], [0.2, 0.5], bits=8, per_tensor=True)
        ((7,), (-178, -127))
    """
    a = np.minimum(np.atleast_1d(np.asarray(low, dtype=np.float64)), 0.0)
    b = np.maximum(np.atleast_1d(np.asarray(high, dtype=np.float64)), 0.0)
    if a.shape != b.shape or a.size == 0 or not (np.all(np.isfinite(a))
                                                  and np.all(np.isfinite(b))):
        raise ValueError(f"asymmetric ranges must be finite and of one shape, got "
                         f"{a[:4].tolist()} .. {b[:4].tolist()}")
    width = b - a
    top = float(width.max())
    if top < DEAD_RANGE:
        top = 1.0
    floor = top * 2.0**-spread
    short = width < floor  # dead or near-constant channel: widen around its midpoint
    a = np.where(short, np.minimum(a, 0.0) - (floor - width) / 2, a)
    b = np.where(short, a + floor, b)
    limit = (1 << bits) - 1
    pairs = list(zip(a.tolist(), b.tolist(), strict=True))

    def fits(f: int, ranges) -> bool:
        return all(math.floor(h * 2.0**f + 0.5) - math.floor(v * 2.0**f + 0.5) <= limit
                   for v, h in ranges)

    fracs = []
    for lo_f, hi_f in pairs:
        f = int(bits - math.ceil(math.log2(hi_f - lo_f))) + 1
        while not fits(f, [(lo_f, hi_f)]):
            f -= 1
        fracs.append(f)
    if per_tensor:
        f = min(fracs)
        while not fits(f, pairs):
            f -= 1
        return (f,), window_starts(a, b, [f] * len(a), bits)
    return tuple(fracs), window_starts(a, b, fracs, bits)


def window_starts(low, high, frac_bits, bits: int) -> tuple[int, ...]:
    """Window start ``lo`` per channel for given frac_bits (eq. 36).

    The window ``[lo, lo + 2^bits - 1]`` is centred on ``[round(low 2^f), round(high 2^f)]``
    (spare integers split evenly, the extra one above) and then moved, if needed, so that it
    contains 0. When the range does not fit (a fixed ``frac_bits`` override), both ends clip.

    Example:
        >>> window_starts([-0.1], [3.0], [2], bits=4)
        (-1,)
    """
    limit = (1 << bits) - 1
    low = np.broadcast_to(np.minimum(np.asarray(low, dtype=np.float64), 0.0), (len(frac_bits),))
    high = np.broadcast_to(np.maximum(np.asarray(high, dtype=np.float64), 0.0),
                           (len(frac_bits),))
    out = []
    for lo_f, hi_f, f in zip(low.tolist(), high.tolist(), frac_bits, strict=True):
        r_lo, r_hi = math.floor(lo_f * 2.0**f + 0.5), math.floor(hi_f * 2.0**f + 0.5)
        start = r_lo - (limit - (r_hi - r_lo)) // 2
        out.append(int(min(max(start, -limit), 0)))
    return tuple(out)


@dataclass(frozen=True)
class QSpec:
    """What an on-grid quantized tensor holds.

    Attributes:
        value_bits: magnitude bits (sign excluded).
        signed: whether values may be negative.
        frac_bits: tuple of per-channel frac_bits (length 1 means per-tensor).
        hi: optional tighter upper integer bound per channel (e.g. a ReLU max_value).
        lo: asymmetric window starts (one per frac_bits entry, or one per channel with a
            per-tensor frac_bits): ``v`` lies in ``[lo, lo + 2^(value_bits + 1) - 1]``
            instead of the symmetric signed range; only with ``signed=True``. ``None`` for
            symmetric and unsigned specs.
    """

    value_bits: int
    signed: bool
    frac_bits: tuple[int, ...]
    hi: tuple[int, ...] | None = None
    lo: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.lo is not None:
            if not self.signed:
                raise ValueError("an asymmetric window (lo) needs a signed spec")
            if len(self.lo) != len(self.frac_bits) and len(self.frac_bits) != 1:
                raise ValueError(f"lo has {len(self.lo)} entries, frac_bits "
                                 f"{len(self.frac_bits)}: give one window start per frac_bits")
            width = 1 << (self.value_bits + 1)
            if any(v > 0 or v + width - 1 < 0 for v in self.lo):
                raise ValueError(f"asymmetric windows must contain 0, got lo={list(self.lo)} "
                                 f"for {self.value_bits + 1} bits")

    @classmethod
    def from_range(cls, rng, value_bits: int, signed: bool) -> QSpec:
        return cls(int(value_bits), bool(signed), frac_bits_for_range(rng, value_bits))

    @classmethod
    def asymmetric(cls, low, high, bits: int, per_tensor: bool = False) -> QSpec:
        """A signed ``bits``-bit spec whose windows fit ``[low, high]`` (eqs. 35-36).

        Example:
            >>> QSpec.asymmetric([-0.1], [3.0], bits=4).int_bounds()
            (-1, 14)
        """
        frac, lo = window_for_range(low, high, bits, per_tensor)
        return cls(int(bits) - 1, True, frac, lo=lo)

    @property
    def asymmetric_window(self) -> bool:
        """Whether the spec has asymmetric windows (``lo`` set)."""
        return self.lo is not None

    @property
    def per_tensor(self) -> bool:
        return len(self.frac_bits) == 1

    @property
    def max_frac(self) -> int:
        """``F``: the common frac_bits all channels align to (eq. 15)."""
        return max(self.frac_bits)

    def int_bounds(self) -> tuple[int, int]:
        """Integer range of the raw values (eq. 1; for asymmetric windows, their hull)."""
        if self.lo is not None:
            return int(self.lo_array().min()), int(self.hi_array().max())
        return int_range(self.value_bits, self.signed)

    def lo_array(self) -> np.ndarray:
        """Per-channel lower bound on ``v`` (int64; one entry per frac_bits entry)."""
        if self.lo is not None:
            return np.asarray(self.lo, dtype=np.int64)
        low = int_range(self.value_bits, self.signed)[0]
        return np.full(len(self.frac_bits), low, dtype=np.int64)

    def hi_array(self) -> np.ndarray:
        """Per-channel upper bound on ``v`` (int64)."""
        if self.lo is not None:
            top = self.lo_array() + ((1 << (self.value_bits + 1)) - 1)
        else:
            top = np.full(len(self.frac_bits), int_range(self.value_bits, self.signed)[1],
                          dtype=np.int64)
        if self.hi is None:
            return top
        return np.minimum(np.asarray(self.hi, dtype=np.int64), top)

    def max_abs_array(self) -> np.ndarray:
        """Per-channel largest ``|v|`` (int64)."""
        return np.maximum(self.hi_array(), -self.lo_array())

    def aligned_max_abs(self) -> int:
        """Largest ``|v * 2^(F - f_c)|`` over channels: magnitude after alignment to F."""
        mags = self.max_abs_array()
        shifts = self.max_frac - np.asarray(self.frac_bits, dtype=np.int64)
        return int(np.max(mags.astype(object) * (2 ** shifts).astype(object)))

    def frac_array(self, channels: int | None = None) -> np.ndarray:
        f = np.asarray(self.frac_bits, dtype=np.int64)
        if channels is not None and f.size == 1:
            f = np.full(channels, int(f[0]), dtype=np.int64)
        return f

    def to_config(self) -> dict:
        cfg = {"value_bits": self.value_bits, "signed": self.signed,
               "frac_bits": list(self.frac_bits),
               "hi": None if self.hi is None else list(self.hi)}
        if self.lo is not None:
            cfg["lo"] = list(self.lo)
        return cfg

    @classmethod
    def from_config(cls, cfg: dict) -> QSpec:
        hi, lo = cfg.get("hi"), cfg.get("lo")
        return cls(int(cfg["value_bits"]), bool(cfg["signed"]),
                   tuple(int(f) for f in cfg["frac_bits"]),
                   None if hi is None else tuple(int(h) for h in hi),
                   None if lo is None else tuple(int(v) for v in lo))
