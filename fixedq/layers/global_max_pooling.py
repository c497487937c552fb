"""Quantized global max pooling (``GlobalMaxPooling2D`` over height and width,
``GlobalMaxPooling1D`` over steps): the largest integer per channel, the spec unchanged (the
maximum of on-grid values is on the grid).

Example:
    >>> import numpy as np
    >>> from fixedq.layers.spec import QSpec
    >>> gmp = QuantizedGlobalMaxPooling(input_specs=[QSpec(7, True, (2,))],
    ...                                 output_spec=QSpec(7, True, (2,)))
    >>> np.asarray(gmp(np.array([[[0.25], [-1.0], [0.75]]], "float32"))).tolist()
    [[0.75]]
"""

from __future__ import annotations

import keras
from keras import ops

from fixedq.layers.base import QuantizedLayer

__all__ = ["QuantizedGlobalMaxPooling"]


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedGlobalMaxPooling(QuantizedLayer):
    """Maximum over every axis between the batch and channel axes: ``(B, ..., C) -> (B, C)``."""

    def call(self, inputs):
        return ops.max(inputs, axis=tuple(range(1, len(inputs.shape) - 1)))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])
