"""argparse value types shared by the commands (checked before TensorFlow is imported).

Example:
    >>> positive_int("3")
    3
"""

from __future__ import annotations

import argparse
import math

from fixedq.tensors.limits import ACTIVATION_BITS, WEIGHT_BITS

#: Bit-width limits of QuantizationParams (the one set in fixedq/tensors/limits.py, NumPy- and
#: TensorFlow-free), so that a bad value is rejected without importing TensorFlow.
MIN_WEIGHT_BITS, MIN_BITS, MAX_BITS = WEIGHT_BITS[0], ACTIVATION_BITS[0], ACTIVATION_BITS[1]


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _bits(lo: int, hi: int):
    def parse(text: str) -> int:
        value = _int(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"bit width must be in [{lo}, {hi}], got {value}")
        return value

    parse.__name__ = "bits"
    return parse


weight_bits = _bits(*WEIGHT_BITS)
activation_bits = _bits(MIN_BITS, MAX_BITS)


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def fraction(text: str) -> float:
    value = finite_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value}")
    return value
