"""``StatefulRecurrent``: a diagonal linear recurrence with complex eigenvalues.

Per channel ``c`` the layer keeps a complex state ``s = s_re + i s_im`` and, at every frame,

    s_t = A s_{t-1} + u_t,      A = a_real + i a_imag        (one eigenvalue per channel)
    y_t = Re(s_t)

i.e. ``s_re' = a_real s_re - a_imag s_im + u``, ``s_im' = a_real s_im + a_imag s_re``: the
state-space style layer of event-based models (a damped rotation that remembers the past with
a decay ``|A|`` and an oscillation ``arg A``). ``|A| < 1`` keeps it stable; the initializer
draws ``a_real`` in ``[0.5, 0.9]`` and ``a_imag`` in ``[-0.3, 0.3]`` (``|A| <= 0.95``).

Two modes share the weights: ``clip=False`` (the default, streaming) takes frames ``(N, ...,
C)`` and keeps ``s`` as explicit state (real and imaginary parts, reset by
``reset_buffers()``); ``clip=True`` takes whole clips ``(N, T, ..., C)`` and unrolls the
recurrence from a zero state (for training on clips; ``to_streaming`` switches it to frames).

Example:
    >>> import numpy as np
    >>> layer = StatefulRecurrent()
    >>> layer.build((None, 1)); layer.set_weights([np.array([0.0], "float32"),
    ...                                            np.array([1.0], "float32")])  # A = i
    >>> [float(layer(np.ones((1, 1), "float32"))[0, 0]) for _ in range(4)]
    [1.0, 1.0, 0.0, 0.0]
"""

from __future__ import annotations

import keras
from keras import ops

from fixedq.layers.temporal.state import StreamingLayerMixin


def recurrence_step(s_re, s_im, u, a_re, a_im):
    """One step of the complex recurrence (float): the new ``(s_re, s_im)``."""
    return a_re * s_re - a_im * s_im + u, a_re * s_im + a_im * s_re


@keras.saving.register_keras_serializable(package="fixedq")
class StatefulRecurrent(StreamingLayerMixin, keras.layers.Layer):
    """Diagonal complex linear recurrence, output the real part of the state.

    Args:
        clip: ``True``: inputs are clips ``(N, T, ..., C)`` (unrolled from a zero state);
            ``False``: frames ``(N, ..., C)`` with the state kept between calls.
    """

    def __init__(self, clip=False, **kwargs):
        super().__init__(**kwargs)
        self.clip = bool(clip)
        self.supports_jit = False

    def build(self, input_shape):
        want = 3 if self.clip else 2
        if len(input_shape) < want or any(d is None for d in input_shape[want - 1:]):
            what = "clips (N, T, ..., C)" if self.clip else "frames (N, ..., C)"
            raise ValueError(f"StatefulRecurrent {self.name!r} needs {what} with known sizes"
                             f"{' (T included)' if self.clip else ''}, got {tuple(input_shape)}")
        c = int(input_shape[-1])
        self.a_real = self.add_weight(name="a_real", shape=(c,),
                                      initializer=keras.initializers.RandomUniform(0.5, 0.9))
        self.a_imag = self.add_weight(name="a_imag", shape=(c,),
                                      initializer=keras.initializers.RandomUniform(-0.3, 0.3))
        if not self.clip:
            frame = tuple(input_shape[1:])
            self.state_real = self.add_frame_state("state_real", frame)
            self.state_imag = self.add_frame_state("state_imag", frame)

    def call(self, inputs):
        a_re, a_im = ops.cast(self.a_real, inputs.dtype), ops.cast(self.a_imag, inputs.dtype)
        if self.clip:
            s_re = ops.zeros_like(inputs[:, 0])
            s_im = s_re
            outs = []
            for t in range(int(inputs.shape[1])):
                s_re, s_im = recurrence_step(s_re, s_im, inputs[:, t], a_re, a_im)
                outs.append(s_re)
            return ops.stack(outs, axis=1)
        n = ops.shape(inputs)[0]
        s_re, s_im = recurrence_step(self.state_real.read(n), self.state_imag.read(n), inputs,
                                     a_re, a_im)
        self.state_real.write(s_re)
        self.state_imag.write(s_im)
        return s_re

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "clip": self.clip}
