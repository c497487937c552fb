"""Shared pieces of the importers: an engine-program builder and TFLite-style multipliers.

:class:`ProgramBuilder` collects engine ops under unique names and tracks which engine tensor
holds which source tensor; :func:`quantize_multiplier` is TFLite's ``QuantizeMultiplier``
(a Q31 multiplier and an exponent), returned as the ``(M, S)`` pair of eq. 7b
(``S = 31 - exponent``).

Example:
    >>> quantize_multiplier(0.25)
    (1073741824, 32)
"""

from __future__ import annotations

import math

import numpy as np

from fixedq.engine.kernels import exact_dtype, linear_bound
from fixedq.engine.model import Model
from fixedq.engine.ops import Op

INT32 = (-(2**31), 2**31 - 1)


def quantize_multiplier(scale: float) -> tuple[int, int]:
    """TFLite's ``QuantizeMultiplier(double)``: ``scale = q · 2^e`` with ``q`` in ``[1/2, 1)``
    rounded half away from zero to 31 bits (``std::round``); returns ``(M, 31 - e)``.
    Scales whose exponent is below -31 give ``(0, 0)``, as in TFLite.

    Example:
        >>> quantize_multiplier(0.75), quantize_multiplier(0.0)
        ((1610612736, 31), (0, 0))
    """
    scale = float(scale)
    if scale < 0 or not math.isfinite(scale):
        raise ValueError(f"a requantization scale must be finite and >= 0, got {scale}")
    if scale == 0.0:
        return 0, 0
    q, e = math.frexp(scale)
    m = int(math.floor(q * 2**31 + 0.5))  # q > 0: half away from zero is half up
    if m == 2**31:
        m //= 2
        e += 1
    if e < -31:
        return 0, 0
    if e > 30:  # TFLite clamps the exponent (a scale of 2^30 or more is no real model's)
        raise ValueError(f"requantization scale {scale} is too large (exponent {e} > 30)")
    return m, 31 - e


def multipliers(scales) -> tuple[np.ndarray, np.ndarray]:
    """:func:`quantize_multiplier` per channel: int64 arrays ``(M, S)``."""
    pairs = [quantize_multiplier(s) for s in np.ravel(np.asarray(scales, dtype=np.float64))]
    return (np.array([p[0] for p in pairs], dtype=np.int64),
            np.array([p[1] for p in pairs], dtype=np.int64))


class ProgramBuilder:
    """Engine ops under unique names, and the engine tensor of each source tensor."""

    def __init__(self, name: str, input_name: str, input_shape, lo: int = -128,
                 hi: int = 127):
        self.name = name
        self.ops: list[Op] = []
        self.names: set[str] = set()
        self.tensor: dict = {}
        first = self.add(Op(input_name, "input", [], {"value_bits": int(hi).bit_length(),
                                                      "signed": lo < 0, "out_frac": [0]},
                            {"frac": np.array([0]), "lo": np.array([lo]),
                             "hi": np.array([hi])}))
        self.input_name = first
        self.input_shape = (None, *[int(d) for d in input_shape[1:]])

    def unique(self, name: str) -> str:
        base = str(name) or "op"
        out, i = base, 1
        while out in self.names:
            i += 1
            out = f"{base}_{i}"
        return out

    def add(self, op: Op) -> str:
        """Append ``op`` (renamed if its name is taken); returns its name."""
        op.name = self.unique(op.name)
        self.names.add(op.name)
        self.ops.append(op)
        return op.name

    def build(self, outputs: list[tuple[str, str]], meta: dict) -> Model:
        """The engine :class:`Model` with ``outputs`` = ``[(engine tensor, output name)]``."""
        outs = [{"tensor": t, "name": n, "frac": [0]} for t, n in outputs]
        return Model(self.ops, outs, self.input_shape, "float32", name=self.name, meta=meta)


def neural_attrs(kind: str, kernel: np.ndarray, in_zero_point: int, lo: int, hi: int,
                 name: str, rounding: str, in_shape, weight_bits: int = 8,
                 out_bits: int = 8, **conv) -> dict:
    """Attrs of a ``neural`` op reading ``q - zp`` of a ``[lo, hi]`` input: accumulator range
    int32 (as the source runtimes), its static bound and exact dtype, output spec."""
    mag = max(hi - in_zero_point, in_zero_point - lo)
    bound = linear_bound(kernel, kind, mag)
    attrs = {"type": kind, "weight_bits": weight_bits, "acc_lo": INT32[0], "acc_hi": INT32[1],
             "accum_bound": int(bound), "accum_dtype": exact_dtype(bound),
             "value_bits": out_bits - 1, "signed": True, "out_frac": [0], "layers": [name],
             "rounding": rounding, "in_shape": [None if d is None else int(d)
                                                for d in in_shape]}
    attrs.update(conv)
    return attrs
