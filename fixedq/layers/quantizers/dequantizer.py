"""Dequantizer: marks the end of the quantized part; on-grid floats are plain floats already.

Example:
    >>> import numpy as np
    >>> float(Dequantizer()(np.array([[0.5]], "float32"))[0, 0])
    0.5
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="fixedq")
class Dequantizer(keras.layers.Layer):
    """Identity on values; what follows it runs in float."""

    def call(self, inputs):
        return ops.cast(inputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

