"""Float transformer building blocks users train with (Keras 3): attention, shiftmax, MAD norm,
class token, position embeddings, token extraction.

Every layer here has an integer-only quantized twin (:mod:`fixedq.layers.transformers.quantized`)
that ``fixedq.quantize`` substitutes; definitions are in ``docs/transformers.md`` and the integer
equations in ``docs/numerics.md`` (eqs. 29-34).

Example:
    >>> import numpy as np
    >>> y = Shiftmax()(np.array([[0.0, 1.0, 2.0]], "float32"))
    >>> np.asarray(y).round(4).tolist()   # 2^(x - 2) / 2^round(log2(1.75))
    [[0.125, 0.25, 0.5]]
"""

from __future__ import annotations

import math

import keras
from keras import ops

_SERIALIZE = keras.saving.register_keras_serializable(package="fixedq")


def _check_rank(name: str, shape, ranks: tuple[int, ...], what: str = "input") -> None:
    if len(shape) not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ValueError(f"layer {name!r} expects {what} of rank {want} "
                         f"(batch, tokens, channels), got shape {tuple(shape)}")


def shiftmax(x, axis: int = -1):
    """Shiftmax (docs/transformers.md): ``2^(x - m) / 2^round(log2 sum 2^(x - m))``, ``m = max x``.

    The forward value is exact; the gradient is that of the base-2 softmax
    ``2^(x - m) / sum 2^(x - m)`` times the (constant) ratio ``sum / 2^round(log2 sum)``.
    """
    m = ops.max(x, axis=axis, keepdims=True)
    e = ops.power(2.0, x - ops.stop_gradient(m))
    total = ops.sum(e, axis=axis, keepdims=True)
    k = ops.round(ops.log2(ops.stop_gradient(total)))
    ratio = ops.stop_gradient(total / ops.power(2.0, k))
    return e / total * ratio


@_SERIALIZE
class Shiftmax(keras.layers.Layer):
    """Softmax made integer-friendly: base-2 exponent, normalization by a power of two.

    ``y_j = 2^(x_j - m) / 2^round(log2 sum_i 2^(x_i - m))`` with ``m = max_i x_i`` along
    ``axis``. Outputs lie in ``[0, 1]`` and sum to a value in ``[2^-1/2, 2^1/2)``.
    """

    def __init__(self, axis: int = -1, **kwargs):
        super().__init__(**kwargs)
        self.axis = int(axis)

    def call(self, inputs, mask=None):
        if mask is not None:
            raise ValueError(f"layer {self.name!r}: Shiftmax does not support masks")
        return shiftmax(inputs, self.axis)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


def split_heads(x, num_heads: int):
    """``(B, N, H*d) -> (B, H, N, d)``: channel ``c = h*d + j`` goes to head ``h``."""
    n, dim = x.shape[1], x.shape[2]
    x = ops.reshape(x, (-1, n if n is not None else -1, num_heads, dim // num_heads))
    return ops.transpose(x, (0, 2, 1, 3))


def merge_heads(x):
    """``(B, H, N, d) -> (B, N, H*d)`` (inverse of :func:`split_heads`)."""
    h, n, d = x.shape[1], x.shape[2], x.shape[3]
    x = ops.transpose(x, (0, 2, 1, 3))
    return ops.reshape(x, (-1, n if n is not None else -1, h * d))


@_SERIALIZE
class Attention(keras.layers.Layer):
    """Multi-head scaled dot-product attention on projected inputs ``[query, key, value]``.

    Inputs are ``(B, Nq, D)``, ``(B, Nk, D)``, ``(B, Nk, D)`` (the projections are ordinary
    ``Dense`` layers before it, the output projection a ``Dense`` after it). Per head ``h``
    (channels ``h*d .. h*d + d - 1``, ``d = D / num_heads``)::

        scores = q_h k_h^T / sqrt(d);  p = shiftmax(scores) (or softmax);  out_h = p v_h

    and the heads are concatenated back to ``(B, Nq, D)``.

    Args:
        num_heads: number of heads; must divide ``D``.
        softmax: ``"shiftmax"`` (quantizable, integer-only) or ``"softmax"`` (float only).
    """

    def __init__(self, num_heads: int = 1, softmax: str = "shiftmax", **kwargs):
        super().__init__(**kwargs)
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"Attention num_heads must be a positive int, got {num_heads!r}")
        if softmax not in ("shiftmax", "softmax"):
            raise ValueError(f"Attention softmax must be 'shiftmax' or 'softmax', got {softmax!r}")
        self.num_heads = num_heads
        self.softmax = softmax

    def build(self, input_shape):
        check_attention_shapes(self.name, input_shape, self.num_heads)
        self.head_dim = int(input_shape[0][-1]) // self.num_heads
        super().build(input_shape)

    def call(self, inputs):
        q, k, v = inputs
        return attention_float(q, k, v, self.num_heads, self.softmax)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "softmax": self.softmax}


