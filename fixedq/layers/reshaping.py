"""Quantized Flatten, Reshape, Permute and Dropout: values unchanged, frac_bits remapped.

A per-axis spec gives every element the frac_bits of its last-axis index. After a reshape or
permutation the new last axis must again determine the frac_bits of every element;
:func:`remap_spec` computes the new per-axis spec or raises ``ValueError`` when no such spec
exists (``quantize`` then stops before the layer).

Example:
    >>> from fixedq.layers.spec import QSpec
    >>> remap_spec(QSpec(7, True, (1, 2)), (2, 2), lambda a: a.reshape(4)).frac_bits
    (1, 2, 1, 2)
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from fixedq.layers.base import QuantizedLayer
from fixedq.layers.spec import QSpec


def remap_spec(spec: QSpec, in_shape, transform) -> QSpec:
    """Spec of ``transform(x)`` for ``x`` of shape ``in_shape`` (batch axis excluded)."""
    if spec.per_tensor and all(v is None or len(v) == 1 for v in (spec.hi, spec.lo)):
        return spec
    f = np.broadcast_to(np.asarray(spec.frac_bits), tuple(in_shape))
    hi = None if spec.hi is None else np.broadcast_to(np.asarray(spec.hi), tuple(in_shape))
    lo = None if spec.lo is None else np.broadcast_to(np.asarray(spec.lo), tuple(in_shape))
    out = []
    for arr in (f, hi, lo):
        if arr is None:
            out.append(None)
            continue
        moved = np.asarray(transform(arr))
        flat = moved.reshape(-1, moved.shape[-1])
        if not np.all(flat == flat[0]):
            raise ValueError("per-axis frac_bits do not follow the last axis after this reshape; "
                             "use per_tensor_activations=True")
        out.append(tuple(int(v) for v in flat[0]))
    return QSpec(spec.value_bits, spec.signed, out[0], out[1], out[2])


class _Passthrough(QuantizedLayer):
    """Base for layers that move on-grid values without arithmetic."""


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedFlatten(_Passthrough):
    def call(self, inputs):
        return ops.reshape(inputs, (ops.shape(inputs)[0], -1))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], int(np.prod(input_shape[1:])))


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedReshape(_Passthrough):
    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        self.target_shape = tuple(int(d) for d in target_shape)

    def call(self, inputs):
        return ops.reshape(inputs, (ops.shape(inputs)[0], *self.target_shape))

    def compute_output_shape(self, input_shape):
        return keras.layers.Reshape(self.target_shape).compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "target_shape": self.target_shape}


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedPermute(_Passthrough):
    def __init__(self, dims, **kwargs):
        super().__init__(**kwargs)
        self.dims = tuple(int(d) for d in dims)

    def call(self, inputs):
        return ops.transpose(inputs, (0, *self.dims))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *(input_shape[d] for d in self.dims))

    def get_config(self):
        return {**super().get_config(), "dims": self.dims}


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedDropout(_Passthrough):
    """Identity at inference; at training time it drops values like Dropout (still on-grid)."""

    def __init__(self, rate=0.0, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)

    def call(self, inputs, training=None):
        if training and self.rate > 0:
            keep = ops.cast(keras.random.uniform(ops.shape(inputs)) >= self.rate, inputs.dtype)
            return inputs * keep
        return inputs

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}
