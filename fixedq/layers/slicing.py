"""Strided slices of the non-batch axes (``x[:, 1:]``, ``x[..., :k]``, ``x[:, ::2, 0]``): the
float layer the graph reader makes of a Keras 3 ``GetItem`` operator node or a tf-keras
``SlicingOpLambda`` (:class:`StridedSlice`), and its quantized twin
(:class:`QuantizedStridedSlice`), which copies the on-grid integers; per-axis frac_bits follow
the kept channels (a channel picked by an integer index makes the output per-tensor).

The slice is stored normalized (:mod:`fixedq.tensors.slicing`): per non-batch axis
``begin``/``end``/``strides`` as ``slice.indices`` gives them, and the ``shrink`` axes (1-based)
an integer index removes.

Example:
    >>> import numpy as np
    >>> layer = StridedSlice(begin=[1, 0], end=[3, 2], strides=[1, 1], shrink=[])
    >>> layer(np.arange(12, dtype="float32").reshape(1, 3, 4)).shape
    TensorShape([1, 2, 2])
"""

from __future__ import annotations

import keras

from fixedq.layers.base import QuantizedLayer
from fixedq.tensors.slicing import slice_key, sliced_shape

__all__ = ["QuantizedStridedSlice", "StridedSlice"]


def _check(name: str, begin, end, strides, shrink) -> tuple[list, list, list, list]:
    lists = [list(v) for v in (begin, end, strides, shrink)]
    b, e, s, k = ([int(x) for x in v] for v in lists)
    if not (len(b) == len(e) == len(s)) or 0 in s:
        raise ValueError(f"{name}: begin {b}, end {e}, strides {s} must have one entry per "
                         "non-batch axis and non-zero strides")
    if any(not 1 <= a <= len(b) for a in k):
        raise ValueError(f"{name}: shrink axes {k} must be in 1..{len(b)}")
    bad = [i for i, (bi, ei, si) in enumerate(zip(b, e, s, strict=True), start=1)
           if bi < 0 or ei < (0 if si > 0 else -1)]
    if bad:
        raise ValueError(f"{name}: begin {b}, end {e}, strides {s} are not a normalized slice "
                         f"on axes {bad} (begin >= 0; end >= 0, or -1 with a negative stride: "
                         "normalize with slice(...).indices(size))")
    return b, e, s, k


class _SliceConfig:
    """begin/end/strides/shrink of a normalized slice, and the layer methods that use them
    (shared by the two layers; listed first in their bases)."""

    def _set_slice(self, begin, end, strides, shrink) -> None:
        self.begin, self.end, self.strides, self.shrink = _check(self.name, begin, end,
                                                                 strides, shrink or [])

    @property
    def key(self) -> tuple:
        """The getitem key of the non-batch axes."""
        return slice_key(self.begin, self.end, self.strides, self.shrink)

    def _slice(self, inputs):
        return inputs[(slice(None), *self.key)]

    def __init__(self, begin, end, strides, shrink=None, **kwargs):
        super().__init__(**kwargs)
        self._set_slice(begin, end, strides, shrink)

    def call(self, inputs):
        return self._slice(inputs)

    def compute_output_shape(self, input_shape):
        return self._slice_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), **self._slice_config()}

    def _slice_shape(self, input_shape):
        return (input_shape[0], *sliced_shape(self.begin, self.end, self.strides, self.shrink))

    def _slice_config(self) -> dict:
        return {"begin": list(self.begin), "end": list(self.end),
                "strides": list(self.strides), "shrink": list(self.shrink)}


@keras.saving.register_keras_serializable(package="fixedq")
class StridedSlice(_SliceConfig, keras.layers.Layer):
    """``x[(slice(None), *key)]`` for a normalized static slice (float)."""

    def build(self, input_shape):
        if len(input_shape) - 1 != len(self.begin):
            raise ValueError(f"{self.name}: a slice of {len(self.begin)} axes on an input of "
                             f"shape {tuple(input_shape)}")
        super().build(input_shape)


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedStridedSlice(_SliceConfig, QuantizedLayer):
    """The slice on on-grid values: the integers are copied (engine ``slice`` op)."""

