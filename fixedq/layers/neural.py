"""Quantized neural layers: integer weights, integer accumulator, requantized output.

All five layers share one computation (docs/numerics.md eqs. 14-21)::

    s_o  = max|w_o| / (2^b - 1)                 per output channel (eq. 14)
    w_q  = round_half_up(w / s_o)               (eq. 14)
    v    = x * 2^F                              aligned integer input (eq. 15)
    acc  = sat_buffer(linear(v, w_q) + b_q)     b_q = round_half_up(b * 2^F / s_o) (eqs. 16-17, 20)
    y    = sat(shift_round(acc * M_o, S_o))     (M_o, S_o) = to_multiplier_shift(s_o 2^(f-F)),
                                                S_o <= 62 (eqs. 6, 13b)
    out  = y * 2^-f                             requantized output (eq. 21)

The linear op runs in float32 or float64, whichever is exact for the static accumulator bound
(eq. 19). A fused ReLU is part of the output clip bounds. In training mode the forward value is
the exact one and the gradient is that of the float computation (straight-through, eq. 24).

**Chosen integers.** Each layer also holds a non-trainable integer variable ``kernel_offset``
(zeros by default, the kernel's shape) that the weight quantizer adds after its nearest rounding:
``w_q = clip(round_half_up(w / s) + offset, -qmax, qmax)``. :meth:`~QuantizedNeuralLayer.
set_integer_kernel` stores any integers in ``[-qmax, qmax]`` exactly (offset = chosen - nearest)
without touching the float kernel or the scale; weight rounding uses it. In QAT the offsets stay
and the latent kernel trains (straight-through); the integers follow ``nearest + offset``. The
engine reads the same ``w_q`` through :meth:`~QuantizedNeuralLayer.integer_params`. Models and
weight lists saved before the variable existed (``[kernel, bias]``) still load (offset zero).

Example:
    >>> layer = QuantizedDense.from_float(keras.layers.Dense(4), ...)  # doctest: +SKIP
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
    to_integers,
)
from fixedq.layers.depthwise_conv2d_transpose import (
    DepthwiseConv2DTranspose,
    depthwise_conv2d_transpose,
)
from fixedq.tensors import kops

_SERIALIZE = keras.saving.register_keras_serializable(package="fixedq")


def _offset_dtype(qmax: int) -> str:
    """Smallest integer dtype holding ``kernel_offset`` values in ``[-2 qmax, 2 qmax]``."""
    return "int8" if 2 * qmax <= 127 else "int16" if 2 * qmax <= 32767 else "int32"


class QuantizedNeuralLayer(QuantizedLayer):
    """Base of the layers with a kernel: weight quantization, accumulator, requantization.

    Subclasses define ``_kernel_shape(input_shape)``, ``_scale_axes`` (kernel axes reduced for the
    per-output-channel scale), ``_linear(x, kernel)`` and ``fan_in()`` (the number of products
    summed into one accumulator, an upper bound).
    """

    def __init__(self, weight_bits=8, buffer_bits=32, scale_bits=8, use_bias=True,
                 kernel_unit=None, **kwargs):
        super().__init__(**kwargs)
        #: Per-input-channel factor of a Rescaling folded into this layer (``None``: none). The
        #: ``kernel`` variable then holds the kernel in the original (unfolded) units and the
        #: layer uses ``float32(float64(kernel) * kernel_unit)``, the folded kernel bit for bit.
        #: Training the folded kernel itself (~1/255 of the original for a ``1/255`` rescale)
        #: makes each Adam step (~lr per element, whatever the gradient scale) ~255x too large
        #: relative to the weights: QAT of a ViT's patch embedding then diverged within steps.
        self.kernel_unit = None if kernel_unit is None else [float(u) for u in kernel_unit]
        self.weight_bits = int(weight_bits)
        self.buffer_bits = int(buffer_bits)
        self.scale_bits = int(scale_bits)
        self.use_bias = bool(use_bias)

    _scale_axes: tuple[int, ...] = ()

    def build(self, input_shape):
        self._in_channels = int(input_shape[-1])
        shape = self._kernel_shape(input_shape)
        self.kernel = self.add_weight(name="kernel", shape=shape, initializer="glorot_uniform")
        self.channels = int(np.prod([shape[a] for a in range(len(shape))
                                     if a not in self._scale_axes]))
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.channels,), initializer="zeros")
        spec = self.input_spec0
        self._qmax = 2 ** (self.weight_bits - 1) - 1
        # non-trainable, created last: ``weights`` is [kernel, (bias,) kernel_offset]
        self.kernel_offset = self.add_weight(
            name="kernel_offset", shape=shape, initializer="zeros", trainable=False,
            dtype=_offset_dtype(self._qmax))
        self._acc_lo, self._acc_hi = -(2 ** (self.buffer_bits - 1)), 2 ** (self.buffer_bits - 1) - 1
        self.static_accumulator_bound = self.fan_in() * self._qmax * spec.aligned_max_abs()
        self._dtype_exact = exact_float_dtype(self.static_accumulator_bound, f"layer {self.name!r}")
        f_out = self.output_spec.frac_array(self.channels)
        self._f_out = f_out
        self._out_lo, self._out_hi = output_bounds(self.output_spec, self.channels)
        super().build(input_shape)

    @property
    def qmax(self) -> int:
        """Largest integer weight magnitude, ``2^(weight_bits-1) - 1``."""
        return self._qmax

    @property
    def scale_axes(self) -> tuple[int, ...]:
        """Kernel axes reduced for the per-output-channel scale."""
        return self._scale_axes

    @property
    def in_channels(self) -> int:
        """Input channels (the kernel's input-channel size)."""
        return self._in_channels

    @property
    def out_frac(self) -> np.ndarray:
        """Per-output-channel ``frac_bits`` of the requantized output."""
        return self._f_out

    @property
    def acc_bounds(self) -> tuple[int, int]:
        """The accumulator's saturation range ``(lo, hi)`` (``buffer_bits``, eq. 20)."""
        return self._acc_lo, self._acc_hi

    def linear(self, x, kernel):
        """The layer's linear op (matmul / conv) of ``x`` with ``kernel``, no bias."""
        return self._linear(x, kernel)

    def unit_array(self) -> np.ndarray:
        """Public name of :meth:`_unit`."""
        return self._unit()

    def _unit(self) -> np.ndarray:
        """``kernel_unit`` shaped to broadcast on the kernel's input-channel axis (``ndim - 2``
        for Dense, Conv2D and DepthwiseConv2D, the layers ``fold_rescaling`` folds into)."""
        shape = [1] * len(self.kernel.shape)
        shape[-2] = len(self.kernel_unit)
        return np.asarray(self.kernel_unit, np.float64).reshape(shape)

    def effective_kernel(self):
        """The kernel the layer quantizes: ``kernel``, or ``kernel * kernel_unit`` (float32,
        the product rounded once from float64 like ``fold_rescaling``; differentiable)."""
        if self.kernel_unit is None:
            return self.kernel
        return ops.cast(ops.cast(self.kernel, "float64") * self._unit(), self.kernel.dtype)

    def nearest_integer_kernel(self) -> np.ndarray:
        """NumPy int64 ``w_q`` of nearest rounding alone (eq. 14, without ``kernel_offset``)."""
        w_q, _ = kops.quantize_weights(self.effective_kernel(), self._scale_axes, self._qmax)
        return np.asarray(ops.convert_to_numpy(w_q)).astype(np.int64)

    def integer_kernel(self) -> np.ndarray:
        """NumPy int64 ``w_q`` the layer computes with (nearest rounding + ``kernel_offset``)."""
        return np.asarray(ops.convert_to_numpy(self.quantized_weights()[0])).astype(np.int64)

    def set_integer_kernel(self, w_q) -> None:
        """Make the weight quantizer return exactly the integers ``w_q`` (kernel's shape, values
        in ``[-qmax, qmax]``) for the current float kernel: ``kernel_offset = w_q - nearest``.
        The float kernel, and with it the per-channel scale, is not touched.

        Example:
            >>> layer.set_integer_kernel(w_q)  # doctest: +SKIP
        """
        w_q = np.asarray(w_q)
        shape = tuple(self.kernel.shape)
        if w_q.shape != shape or not np.issubdtype(w_q.dtype, np.integer) and not np.array_equal(
                w_q, np.round(w_q)):
            raise ValueError(f"layer {self.name!r}: integer kernel must be integers of shape "
                             f"{shape}, got {w_q.dtype} {w_q.shape}")
        w_q = w_q.astype(np.int64)
        if np.any(np.abs(w_q) > self._qmax):
            raise ValueError(f"layer {self.name!r}: integer kernel values must be in "
                             f"[-{self._qmax}, {self._qmax}]")
        self.kernel_offset.assign((w_q - self.nearest_integer_kernel()).astype(
            self.kernel_offset.dtype))

    def quantized_weights(self):
        """In-graph integer weights: ``(w_q, scale, b_q, M, S)`` (eqs. 14, 16, 21); ``w_q`` is
        nearest rounding plus ``kernel_offset``, clipped to ``[-qmax, qmax]``."""
        w_q, scale = kops.quantize_weights(self.effective_kernel(), self._scale_axes, self._qmax)
        w_q = ops.clip(w_q + ops.cast(self.kernel_offset, w_q.dtype), -self._qmax, self._qmax)
        s_flat = ops.reshape(scale, (-1,))
        big_f = self.input_spec0.max_frac
        if self.use_bias:
            b_q = kops.quantize_bias(self.bias, big_f, s_flat, self._acc_lo, self._acc_hi)
        else:
            b_q = ops.zeros((self.channels,), dtype="int64")
        factor = s_flat * np.ldexp(1.0, self._f_out - big_f)
        mult, shift = kops.to_multiplier_shift(factor, self.scale_bits)
        return w_q, scale, b_q, mult, shift

    def integer_params(self) -> dict:
        """NumPy integer parameters for the engine (computed by the same code as ``call``)."""
        w_q, _, b_q, mult, shift = self.quantized_weights()
        return {
            "kernel": ops.convert_to_numpy(w_q).astype(np.int64),
            "bias": ops.convert_to_numpy(b_q).astype(np.int64),
            "multiplier": ops.convert_to_numpy(mult).astype(np.int64),
            "shift": ops.convert_to_numpy(shift).astype(np.int64),
            "out_lo": self._out_lo, "out_hi": self._out_hi,
            "acc_lo": self._acc_lo, "acc_hi": self._acc_hi,
            "in_frac": self.input_spec0.max_frac, "out_frac": self._f_out,
        }

    def call(self, inputs, training=None):
        w_q, scale, b_q, mult, shift = self.quantized_weights()
        dt = self._dtype_exact
        v = to_integers(inputs, self.input_spec0, dt)
        acc = ops.cast(self._linear(v, ops.cast(w_q, dt)), "int64") + b_q
        acc = ops.clip(acc, self._acc_lo, self._acc_hi)
        y = kops.requantize_dynamic(acc, mult, shift, self._out_lo, self._out_hi)
        out = from_integers(y, self._f_out, self.compute_dtype)
        if not training:
            return out
        k = self.effective_kernel()  # gradient reaches ``kernel`` through kernel_unit
        w_deq = k + ops.stop_gradient(ops.cast(ops.cast(w_q, "float64") * scale, k.dtype) - k)
        z = self._linear(inputs, w_deq)
        if self.use_bias:
            z = z + self.bias
        return straight_through(saturate_float(z, self.output_spec, self.channels), out)

    def set_weights(self, weights):
        """Also accepts the weight list without ``kernel_offset`` (``[kernel, (bias)]``, as
        before the variable existed); the offset is then reset to zero."""
        weights = list(weights)
        if len(weights) == len(self.weights) - 1:
            weights.append(np.zeros(self.kernel_offset.shape, self.kernel_offset.dtype))
        super().set_weights(weights)

    def load_own_variables(self, store):
        """Also loads ``.keras``/``.weights.h5`` files saved before ``kernel_offset`` existed."""
        if len(store.keys()) == len(self.weights) - 1:
            self.kernel_offset.assign(np.zeros(self.kernel_offset.shape,
                                               self.kernel_offset.dtype))
            for i, v in enumerate(self._trainable_variables):
                v.assign(store[f"{i}"])
            return
        super().load_own_variables(store)

    def get_config(self):
        config = super().get_config()
        config.update({"weight_bits": self.weight_bits, "buffer_bits": self.buffer_bits,
                       "scale_bits": self.scale_bits, "use_bias": self.use_bias})
        if self.kernel_unit is not None:
            config["kernel_unit"] = list(self.kernel_unit)
        return config


class _ConvMixin:
    """Convolution arguments shared by the conv layers."""

    def _init_conv(self, kernel_size, strides, padding, dilation_rate):
        self.kernel_size = tuple(int(k) for k in np.broadcast_to(kernel_size, (2,)))
        self.strides = tuple(int(s) for s in np.broadcast_to(strides, (2,)))
        self.padding = str(padding).lower()
        self.dilation_rate = tuple(int(d) for d in np.broadcast_to(dilation_rate, (2,)))
        if self.padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")

    def _conv_config(self):
        return {"kernel_size": self.kernel_size, "strides": self.strides,
                "padding": self.padding, "dilation_rate": self.dilation_rate}


class _FiltersConv(_ConvMixin, QuantizedNeuralLayer):
    """Conv layers with ``filters`` outputs that read every input channel."""

    _float_layer = keras.layers.Conv2D

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid",
                 dilation_rate=(1, 1), **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self._init_conv(kernel_size, strides, padding, dilation_rate)

    def fan_in(self):
        return self.kernel_size[0] * self.kernel_size[1] * self._in_channels

    def compute_output_shape(self, input_shape):
        return self._float_layer(self.filters, self.kernel_size, self.strides, self.padding,
                                 dilation_rate=self.dilation_rate).compute_output_shape(
                                     input_shape)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, **self._conv_config()}


