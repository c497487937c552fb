"""Explicit streaming state of a Keras layer (DESIGN.md decision 11).

A streaming layer keeps what it remembers between frames (a FIFO of past frames, a recurrent
state) in TensorFlow variables whose batch size is free. A state that was reset (or whose batch
size differs from the current frame's) reads as zeros: every clip, and every new batch size,
starts from a clean state. The state is not a weight: it is neither trained nor saved.

Implementation note: each state has a companion scalar ``count`` (the batch size it holds, 0
after a reset). Whether the stored state is used is decided from ``count``, never from the
variable's shape: grappler infers a variable's shape from the assignment later in the same
function and would fold a shape test to a wrong constant.

Example:
    >>> import numpy as np
    >>> state = FrameState("fifo", (2, 3), "float32")
    >>> state.read(4).shape
    TensorShape([4, 2, 3])
    >>> state.write(np.ones((4, 2, 3), "float32")); float(state.read(4).numpy().sum())
    24.0
    >>> state.reset(); float(state.read(4).numpy().sum())
    0.0
"""

from __future__ import annotations

import contextlib
import contextvars

import numpy as np
import tensorflow as tf

#: While a clip is unrolled (:func:`unrolled`): state tensors by state, instead of variables.
_UNROLLED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("fixedq_unrolled",
                                                                       default=None)


@contextlib.contextmanager
def unrolled():
    """Within this context every :class:`FrameState` starts at zeros and passes its state as
    tensors from frame to frame (not through its variables): a clip unrolled frame by frame
    in one graph then back-propagates through time (QAT on clips). The variables are left
    untouched."""
    token = _UNROLLED.set({})
    try:
        yield
    finally:
        _UNROLLED.reset(token)


class FrameState:
    """One state tensor of shape ``(batch, *shape)`` with a free batch size."""

    def __init__(self, name: str, shape: tuple[int, ...], dtype: str = "float32"):
        self.shape = tuple(int(d) for d in shape)
        self.dtype = tf.as_dtype(dtype)
        self.value = tf.Variable(np.zeros((0, *self.shape), self.dtype.as_numpy_dtype),
                                 trainable=False, shape=tf.TensorShape([None, *self.shape]),
                                 name=name)
        self.count = tf.Variable(0, dtype=tf.int32, trainable=False, name=f"{name}_count")

    def read(self, n):
        """The state for a batch of ``n`` frames: the stored one, or zeros if it holds another
        batch size (or was reset)."""
        env = _UNROLLED.get()
        if env is not None:
            if id(self) in env:
                return env[id(self)]
            return tf.zeros(tf.concat([[tf.cast(n, tf.int32)], self.shape], 0), self.dtype)
        n = tf.cast(n, tf.int32)
        take = tf.where(tf.equal(self.count, n), n, 0)
        stored = self.value.value()[:take]
        zeros = tf.zeros(tf.concat([[n - take], self.shape], 0), self.dtype)
        return tf.concat([stored, zeros], 0)

    def write(self, new) -> None:
        """Store ``new`` (batch first) as the state."""
        new = tf.convert_to_tensor(new, self.dtype)
        env = _UNROLLED.get()
        if env is not None:
            env[id(self)] = new
            return
        self.value.assign(new)
        self.count.assign(tf.shape(new)[0])

    def reset(self) -> None:
        """Forget the state: the next frame starts from zeros."""
        self.value.assign(np.zeros((0, *self.shape), self.dtype.as_numpy_dtype))
        self.count.assign(0)

    def numpy(self) -> np.ndarray:
        """The stored state (batch 0 after a reset)."""
        return self.value.numpy()


class StreamingLayerMixin:
    """What every streaming layer shares: ``reset_buffers()`` and no XLA (free batch size).

    Subclasses create their :class:`FrameState` objects in ``build`` with
    :meth:`add_frame_state` and read/write them in ``call``.
    """

    streaming = True

    def add_frame_state(self, name: str, shape, dtype: str = "float32") -> FrameState:
        states = self.__dict__.setdefault("_frame_states", {})
        states[name] = FrameState(f"{self.name}_{name}", shape, dtype)
        return states[name]

    def frame_states(self) -> dict[str, FrameState]:
        """The layer's states by name (empty before ``build``)."""
        return dict(self.__dict__.get("_frame_states", {}))

    def reset_buffers(self) -> None:
        """Clear every buffer/state of this layer."""
        for state in self.frame_states().values():
            state.reset()
