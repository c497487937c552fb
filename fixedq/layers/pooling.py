"""Quantized pooling: MaxPool2D (exact on the grid), GlobalAveragePooling2D/1D and
AveragePooling2D (eq. 26).

GlobalAveragePooling2D sums the per-channel integers exactly, then requantizes the sum with
one multiplier + shift for ``2^(f_out - f_in) / (H * W)``.

Example:
    >>> import numpy as np
    >>> from fixedq.layers.spec import QSpec
    >>> gap = QuantizedGlobalAveragePooling2D(input_specs=[QSpec(8, False, (0,))],
    ...                                       output_spec=QSpec(8, False, (0,)))
    >>> np.asarray(gap(np.full((1, 2, 2, 1), 3.0, "float32"))).tolist()
    [[3.0]]
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from fixedq.layers.base import (
    QuantizedLayer,
    exact_float_dtype,
    from_integers,
    output_bounds,
    saturate_float,
    straight_through,
    to_channel_integers,
)
from fixedq.tensors import kops
from fixedq.tensors.rounding import to_multiplier_shift


def _averaged(layer, sums, float_mean, training):
    """The output of an average-pooling layer from its exact integer window ``sums``: requantized
    by the layer's ``1/count`` multiplier/shift (eq. 26b) and dequantized; in training, the
    clipped float mean ``float_mean()`` carries the straight-through gradient."""
    y = kops.requantize(ops.cast(sums, "int64"), layer._mult, layer._shift, layer._lo,
                        layer._hi)
    out = from_integers(y, layer._f_out, layer.compute_dtype)
    if not training:
        return out
    return straight_through(saturate_float(float_mean(), layer.output_spec, layer.channels), out)


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedMaxPool2D(QuantizedLayer):
    """MaxPool2D on on-grid floats: the max of grid values is a grid value (spec unchanged)."""

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", **kwargs):
        super().__init__(**kwargs)
        self.pool_size = tuple(int(p) for p in np.broadcast_to(pool_size, (2,)))
        self.strides = self.pool_size if strides is None else tuple(
            int(s) for s in np.broadcast_to(strides, (2,)))
        self.padding = str(padding).lower()

    def call(self, inputs):
        return ops.max_pool(inputs, self.pool_size, self.strides, self.padding)

    def compute_output_shape(self, input_shape):
        return keras.layers.MaxPooling2D(self.pool_size, self.strides,
                                         self.padding).compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "strides": self.strides,
                "padding": self.padding}


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedGlobalAveragePooling2D(QuantizedLayer):
    """Exact per-channel integer sum, then requantization by ``(M, S)`` (eq. 26)."""

    _axes = (1, 2)  # the pooled axes

    def __init__(self, scale_bits=8, **kwargs):
        super().__init__(**kwargs)
        self.scale_bits = int(scale_bits)

    def build(self, input_shape):
        dims = [int(d) for d in input_shape[1:]]
        c = dims[-1]
        self.channels, self.pool_area = c, int(np.prod(dims[:-1]))
        spec = self.input_spec0
        f_in = spec.frac_array(c)
        self._f_out = self.output_spec.frac_array(c)
        factor = np.ldexp(1.0, self._f_out - f_in) / self.pool_area
        self._mult, self._shift = to_multiplier_shift(factor, self.scale_bits)
        bound = self.pool_area * int(spec.max_abs_array().max())
        self._dtype_exact = exact_float_dtype(bound, f"layer {self.name!r}")
        self._lo, self._hi = output_bounds(self.output_spec, c)
        super().build(input_shape)

    def call(self, inputs, training=None):
        v = to_channel_integers(inputs, self.input_spec0, self._dtype_exact)
        return _averaged(self, ops.sum(v, axis=self._axes),
                        lambda: ops.mean(inputs, axis=self._axes), training)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def integer_params(self) -> dict:
        return {"multiplier": self._mult, "shift": self._shift, "out_lo": self._lo,
                "out_hi": self._hi, "out_frac": self._f_out}

    def get_config(self):
        return {**super().get_config(), "scale_bits": self.scale_bits}


def pool_counts(size: tuple[int, int], pool, strides, padding: str) -> np.ndarray:
    """Number of valid (non-padding) input elements in each output window, ``(Ho, Wo)``.

    TensorFlow's ``same`` average pooling divides by this count (padding is excluded).

    Example:
        >>> pool_counts((3, 3), (2, 2), (1, 1), "same").tolist()
        [[4, 4, 2], [4, 4, 2], [2, 2, 1]]
    """
    counts = []
    for n, k, s in zip(size, pool, strides, strict=True):
        if padding == "same":
            out = -(-n // s)
            before = max((out - 1) * s + k - n, 0) // 2
        else:
            out, before = (n - k) // s + 1, 0
        start = np.arange(out) * s - before
        counts.append(np.minimum(start + k, n) - np.maximum(start, 0))
    return np.outer(counts[0], counts[1]).astype(np.int64)


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedAveragePooling2D(QuantizedLayer):
    """Exact per-channel integer window sum, then requantization by ``(M, S)`` for
    ``2^(f_out - f_in) / count`` (eq. 26 with a window): ``valid`` windows all hold
    ``kh * kw`` elements (one multiplier per channel); ``same`` windows at the borders hold
    fewer (TensorFlow divides by the valid count), so the multiplier varies per position
    ``(Ho, Wo, C)`` (the spatial size must then be static)."""

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", scale_bits=8,
                 **kwargs):
        super().__init__(**kwargs)
        self.pool_size = tuple(int(p) for p in np.broadcast_to(pool_size, (2,)))
        self.strides = self.pool_size if strides is None else tuple(
            int(s) for s in np.broadcast_to(strides, (2,)))
        self.padding = str(padding).lower()
        if self.padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        self.scale_bits = int(scale_bits)

    def build(self, input_shape):
        h, w, c = input_shape[1:4]
        c = int(c)
        self.channels = c
        spec = self.input_spec0
        f_in = spec.frac_array(c)
        self._f_out = self.output_spec.frac_array(c)
        area = self.pool_size[0] * self.pool_size[1]
        if self.padding == "same":
            if h is None or w is None:
                raise ValueError(f"layer {self.name!r}: 'same' average pooling needs a static "
                                 f"spatial size, got {tuple(input_shape)}")
            count = pool_counts((int(h), int(w)), self.pool_size, self.strides, "same")
            count = count[:, :, None]
        else:
            count = np.int64(area)
        factor = np.ldexp(1.0, self._f_out - f_in) / count
        self._mult, self._shift = to_multiplier_shift(factor, self.scale_bits)
        bound = area * int(spec.max_abs_array().max())
        self._dtype_exact = exact_float_dtype(bound, f"layer {self.name!r}")
        self._lo, self._hi = output_bounds(self.output_spec, c)
        super().build(input_shape)

    def _window_sum(self, v):
        """Exact window sums of the (float-held) integers ``v``: one strided slice per tap."""
        (kh, kw), (sh, sw) = self.pool_size, self.strides
        h, w = int(v.shape[1]), int(v.shape[2])
        if self.padding == "same":
            ho, wo = -(-h // sh), -(-w // sw)
            ph = max((ho - 1) * sh + kh - h, 0)
            pw = max((wo - 1) * sw + kw - w, 0)
            v = ops.pad(v, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
        else:
            ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
        acc = None
        for a in range(kh):
            for b in range(kw):
                tap = v[:, a:a + (ho - 1) * sh + 1:sh, b:b + (wo - 1) * sw + 1:sw, :]
                acc = tap if acc is None else acc + tap
        return acc

    def call(self, inputs, training=None):
        v = to_channel_integers(inputs, self.input_spec0, self._dtype_exact)
        return _averaged(self, self._window_sum(v),
                        lambda: ops.average_pool(inputs, self.pool_size, self.strides,
                                                 self.padding), training)

    def compute_output_shape(self, input_shape):
        return keras.layers.AveragePooling2D(self.pool_size, self.strides,
                                             self.padding).compute_output_shape(input_shape)

    def integer_params(self) -> dict:
        return {"multiplier": self._mult, "shift": self._shift, "out_lo": self._lo,
                "out_hi": self._hi, "out_frac": self._f_out}

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "strides": self.strides,
                "padding": self.padding, "scale_bits": self.scale_bits}


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedGlobalAveragePooling1D(QuantizedGlobalAveragePooling2D):
    """GlobalAveragePooling1D: :class:`QuantizedGlobalAveragePooling2D` over the steps axis
    (exact sum over ``steps``, 1/steps folded into the requantization)."""

    _axes = (1,)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])
