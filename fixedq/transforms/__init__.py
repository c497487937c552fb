"""Model transforms; ``sanitize`` rewrites a float model into a quantization-friendly equivalent.

Example:
    >>> import keras
    >>> from fixedq.transforms import sanitize
    >>> x = keras.Input((4,))
    >>> new_model, report = sanitize(keras.Model(x, keras.layers.Dense(2)(x)))
    >>> len(report)
    0
"""

from fixedq.transforms.report import Change, SanitizeReport
from fixedq.transforms.sanitize import REWRITES, sanitize
from fixedq.transforms.to_streaming import to_streaming

__all__ = ["REWRITES", "Change", "SanitizeReport", "sanitize", "to_streaming"]
