"""QuantizationParams: the bit widths and options that drive :func:`fixedq.quantize`.

Example:
    >>> from fixedq.layers.params import QuantizationParams
    >>> QuantizationParams(weight_bits=4, activation_bits=4).input_weight_bits
    8
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fixedq.tensors.limits import (
    ACTIVATION_BITS,
    BUFFER_BITS,
    OUTPUT_BITS,
    SCALE_BITS,
    WEIGHT_BITS,
)

MIN_BITS, MAX_BITS = ACTIVATION_BITS  # the one range of fixedq/tensors/limits.py
MAX_OUTPUT_BITS = OUTPUT_BITS[1]  # on-grid float32 tensors hold integers exactly up to 2^24


def _check_bits(name: str, value, lo: int = MIN_BITS, hi: int = MAX_BITS) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")


@dataclass(frozen=True)
class QuantizationParams:
    """Bit widths (total bits, sign included) and options of a quantization.

    Attributes:
        input_weight_bits: weight bits of the first layer with weights (default 8).
        weight_bits: weight bits of the other layers.
        activation_bits: bits of every activation between layers (signed activations use one of
            them for the sign; activations after ReLU are unsigned and use all of them).
        per_tensor_activations: one frac_bits per tensor instead of one per channel.
        output_bits: bits of the model's outputs (the last layers before the Dequantizer).
        buffer_bits: accumulator bits (signed); accumulators saturate to this range.
        input_bits: bits of the InputQuantizer that turns the float inputs into integers.
        scale_bits: bits of the integer multipliers that replace float scales.
        asymmetric_activations: give signed activations (those not followed by a ReLU) a
            calibrated per-channel integer window ``[lo, lo + 2^n - 1]`` instead of the
            symmetric ``[-2^(n-1), 2^(n-1) - 1]`` (docs/accuracy.md); the engine stores them as
            unsigned n-bit integers and folds ``lo`` into the next layer's bias.

    Example:
        >>> q = QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4)
        >>> q.to_dict()["weight_bits"]
        4
    """

    input_weight_bits: int = 8
    weight_bits: int = 8
    activation_bits: int = 8
    per_tensor_activations: bool = False
    output_bits: int = 8
    buffer_bits: int = 32
    input_bits: int = 8
    scale_bits: int = 8
    asymmetric_activations: bool = False

    def __post_init__(self) -> None:
        for name in ("input_weight_bits", "weight_bits"):  # signed: at least 2 bits
            _check_bits(name, getattr(self, name), *WEIGHT_BITS)
        for name in ("activation_bits", "input_bits"):
            _check_bits(name, getattr(self, name), *ACTIVATION_BITS)
        _check_bits("output_bits", self.output_bits, *OUTPUT_BITS)
        _check_bits("buffer_bits", self.buffer_bits, *BUFFER_BITS)
        _check_bits("scale_bits", self.scale_bits, *SCALE_BITS)
        for name in ("per_tensor_activations", "asymmetric_activations"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        """A JSON-able dict of the fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> QuantizationParams:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        return dataclass_from_dict(cls, data, "QuantizationParams")


def dataclass_from_dict(cls, data: dict, what: str):
    """``cls(**data)`` for a dataclass ``cls``, with a ``ValueError`` naming every unknown key
    and the allowed ones (instead of Python's ``TypeError`` for the first unknown keyword).

    Example:
        >>> dataclass_from_dict(QuantizationParams, {"weight_bits": 4}, "q").weight_bits
        4
        >>> dataclass_from_dict(QuantizationParams, {"bits": 4}, "q")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: unknown q keys ['bits']; allowed: [...]
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; allowed: {sorted(known)}")
    return cls(**data)
