"""FixedPoint tensor types and the integer arithmetic they are built on (see docs/numerics.md).

Importing this package never imports Keras/TensorFlow: the Keras executor loads lazily, only
when a FixedPoint is built from a Keras tensor (or ``kops`` is imported explicitly).

Example:
    >>> from fixedq.tensors import FixedPoint
    >>> x, _ = FixedPoint.from_float(3.14159, frac_bits=3, value_bits=8, signed=False)
    >>> int(x.values), x.to_float()
    (25, 3.125)
"""

from fixedq.tensors.fixed_point import FixedPoint, accumulator_bits
from fixedq.tensors.qfloat import QFloat

__all__ = ["FixedPoint", "QFloat", "accumulator_bits"]
