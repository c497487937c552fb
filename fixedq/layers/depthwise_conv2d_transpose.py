"""``DepthwiseConv2DTranspose``: a float Keras 3 layer, one transposed convolution per channel.

Keras has ``Conv2DTranspose`` (every output channel sees every input channel) and
``DepthwiseConv2D`` (one kernel per channel, no upsampling) but nothing in between. This layer
transposed-convolves each input channel with its own ``(kh, kw)`` kernel, so a feature map with
``C`` channels comes out with ``C`` channels, upsampled like ``Conv2DTranspose`` with the same
``kernel_size``, ``strides`` and ``padding`` (``output_padding=None``).

Implementation: a transposed convolution with stride ``s`` equals inserting ``s - 1`` zeros
between input samples, padding, and correlating with the spatially flipped kernel. The padding is
chosen so that the output length and alignment match ``Conv2DTranspose``:

- ``"valid"``: ``out = in * s + max(k - s, 0)``, no crop of the full transposed convolution;
- ``"same"``: ``out = in * s``, the full result cropped by ``max(k - s, 0) // 2`` at the start
  (TensorFlow's convention, the one ``Conv2DTranspose`` uses).

Only ``channels_last`` inputs ``(batch, height, width, channels)`` are supported.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

_PADDINGS = ("valid", "same")


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """Normalize an int or a pair of ints to a tuple of two positive ints."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {value!r}")
    if isinstance(value, int):
        pair = (value, value)
    elif isinstance(value, Sequence) and len(value) == 2:
        pair = tuple(value)
    else:
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {value!r}")
    for v in pair:
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(
                f"{name} must be a positive int or a pair of positive ints, got {value!r}"
            )
    return pair  # type: ignore[return-value]


def _output_length(length: int | None, kernel: int, stride: int, padding: str) -> int | None:
    """Output length of ``Conv2DTranspose`` along one axis (``output_padding=None``)."""
    if length is None:
        return None
    if padding == "valid":
        return length * stride + max(kernel - stride, 0)
    return length * stride


def _pads(kernel: int, stride: int, padding: str) -> tuple[int, int]:
    """(before, after) zero padding applied after zero insertion (``in * stride`` samples)."""
    crop = max(kernel - stride, 0) // 2 if padding == "same" else 0
    after = crop if padding == "same" else max(kernel - stride, 0)
    return kernel - 1 - crop, after


def depthwise_conv2d_transpose(x, kernel, strides, padding: str):
    """Per-channel transposed convolution of ``x`` (NHWC) with ``kernel`` ``(kh, kw, C, 1)``.

    Zero insertion by the stride, padding, then a depthwise conv with the flipped kernel: the
    output has the shape and alignment of ``Conv2DTranspose`` (``output_padding=None``). Shared
    by the float layer and its quantized twin, so both run the same op.
    """
    sh, sw = strides
    kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
    if sh > 1 or sw > 1:
        # Zero insertion: (N, H, W, C) -> (N, H*sh, W*sw, C) with x at multiples of the stride.
        shape = ops.shape(x)
        h, w, c = shape[1], shape[2], shape[3]
        x = ops.expand_dims(ops.expand_dims(x, 2), 4)  # (N, H, 1, W, 1, C)
        x = ops.pad(x, [[0, 0], [0, 0], [0, sh - 1], [0, 0], [0, sw - 1], [0, 0]])
        x = ops.reshape(x, (-1, h * sh, w * sw, c))
    top, bottom = _pads(kh, sh, padding)
    left, right = _pads(kw, sw, padding)
    x = ops.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
    kernel = ops.flip(ops.flip(kernel, axis=0), axis=1)
    return ops.depthwise_conv(x, kernel, strides=1, padding="valid")


@keras.saving.register_keras_serializable(package="fixedq")
class DepthwiseConv2DTranspose(keras.layers.Layer):
    """Depthwise transposed 2D convolution: each channel with its own kernel.

    The kernel has shape ``(kh, kw, channels, 1)`` (the ``DepthwiseConv2D`` layout with
    ``depth_multiplier=1``); the output has as many channels as the input, and the spatial
    output shape of ``keras.layers.Conv2DTranspose`` for the same ``kernel_size``, ``strides``
    and ``padding``.

    Args:
        kernel_size: int or pair ``(kh, kw)``, all > 0.
        strides: int or pair ``(sh, sw)``, all > 0 (the upsampling factor).
        padding: ``"valid"`` or ``"same"`` (case-insensitive).
        use_bias: add a per-channel bias.
        activation: optional activation (name or callable).
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer,
        activity_regularizer, kernel_constraint, bias_constraint: as in Keras layers.

    Example:
        >>> import numpy as np
        >>> layer = DepthwiseConv2DTranspose(3, strides=2, padding="same")
        >>> tuple(layer(np.zeros((1, 4, 4, 5), "float32")).shape)
        (1, 8, 8, 5)
    """

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: str = "valid",
        use_bias: bool = True,
        activation=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.strides = _pair(strides, "strides")
        if not isinstance(padding, str) or padding.lower() not in _PADDINGS:
            raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}")
        self.padding = padding.lower()
        self.use_bias = bool(use_bias)
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.input_spec = keras.InputSpec(ndim=4)

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                "DepthwiseConv2DTranspose expects 4D inputs (batch, height, width, channels), "
                f"got shape {tuple(input_shape)}"
            )
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                "DepthwiseConv2DTranspose needs a known channel dimension, "
                f"got input shape {tuple(input_shape)}"
            )
        self.input_spec = keras.InputSpec(ndim=4, axes={-1: channels})
        self.kernel = self.add_weight(
            name="kernel",
            shape=(*self.kernel_size, channels, 1),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(channels,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        else:
            self.bias = None

    def call(self, inputs):
        outputs = depthwise_conv2d_transpose(inputs, self.kernel, self.strides, self.padding)
        if self.use_bias:
            outputs = ops.add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        return (
            batch,
            _output_length(height, self.kernel_size[0], self.strides[0], self.padding),
            _output_length(width, self.kernel_size[1], self.strides[1], self.padding),
            channels,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "use_bias": self.use_bias,
                "activation": keras.activations.serialize(self.activation),
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
                "activity_regularizer": keras.regularizers.serialize(self.activity_regularizer),
                "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
                "bias_constraint": keras.constraints.serialize(self.bias_constraint),
            }
        )
        return config