@_SERIALIZE
class QuantizedConv2D(_FiltersConv):
    """Integer Conv2D (kernel ``(kh, kw, in, filters)``, scale per filter)."""

    _scale_axes = (0, 1, 2)

    def _kernel_shape(self, input_shape):
        return (*self.kernel_size, int(input_shape[-1]), self.filters)

    def _linear(self, x, kernel):
        return ops.conv(x, kernel, strides=self.strides, padding=self.padding,
                        dilation_rate=self.dilation_rate)


@_SERIALIZE
class QuantizedDepthwiseConv2D(_ConvMixin, QuantizedNeuralLayer):
    """Integer DepthwiseConv2D (kernel ``(kh, kw, in, multiplier)``; output ``c*mult + m``)."""

    _scale_axes = (0, 1)

    def __init__(self, kernel_size, strides=(1, 1), padding="valid", depth_multiplier=1,
                 dilation_rate=(1, 1), **kwargs):
        super().__init__(**kwargs)
        self.depth_multiplier = int(depth_multiplier)
        self._init_conv(kernel_size, strides, padding, dilation_rate)

    def _kernel_shape(self, input_shape):
        return (*self.kernel_size, int(input_shape[-1]), self.depth_multiplier)

    def fan_in(self):
        return self.kernel_size[0] * self.kernel_size[1]

    def _linear(self, x, kernel):
        return ops.depthwise_conv(x, kernel, strides=self.strides, padding=self.padding,
                                  dilation_rate=self.dilation_rate)

    def compute_output_shape(self, input_shape):
        return keras.layers.DepthwiseConv2D(
            self.kernel_size, self.strides, self.padding, self.depth_multiplier,
            dilation_rate=self.dilation_rate).compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "depth_multiplier": self.depth_multiplier,
                **self._conv_config()}


