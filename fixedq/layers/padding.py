"""Quantized zero padding (``ZeroPadding2D``, ``ZeroPadding1D``): the integers move, a border
of integer zeros is added, the spec is the input's (zero is on every grid).

An asymmetric input (eq. 37) is padded only when its window holds zero (``lo <= 0 <= hi``):
the padded zeros must be representable in the output window.

Example:
    >>> import numpy as np
    >>> from fixedq.layers.spec import QSpec
    >>> pad = QuantizedZeroPadding(((1, 0), (0, 2)), input_specs=[QSpec(7, True, (2,))],
    ...                            output_spec=QSpec(7, True, (2,)))
    >>> np.asarray(pad(np.ones((1, 1, 1, 1), "float32")))[0, ..., 0].tolist()
    [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
"""

from __future__ import annotations

import keras
from keras import ops

from fixedq.layers.base import QuantizedLayer

__all__ = ["QuantizedZeroPadding"]


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedZeroPadding(QuantizedLayer):
    """Zero padding of the spatial axes: ``pads`` = ``((before, after), ...)``, one pair per
    axis between the batch and channel axes (two for images, one for sequences)."""

    def __init__(self, pads, **kwargs):
        super().__init__(**kwargs)
        self.pads = tuple(tuple(int(v) for v in p) for p in pads)
        if not 1 <= len(self.pads) <= 2 or any(len(p) != 2 or min(p) < 0 for p in self.pads):
            raise ValueError(f"QuantizedZeroPadding {self.name!r}: pads must be one or two "
                             f"(before, after) pairs of non-negative ints, got {pads!r}")

    def build(self, input_shape):
        if len(input_shape) != len(self.pads) + 2:
            raise ValueError(f"layer {self.name!r}: {len(self.pads)} padded axes do not fit "
                             f"input shape {tuple(input_shape)}")
        super().build(input_shape)

    def call(self, inputs):
        return ops.pad(inputs, [(0, 0), *self.pads, (0, 0)])

    def compute_output_shape(self, input_shape):
        grown = [None if d is None else d + sum(p) for d, p in zip(input_shape[1:-1], self.pads,
                                                                   strict=True)]
        return (input_shape[0], *grown, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "pads": [list(p) for p in self.pads]}