def check_attention_shapes(name: str, input_shape, num_heads: int) -> None:
    """Reject anything but ``[q, k, v]`` of rank 3 with matching dims (``ValueError``)."""
    if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 3 or not all(
            isinstance(s, (list, tuple)) for s in input_shape):
        raise ValueError(f"layer {name!r} (Attention) expects 3 inputs [query, key, value], "
                         f"got {input_shape!r}")
    for what, shape in zip(("query", "key", "value"), input_shape, strict=True):
        _check_rank(name, shape, (3,), what)
    dims = [int(s[-1]) for s in input_shape]
    if len(set(dims)) != 1:
        raise ValueError(f"layer {name!r}: query, key and value must have the same last "
                         f"dimension, got {dims}")
    if dims[0] % num_heads:
        raise ValueError(f"layer {name!r}: num_heads={num_heads} does not divide the embedding "
                         f"dimension {dims[0]}")
    nk, nv = input_shape[1][1], input_shape[2][1]
    if nk is not None and nv is not None and nk != nv:
        raise ValueError(f"layer {name!r}: key and value must have the same sequence length, "
                         f"got {nk} and {nv}")


def attention_float(q, k, v, num_heads: int, softmax: str = "shiftmax"):
    """The float attention of :class:`Attention` (shared by the quantized layer's QAT path)."""
    d = int(q.shape[-1]) // num_heads
    qh, kh, vh = (split_heads(t, num_heads) for t in (q, k, v))
    scores = ops.matmul(qh, ops.transpose(kh, (0, 1, 3, 2))) * (1.0 / math.sqrt(d))
    p = shiftmax(scores) if softmax == "shiftmax" else ops.softmax(scores, axis=-1)
    return merge_heads(ops.matmul(p, vh))


@_SERIALIZE
class LayerMadNormalization(keras.layers.Layer):
    """Layer normalization by the mean absolute deviation, over the last axis.

    ``y = gamma * (x - mean) / (mad + epsilon) + beta`` with ``mean = (1/D) sum x`` and
    ``mad = (1/D) sum |x - mean|``. For Gaussian data ``mad = sqrt(2/pi) std``, so a trained
    LayerNormalization maps to this layer with ``gamma * sqrt(2/pi)`` (see ``vit_adapt``).
    """

    def __init__(self, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)
        if not self.epsilon >= 0 or not math.isfinite(self.epsilon):
            raise ValueError(f"LayerMadNormalization epsilon must be finite and >= 0, "
                             f"got {epsilon!r}")

    def build(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(f"layer {self.name!r} expects inputs of rank >= 2, got shape "
                             f"{tuple(input_shape)}")
        c = int(input_shape[-1])
        self.gamma = self.add_weight(name="gamma", shape=(c,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(c,), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        return mad_normalize(inputs, self.gamma, self.beta, self.epsilon)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def mad_normalize(x, gamma, beta, epsilon: float):
    """Float MAD normalization (the definition in :class:`LayerMadNormalization`)."""
    centered = x - ops.mean(x, axis=-1, keepdims=True)
    mad = ops.mean(ops.abs(centered), axis=-1, keepdims=True)
    return centered / (mad + epsilon) * ops.cast(gamma, x.dtype) + ops.cast(beta, x.dtype)


@_SERIALIZE
class ClassToken(keras.layers.Layer):
    """Prepend one trainable token: ``(B, N, D) -> (B, N + 1, D)``, the token at index 0."""

    def build(self, input_shape):
        _check_rank(self.name, input_shape, (3,))
        self.token = self.add_weight(name="token", shape=(int(input_shape[-1]),),
                                     initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        tok = ops.cast(ops.reshape(self.token, (1, 1, -1)), inputs.dtype)
        tok = ops.broadcast_to(tok, (ops.shape(inputs)[0], 1, inputs.shape[-1]))
        return ops.concatenate([tok, inputs], axis=1)

    def compute_output_shape(self, input_shape):
        n = input_shape[1]
        return (input_shape[0], None if n is None else n + 1, input_shape[2])


@_SERIALIZE
class AddPositionEmbs(keras.layers.Layer):
    """Add a trainable position embedding of shape ``(N, D)`` to ``(B, N, D)`` tokens."""

    def build(self, input_shape):
        _check_rank(self.name, input_shape, (3,))
        if input_shape[1] is None:
            raise ValueError(f"layer {self.name!r} needs a known sequence length, got shape "
                             f"{tuple(input_shape)}")
        self.pos_embedding = self.add_weight(
            name="pos_embedding", shape=(int(input_shape[1]), int(input_shape[2])),
            initializer=keras.initializers.RandomNormal(stddev=0.02))
        super().build(input_shape)

    def call(self, inputs):
        return inputs + ops.cast(self.pos_embedding, inputs.dtype)[None]

    def compute_output_shape(self, input_shape):
        return input_shape


def check_token(name: str, token: int, input_shape) -> None:
    """``ValueError`` unless ``input_shape`` is rank 3 and ``token`` indexes its tokens."""
    _check_rank(name, input_shape, (3,))
    n = input_shape[1]
    if n is not None and not -n <= token < n:
        raise ValueError(f"layer {name!r}: token index {token} is out of range for {n} tokens "
                         f"(allowed: {-n} .. {n - 1})")


@_SERIALIZE
class ExtractToken(keras.layers.Layer):
    """Pick one token: ``(B, N, D) -> (B, D)``; ``token`` may be negative (from the end)."""

    def __init__(self, token: int = 0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(token, bool) or not isinstance(token, int):
            raise ValueError(f"ExtractToken token must be an int, got {token!r}")
        self.token = token

    def build(self, input_shape):
        check_token(self.name, self.token, input_shape)
        super().build(input_shape)

    def call(self, inputs):
        n = inputs.shape[1]
        index = self.token % n if n is not None else self.token
        return ops.take(inputs, index, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])

    def get_config(self):
        return {**super().get_config(), "token": self.token}
