"""``QuantizedStatefulRecurrent``: the complex diagonal recurrence with integer states.

Per channel ``c`` (docs/numerics.md eq. 41), with the eigenvalue quantized once,
``A_re = round_half_up(a_real 2^fa)``, ``A_im = round_half_up(a_imag 2^fa)``
(``fa = coef_bits - 2``: ``|a| < 2``), and integer states ``s_re, s_im`` of ``state_bits``
(16 by default) with frac_bits ``fs = f_out + (state_bits - 1) - value_bits_out - 1`` (one
bit of headroom over the calibrated output range, ``state_bits - 1 - value_bits_out`` extra
fractional bits)::

    u_s    = shift_round(u, F - fs)                               input aligned to fs
    s_re'  = sat_s(shift_round(A_re s_re - A_im s_im, fa) + u_s)
    s_im'  = sat_s(shift_round(A_re s_im + A_im s_re, fa))
    y      = sat_out(shift_round(s_re', fs - f_out))

All products are exact in int64 (``|A| < 2^(coef_bits-1)``, ``|s| < 2^(state_bits-1)``).
The state is kept as on-grid floats ``s 2^-fs`` (exact: at most 24 significant bits); in
training the forward value is the exact one and the gradient that of the float recurrence
with the quantized eigenvalue (straight-through, eq. 24), through time when unrolled
(:func:`fixedq.models.unroll_clips`).

Example:
    >>> layer = QuantizedStatefulRecurrent(state_bits=16)
    >>> layer.state_bits, layer.coef_bits
    (16, 16)
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
)
from fixedq.layers.temporal.state import StreamingLayerMixin
from fixedq.tensors import kops


def state_frac(out_frac: np.ndarray, out_value_bits: int, state_bits: int) -> np.ndarray:
    """Per-channel frac_bits of the state (eq. 41b)."""
    return np.asarray(out_frac, np.int64) + (state_bits - 1) - int(out_value_bits) - 1


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedStatefulRecurrent(StreamingLayerMixin, QuantizedLayer):
    """Integer ``StatefulRecurrent`` (frames only; see the module docstring)."""

    def __init__(self, state_bits=16, coef_bits=16, **kwargs):
        super().__init__(**kwargs)
        self.state_bits = int(state_bits)
        self.coef_bits = int(coef_bits)
        if not 4 <= self.state_bits <= 24 or not 4 <= self.coef_bits <= 24:
            raise ValueError(f"state_bits and coef_bits must be in [4, 24], got "
                             f"{state_bits!r}, {coef_bits!r}")
        self.supports_jit = False

    def build(self, input_shape):
        c = int(input_shape[-1])
        self.channels = c
        self.a_real = self.add_weight(name="a_real", shape=(c,), initializer="zeros")
        self.a_imag = self.add_weight(name="a_imag", shape=(c,), initializer="zeros")
        frame = tuple(int(d) for d in input_shape[1:])
        self.state_real = self.add_frame_state("state_real", frame)
        self.state_imag = self.add_frame_state("state_imag", frame)
        spec = self.output_spec
        self._f_out = spec.frac_array(c)
        self._fs = state_frac(self._f_out, spec.value_bits, self.state_bits)
        self._fa = self.coef_bits - 2
        self._s_hi = 2 ** (self.state_bits - 1) - 1
        self._out_lo, self._out_hi = output_bounds(spec, c)

    def coefficients(self):
        """In-graph integer ``(A_re, A_im)`` (int64, saturated to ``coef_bits``)."""
        top = 2 ** (self.coef_bits - 1) - 1
        scale = float(2.0**self._fa)
        return (kops.saturate(kops.round_half_up(self.a_real * scale), -top, top),
                kops.saturate(kops.round_half_up(self.a_imag * scale), -top, top))

    def integer_params(self) -> dict:
        """NumPy integers for the engine (computed by the code ``call`` runs)."""
        a_re, a_im = (np.asarray(ops.convert_to_numpy(a)).astype(np.int64)
                      for a in self.coefficients())
        return {"a_re": a_re, "a_im": a_im, "coef_frac": self._fa,
                "in_shift": self.input_spec0.max_frac - self._fs,
                "out_shift": self._fs - self._f_out, "state_hi": self._s_hi,
                "out_lo": self._out_lo, "out_hi": self._out_hi}

    def call(self, inputs, training=None):
        n = ops.shape(inputs)[0]
        fs = self._fs
        s_re_f, s_im_f = self.state_real.read(n), self.state_imag.read(n)
        a_re, a_im = self.coefficients()
        # exact integer step (eq. 41)
        s_re = kops.round_half_up(ops.cast(s_re_f, "float64") * np.ldexp(1.0, fs))
        s_im = kops.round_half_up(ops.cast(s_im_f, "float64") * np.ldexp(1.0, fs))
        u = kops.round_half_up(ops.cast(inputs, "float64")
                               * float(2.0**self.input_spec0.max_frac))
        u_s = kops.shift_round(u, self.input_spec0.max_frac - fs)
        p_re = kops.shift_round(a_re * s_re - a_im * s_im, self._fa)
        p_im = kops.shift_round(a_re * s_im + a_im * s_re, self._fa)
        n_re = kops.saturate(p_re + u_s, -self._s_hi, self._s_hi)
        n_im = kops.saturate(p_im, -self._s_hi, self._s_hi)
        y = kops.saturate(kops.shift_round(n_re, fs - self._f_out), self._out_lo, self._out_hi)
        new_re = from_integers(n_re, fs, "float32")
        new_im = from_integers(n_im, fs, "float32")
        out = from_integers(y, self._f_out, self.compute_dtype)
        if training:  # straight-through: the float recurrence with the quantized eigenvalue
            ar = self.a_real + ops.stop_gradient(from_integers(a_re, self._fa) - self.a_real)
            ai = self.a_imag + ops.stop_gradient(from_integers(a_im, self._fa) - self.a_imag)
            f_re = ar * s_re_f - ai * s_im_f + inputs
            f_im = ar * s_im_f + ai * s_re_f
            new_re = straight_through(f_re, new_re)
            new_im = straight_through(f_im, new_im)
            out = straight_through(saturate_float(f_re, self.output_spec, self.channels), out)
        self.state_real.write(new_re)
        self.state_imag.write(new_im)
        return out

    def get_config(self):
        return {**super().get_config(), "state_bits": self.state_bits,
                "coef_bits": self.coef_bits}