@_SERIALIZE
class QuantizedConv2DTranspose(_FiltersConv):
    """Integer Conv2DTranspose (kernel ``(kh, kw, filters, in)``, scale per filter)."""

    _scale_axes = (0, 1, 3)
    _float_layer = keras.layers.Conv2DTranspose

    def _kernel_shape(self, input_shape):
        return (*self.kernel_size, self.filters, int(input_shape[-1]))

    def _linear(self, x, kernel):
        return ops.conv_transpose(x, kernel, strides=self.strides, padding=self.padding,
                                  dilation_rate=self.dilation_rate)


@_SERIALIZE
class QuantizedDense(QuantizedNeuralLayer):
    """Integer Dense on the last axis (2-D or token-shaped 3-D inputs)."""

    _scale_axes = (0,)

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)

    def _kernel_shape(self, input_shape):
        return (int(input_shape[-1]), self.units)

    def fan_in(self):
        return self._in_channels

    def _linear(self, x, kernel):
        return ops.matmul(x, kernel)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@_SERIALIZE
class QuantizedDepthwiseConv2DTranspose(_ConvMixin, QuantizedNeuralLayer):
    """Integer version of fixedq's ``DepthwiseConv2DTranspose`` (kernel ``(kh, kw, C, 1)``)."""

    _scale_axes = (0, 1)

    def __init__(self, kernel_size, strides=(1, 1), padding="valid", **kwargs):
        kwargs.pop("dilation_rate", None)
        super().__init__(**kwargs)
        self._init_conv(kernel_size, strides, padding, (1, 1))

    def _kernel_shape(self, input_shape):
        return (*self.kernel_size, int(input_shape[-1]), 1)

    def fan_in(self):
        return self.kernel_size[0] * self.kernel_size[1]

    def _linear(self, x, kernel):
        return depthwise_conv2d_transpose(x, kernel, self.strides, self.padding)

    def compute_output_shape(self, input_shape):
        return DepthwiseConv2DTranspose(self.kernel_size, self.strides,
                                        self.padding).compute_output_shape(input_shape)

    def get_config(self):
        config = {**super().get_config(), **self._conv_config()}
        config.pop("dilation_rate")
        return config
