"""QuantizedLayerNormalization: Keras ``LayerNormalization`` over the last axis in integers
(docs/numerics.md eq. 47).

On input integers ``v_i`` aligned to ``F`` (``D`` channels)::

    c_i = D v_i - sum_j v_j                     (= D (v_i - mean), exact)
    W   = D sum_i c_i^2 + eps_q                 (= D^4 (var + eps) 2^2F, exact, < 2^62)
    a   = (61 - floor(log2 W)) // 2             (W 4^a in [2^60, 2^62): a mantissa)
    r   = isqrt(W 4^a)                          (integer Newton steps, exact floor)
    z_i = round_half_up(c_i D 2^(a + R) / r)    (the normalized value, frac_bits R)
    y_c = sat(shift_round(sign(g_c) z_c M_c + O_c, S_c))      (gamma/beta: eq. 28)

Example:
    >>> import numpy as np
    >>> from fixedq.layers.spec import QSpec
    >>> ln = QuantizedLayerNormalization(input_specs=[QSpec(7, True, (4,))],
    ...                                  output_spec=QSpec(7, True, (5,)))
    >>> (np.asarray(ln(np.array([[1.0, 2.0, 3.0, 4.0]], "float32"))) * 32).tolist()
    [[-43.0, -14.0, 14.0, 43.0]]
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from fixedq.layers.base import (
    QuantizedLayer,
    from_integers,
    output_bounds,
    straight_through,
    to_integers,
)
from fixedq.tensors import kops
from fixedq.tensors.rounding import round_half_up

__all__ = ["NEWTON_STEPS", "QuantizedLayerNormalization", "floor_log2", "isqrt_newton",
           "layer_norm_bound"]

#: Integer Newton steps of the square root from ``2^31`` (6 reach ``floor`` or ``floor + 1``
#: for every ``n`` in ``[2^60, 2^62)``; one final comparison makes it exact).
NEWTON_STEPS = 6
#: ``W`` must stay below this (eq. 47a) so that ``W 4^a`` and ``x^2`` fit int64.
W_LIMIT = 2**62


def layer_norm_bound(dim: int, max_abs: int, eps_int: int) -> int:
    """Static bound of ``W = D sum c_i^2 + eps_q`` (eq. 47a): ``D^4 max|v|^2 + eps_q``.

    Example:
        >>> layer_norm_bound(64, 127, 0) < 2**62
        True
    """
    return int(dim) ** 4 * int(max_abs) ** 2 + int(eps_int)


def isqrt_newton(n):
    """``floor(sqrt(n))`` of int64 ``n`` in ``[2^60, 2^62)`` with integer Newton steps (eq. 47c).

    Example:
        >>> from keras import ops
        >>> int(ops.convert_to_numpy(isqrt_newton(ops.convert_to_tensor([2**61], "int64")))[0])
        1518500249
    """
    n = ops.cast(n, "int64")
    x = ops.full_like(n, 1 << 31)
    for _ in range(NEWTON_STEPS):
        x = ops.floor_divide(x + ops.floor_divide(n, x), 2)
    return x - ops.cast(x * x > n, "int64")


def floor_log2(w):
    """``floor(log2 w)`` of int64 ``1 <= w < 2^62`` (eq. 47b): the float64 exponent (exact
    bits, the conversion may round ``w`` up to a power of two), then one integer correction
    each way -- the same integer as the engine's comparisons, in a small graph."""
    k = kops.frexp_exponent(ops.cast(w, "float64")) - 1
    one = ops.ones_like(w)
    k = k - ops.cast(ops.left_shift(one, k) > w, "int64")
    return k + ops.cast(ops.left_shift(one, k + 1) <= w, "int64")


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedLayerNormalization(QuantizedLayer):
    """Integer layer normalization over the last axis (eq. 47): exact mean and variance, an
    integer reciprocal square root (mantissa + Newton steps), the per-channel ``gamma``/``beta``
    affine of eq. 28. Signed output with calibrated (per-channel) frac_bits.
    """

    def __init__(self, epsilon: float = 1e-3, norm_frac: int = 12, scale_bits: int = 8,
                 **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)
        self.norm_frac = int(norm_frac)
        self.scale_bits = int(scale_bits)
        if not self.epsilon >= 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")
        if not 0 <= self.norm_frac <= 20:
            raise ValueError(f"norm_frac must be in [0, 20], got {norm_frac!r}")

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.channels = dim
        self.gamma = self.add_weight(name="gamma", shape=(dim,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(dim,), initializer="zeros")
        spec = self.input_spec0
        self._align = spec.max_frac - spec.frac_array(dim)
        self._eps_int = int(round_half_up(np.float64(self.epsilon) * float(dim) ** 4
                                          * 2.0 ** (2 * spec.max_frac)))
        bound = layer_norm_bound(dim, spec.aligned_max_abs(), self._eps_int)
        if bound >= W_LIMIT:
            raise ValueError(
                f"layer {self.name!r}: LayerNormalization of {dim} channels on inputs up to "
                f"{spec.aligned_max_abs()} (aligned integers) with epsilon {self.epsilon} "
                f"needs D^4 max|v|^2 + eps_q = {bound} >= 2^62; use fewer activation bits "
                "or per-tensor activations")
        self._f_out = self.output_spec.frac_array(dim)
        self._lo, self._hi = output_bounds(self.output_spec, dim)
        super().build(input_shape)

    def integer_terms(self):
        """In-graph ``(sign*M, S, O)`` of the output affine (eq. 28 with input frac R)."""
        g = ops.cast(self.gamma, "float64")
        b = ops.cast(self.beta, "float64")
        sign = ops.where(g < 0, -1, 1)
        mult, shift = kops.to_multiplier_shift(
            ops.abs(g) * np.ldexp(1.0, self._f_out - self.norm_frac), self.scale_bits)
        offset = kops.round_half_up(b * ops.power(2.0, ops.cast(self._f_out + shift,
                                                                 "float64")))
        return ops.cast(sign, "int64") * mult, shift, offset

    def normalized(self, v):
        """Eq. 47a-d on aligned int64 ``v``: the normalized integers ``z`` (frac_bits R)."""
        dim = self.channels
        c = dim * v - ops.sum(v, axis=-1, keepdims=True)
        w = dim * ops.sum(c * c, axis=-1, keepdims=True) + self._eps_int
        w = ops.maximum(w, 1)
        a = ops.floor_divide(61 - floor_log2(w), 2)
        r = isqrt_newton(ops.left_shift(w, 2 * a))
        num = c * np.int64(dim) * ops.left_shift(ops.ones_like(a), a + self.norm_frac)
        return ops.floor_divide(2 * num + r, 2 * r)

    def call(self, inputs, training=None):
        mult, shift, offset = self.integer_terms()
        v = ops.cast(to_integers(inputs, self.input_spec0), "int64")
        z = self.normalized(v)
        y = kops.saturate(kops.shift_round_dynamic(z * mult + offset, shift), self._lo, self._hi)
        out = from_integers(y, self._f_out, self.compute_dtype)
        if not training:
            return out
        x = ops.cast(inputs, "float32")
        mean = ops.mean(x, axis=-1, keepdims=True)
        var = ops.mean(ops.square(x - mean), axis=-1, keepdims=True)
        zf = (x - mean) * ops.rsqrt(var + self.epsilon) * self.gamma + self.beta
        zf = ops.clip(ops.cast(zf, self.compute_dtype),
                      from_integers(self._lo, self._f_out, self.compute_dtype),
                      from_integers(self._hi, self._f_out, self.compute_dtype))
        return straight_through(zf, out)

    def integer_params(self) -> dict:
        """The integers of eq. 47 the engine needs (``layernorm`` op)."""
        mult, shift, offset = (ops.convert_to_numpy(t).astype(np.int64)
                               for t in self.integer_terms())
        return {"eps_int": self._eps_int, "norm_frac": self.norm_frac,
                "in_align": np.asarray(self._align, dtype=np.int64), "multiplier": mult,
                "shift": shift, "offset": offset, "out_lo": self._lo, "out_hi": self._hi}

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon, "norm_frac": self.norm_frac,
                "scale_bits": self.scale_bits}
