"""Per-channel affine layers: BatchNormalization (when it cannot be folded) and Rescaling.

Both compute ``y_c = a_c * x_c + c_c`` per channel. In integers (eq. 28)::

    (M_c, S_c) = to_multiplier_shift(|a_c| * 2^(f_out_c - f_in_c))
    O_c        = round_half_up(c_c * 2^(f_out_c + S_c))
    y_c        = sat(shift_round(sign(a_c) * v_c * M_c + O_c, S_c))

Example:
    >>> import numpy as np
    >>> from fixedq.layers.spec import QSpec
    >>> r = QuantizedRescaling(scale=1 / 255, offset=0.0, input_specs=[QSpec(8, False, (0,))],
    ...                        output_spec=QSpec(8, False, (7,)))
    >>> float(r(np.array([[255.0]], "float32"))[0, 0])
    1.0
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from fixedq.layers.base import (
    QuantizedLayer,
    from_integers,
    output_bounds,
    saturate_float,
    straight_through,
    to_channel_integers,
)
from fixedq.tensors import kops


class _QuantizedAffine(QuantizedLayer):
    """Shared integer path; subclasses provide ``affine()`` -> float64 ``(a, c)`` tensors."""

    def __init__(self, scale_bits=8, **kwargs):
        super().__init__(**kwargs)
        self.scale_bits = int(scale_bits)

    def build(self, input_shape):
        self.channels = int(input_shape[-1])
        self._f_in = self.input_spec0.frac_array(self.channels)
        self._f_out = self.output_spec.frac_array(self.channels)
        self._lo, self._hi = output_bounds(self.output_spec, self.channels)
        super().build(input_shape)

    def integer_terms(self):
        a, c = self.affine()
        a = ops.broadcast_to(ops.cast(a, "float64"), (self.channels,))
        c = ops.broadcast_to(ops.cast(c, "float64"), (self.channels,))
        sign = ops.where(a < 0, -1, 1)
        mult, shift = kops.to_multiplier_shift(ops.abs(a) * np.ldexp(1.0, self._f_out - self._f_in),
                                               self.scale_bits)
        offset = kops.round_half_up(c * ops.power(2.0, ops.cast(self._f_out + shift, "float64")))
        return ops.cast(sign, "int64") * mult, shift, offset

    def integer_params(self) -> dict:
        mult, shift, offset = self.integer_terms()
        to_np = ops.convert_to_numpy
        return {"multiplier": to_np(mult).astype(np.int64), "shift": to_np(shift).astype(np.int64),
                "offset": to_np(offset).astype(np.int64), "out_lo": self._lo, "out_hi": self._hi,
                "in_frac": self._f_in, "out_frac": self._f_out}

    def call(self, inputs, training=None):
        mult, shift, offset = self.integer_terms()
        v = ops.cast(to_channel_integers(inputs, self.input_spec0), "int64")
        y = kops.saturate(kops.shift_round_dynamic(v * mult + offset, shift), self._lo, self._hi)
        out = from_integers(y, self._f_out, self.compute_dtype)
        if not training:
            return out
        a, c = self.affine()
        z = inputs * ops.cast(a, inputs.dtype) + ops.cast(c, inputs.dtype)
        return straight_through(saturate_float(z, self.output_spec, self.channels), out)

    def get_config(self):
        return {**super().get_config(), "scale_bits": self.scale_bits}


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedRescaling(_QuantizedAffine):
    """Rescaling ``y = x * scale + offset`` (scalars or per-channel lists)."""

    def __init__(self, scale=1.0, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = np.asarray(scale, dtype=np.float64).tolist()
        self.offset = np.asarray(offset, dtype=np.float64).tolist()

    def affine(self):
        return (ops.convert_to_tensor(np.asarray(self.scale, dtype=np.float64)),
                ops.convert_to_tensor(np.asarray(self.offset, dtype=np.float64)))

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedBatchNormalization(_QuantizedAffine):
    """BatchNormalization with inference statistics: ``a = gamma / sqrt(var + eps)``,
    ``c = beta - mean * a``. Gamma and beta train with QAT; the statistics stay fixed."""

    def __init__(self, epsilon=1e-3, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        c = int(input_shape[-1])
        self.gamma = self.add_weight(name="gamma", shape=(c,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(c,), initializer="zeros")
        self.moving_mean = self.add_weight(name="moving_mean", shape=(c,), initializer="zeros",
                                           trainable=False)
        self.moving_variance = self.add_weight(name="moving_variance", shape=(c,),
                                               initializer="ones", trainable=False)
        super().build(input_shape)

    def affine(self):
        a = ops.cast(self.gamma, "float64") / ops.sqrt(
            ops.cast(self.moving_variance, "float64") + self.epsilon)
        return a, ops.cast(self.beta, "float64") - ops.cast(self.moving_mean, "float64") * a

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedNormalization(_QuantizedAffine):
    """Keras ``Normalization`` over the channel axis: ``a = 1 / max(sqrt(var), 1e-7)``,
    ``c = -mean * a`` (``invert``: ``a = max(sqrt(var), 1e-7)``, ``c = mean``); statistics as
    floats in the config (scalars or per-channel lists)."""

    def __init__(self, mean=0.0, variance=1.0, invert=False, **kwargs):
        super().__init__(**kwargs)
        self.mean = np.asarray(mean, dtype=np.float64).tolist()
        self.variance = np.asarray(variance, dtype=np.float64).tolist()
        self.invert = bool(invert)

    def affine(self):
        mean = np.asarray(self.mean, dtype=np.float64)
        std = np.maximum(np.sqrt(np.asarray(self.variance, dtype=np.float64)), 1e-7)
        if self.invert:
            a, c = std, mean
        else:
            a, c = 1.0 / std, -mean / std
        return ops.convert_to_tensor(a), ops.convert_to_tensor(c)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "variance": self.variance,
                "invert": self.invert}
