"""``PleiadesLayer``: a Conv3D over clips whose temporal kernel is a learned combination of
Jacobi orthogonal polynomials.

The kernel is never stored directly: the layer learns ``coefficients`` of shape ``(degrees +
1, kh, kw, C, filters)`` and builds ::

    kernel[t] = sum_d basis[t, d] * coefficients[d]        (kernel: (kt, kh, kw, C, filters))

where ``basis[:, d]`` is the Jacobi polynomial ``P_d^(alpha, beta)`` sampled at ``kt`` evenly
spaced points of ``[-1, 1]`` (oldest frame at ``-1``) and scaled to unit norm. Low degrees
give smooth temporal profiles with few parameters (the PLEIADES idea); ``degrees = kt - 1``
spans every kernel. Inputs are clips ``(N, T, H, W, C)``; padding is ``'valid'`` (pad the time
axis causally with ``ZeroPadding3D(((kt - 1, 0), (0, 0), (0, 0)))`` before it);
``fixedq.transforms.to_streaming`` turns a ``(kt, 1, 1)`` PleiadesLayer into a
``BufferTempConv`` with the built kernel.

Example:
    >>> import numpy as np
    >>> np.round(jacobi_basis(3, 2, 0.0, 0.0), 3).tolist()   # Legendre 1, x, (3x^2 - 1)/2
    [[0.577, -0.707, 0.667], [0.577, 0.0, -0.333], [0.577, 0.707, 0.667]]
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


def jacobi(n: int, alpha: float, beta: float, x: np.ndarray) -> np.ndarray:
    """``P_n^(alpha, beta)(x)`` by the three-term recurrence (float64)."""
    x = np.asarray(x, np.float64)
    p_prev, p = np.ones_like(x), (alpha + 1) + (alpha + beta + 2) * (x - 1) / 2
    if n == 0:
        return p_prev
    for k in range(2, n + 1):
        s = 2 * k + alpha + beta
        a = 2 * k * (k + alpha + beta) * (s - 2)
        b = (s - 1) * (s * (s - 2) * x + alpha**2 - beta**2)
        c = 2 * (k + alpha - 1) * (k + beta - 1) * s
        p_prev, p = p, (b * p - c * p_prev) / a
    return p


def jacobi_basis(kt: int, degrees: int, alpha: float, beta: float) -> np.ndarray:
    """``(kt, degrees + 1)`` float64: unit-norm Jacobi polynomials sampled on ``kt`` points."""
    x = np.linspace(-1.0, 1.0, kt) if kt > 1 else np.zeros(1)
    cols = [jacobi(d, alpha, beta, x) for d in range(degrees + 1)]
    basis = np.stack(cols, axis=1)
    norms = np.linalg.norm(basis, axis=0)
    return basis / np.where(norms > 0, norms, 1.0)


@keras.saving.register_keras_serializable(package="fixedq")
class PleiadesLayer(keras.layers.Layer):
    """Conv3D (``'valid'``, stride 1) with a Jacobi-polynomial temporal kernel.

    Args:
        filters: output channels.
        kernel_size: ``(kt, kh, kw)``.
        degrees: highest polynomial degree, ``0 <= degrees < kt``.
        alpha, beta: Jacobi parameters (``> -1``; ``0, 0`` is Legendre).
        use_bias: add a bias per filter.
    """

    def __init__(self, filters, kernel_size, degrees, alpha=0.0, beta=0.0, use_bias=True,
                 **kwargs):
        super().__init__(**kwargs)
        ks = tuple(int(k) for k in np.broadcast_to(kernel_size, (3,)))
        if min(ks) < 1:
            raise ValueError(f"PleiadesLayer: kernel_size must be 3 positive integers, got "
                             f"{kernel_size!r}")
        if isinstance(degrees, bool) or not isinstance(degrees, (int, np.integer)) \
                or not 0 <= degrees < ks[0]:
            raise ValueError(f"PleiadesLayer: degrees must be an integer in [0, {ks[0] - 1}] "
                             f"(below the temporal kernel size {ks[0]}), got {degrees!r}")
        if not (alpha > -1 and beta > -1):
            raise ValueError(f"PleiadesLayer: alpha and beta must be > -1, got {alpha!r}, "
                             f"{beta!r}")
        self.filters = int(filters)
        self.kernel_size = ks
        self.degrees = int(degrees)
        self.alpha, self.beta = float(alpha), float(beta)
        self.use_bias = bool(use_bias)
        self.basis = jacobi_basis(ks[0], self.degrees, self.alpha, self.beta).astype("float32")

    def build(self, input_shape):
        if len(input_shape) != 5:
            raise ValueError(f"PleiadesLayer {self.name!r} needs clips (N, T, H, W, C), got "
                             f"{tuple(input_shape)}")
        c = int(input_shape[-1])
        self.coefficients = self.add_weight(
            name="coefficients", shape=(self.degrees + 1, *self.kernel_size[1:], c, self.filters),
            initializer="glorot_uniform")
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    def kernel(self):
        """The Conv3D kernel ``(kt, kh, kw, C, filters)`` built from the coefficients."""
        return ops.tensordot(ops.convert_to_tensor(self.basis), self.coefficients, axes=1)

    def call(self, inputs):
        y = ops.conv(inputs, self.kernel(), strides=1, padding="valid")
        return y + self.bias if self.use_bias else y

    def compute_output_shape(self, input_shape):
        return keras.layers.Conv3D(self.filters, self.kernel_size).compute_output_shape(
            input_shape)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "degrees": self.degrees, "alpha": self.alpha,
                "beta": self.beta, "use_bias": self.use_bias}
