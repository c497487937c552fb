"""Static description of a quantized activation tensor: bits, sign and frac_bits.

Between layers a quantized tensor is an on-grid float ``x = v * 2^-f`` (DESIGN decision 4);
a :class:`QSpec` says what ``v`` and ``f`` are allowed to be. ``frac_bits`` is one integer
(per-tensor) or a tuple over the last axis (per-axis).

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
    if top == 0.0:
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


@dataclass(frozen=True)
class QSpec:
    """What an on-grid quantized tensor holds.

    Attributes:
        value_bits: magnitude bits (sign excluded).
        signed: whether values may be negative.
        frac_bits: tuple of per-channel frac_bits (length 1 means per-tensor).
        hi: optional tighter upper integer bound per channel (e.g. a ReLU max_value).
    """

    value_bits: int
    signed: bool
    frac_bits: tuple[int, ...]
    hi: tuple[int, ...] | None = None

    @classmethod
    def from_range(cls, rng, value_bits: int, signed: bool) -> QSpec:
        return cls(int(value_bits), bool(signed), frac_bits_for_range(rng, value_bits))

    @property
    def per_tensor(self) -> bool:
        return len(self.frac_bits) == 1

    @property
    def max_frac(self) -> int:
        """``F``: the common frac_bits all channels align to (eq. 15)."""
        return max(self.frac_bits)

    def int_bounds(self) -> tuple[int, int]:
        """Integer range of the raw values (eq. 1)."""
        return int_range(self.value_bits, self.signed)

    def hi_array(self) -> np.ndarray:
        """Per-channel upper bound on ``v`` (int64)."""
        top = int_range(self.value_bits, self.signed)[1]
        if self.hi is None:
            return np.full(len(self.frac_bits), top, dtype=np.int64)
        return np.minimum(np.asarray(self.hi, dtype=np.int64), top)

    def aligned_max_abs(self) -> int:
        """Largest ``|v * 2^(F - f_c)|`` over channels: magnitude after alignment to F."""
        lo, _ = self.int_bounds()
        mags = np.maximum(self.hi_array(), -lo)
        shifts = self.max_frac - np.asarray(self.frac_bits, dtype=np.int64)
        return int(np.max(mags.astype(object) * (2 ** shifts).astype(object)))

    def frac_array(self, channels: int | None = None) -> np.ndarray:
        f = np.asarray(self.frac_bits, dtype=np.int64)
        if channels is not None and f.size == 1:
            f = np.full(channels, int(f[0]), dtype=np.int64)
        return f

    def to_config(self) -> dict:
        return {"value_bits": self.value_bits, "signed": self.signed,
                "frac_bits": list(self.frac_bits),
                "hi": None if self.hi is None else list(self.hi)}

    @classmethod
    def from_config(cls, cfg: dict) -> QSpec:
        hi = cfg.get("hi")
        return cls(int(cfg["value_bits"]), bool(cfg["signed"]),
                   tuple(int(f) for f in cfg["frac_bits"]),
                   None if hi is None else tuple(int(h) for h in hi))
