"""Quantized nearest-neighbour upsampling (``UpSampling2D(interpolation="nearest")``): every
integer is repeated ``size`` times along height and width, the spec unchanged.

Example:
    >>> import numpy as np
    >>> from fixedq.layers.spec import QSpec
    >>> up = QuantizedUpSampling2D((1, 2), input_specs=[QSpec(7, True, (0,))],
    ...                            output_spec=QSpec(7, True, (0,)))
    >>> np.asarray(up(np.array([[[[1.0], [2.0]]]], "float32")))[0, 0, :, 0].tolist()
    [1.0, 1.0, 2.0, 2.0]
"""

from __future__ import annotations

import keras
from keras import ops

from fixedq.layers.base import QuantizedLayer

__all__ = ["QuantizedUpSampling2D"]


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedUpSampling2D(QuantizedLayer):
    """Repeat rows ``size[0]`` times and columns ``size[1]`` times (channels last)."""

    def __init__(self, size=(2, 2), **kwargs):
        super().__init__(**kwargs)
        size = (size, size) if isinstance(size, int) else tuple(size)
        if len(size) != 2 or any(isinstance(s, bool) or int(s) != s or s < 1 for s in size):
            raise ValueError(f"QuantizedUpSampling2D {self.name!r}: size must be one or two "
                             f"positive ints, got {size!r}")
        self.size = tuple(int(s) for s in size)

    def call(self, inputs):
        return ops.repeat(ops.repeat(inputs, self.size[0], axis=1), self.size[1], axis=2)

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1:3]
        return (input_shape[0], None if h is None else h * self.size[0],
                None if w is None else w * self.size[1], input_shape[3])

    def get_config(self):
        return {**super().get_config(), "size": list(self.size)}
