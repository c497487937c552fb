"""Elementwise nonlinearities as integer tables (DESIGN.md decision 9, docs/numerics.md eq. 38).

An input of at most 16 bits takes at most 2^16 integer values per channel, so any elementwise
function ``y = phi(x)`` is exactly a table of output integers indexed by the input integer::

    T_c[i] = sat(round_half_up(phi((lo_c + i) * 2^-f_c) * 2^g_c))      i = 0 .. size-1
    y_c    = T_c[v_c - lo_c]

with ``f_c``/``lo_c`` the input frac_bits and integer lower bound, ``g_c`` the calibrated output
frac_bits and ``sat`` the output bounds. ``phi`` is evaluated once, in float64, and rounded
once. Channels with identical ``(f, lo, g, bounds)`` share a table; all tables are laid end to
end in one flat array and ``base_c = id_c * size - lo_c`` turns ``v_c`` into its flat index.
The Keras layer gathers ``table[v + base]`` (exact integers), the engine's ``table`` op does the
same in NumPy. For QAT the forward value is the table's and the gradient the float function's
(straight-through, eq. 24).

Example:
    >>> import numpy as np
    >>> from fixedq.layers.spec import QSpec
    >>> act = QuantizedActivation("hard_sigmoid", input_specs=[QSpec(7, True, (4,))],
    ...                           output_spec=QSpec(8, False, (8,)))
    >>> np.asarray(act(np.array([[-4.0, 0.0, 1.5, 2.9375]], "float32"))).tolist()
    [[0.0, 0.5, 0.75, 0.98828125]]
"""

from __future__ import annotations

from collections.abc import Callable

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
from fixedq.layers.spec import QSpec
from fixedq.layers.table_functions import FUNCTIONS, check_params
from fixedq.tensors import kops
from fixedq.tensors.rounding import round_half_up

__all__ = ["MAX_TABLE_BITS", "MAX_TABLE_ENTRIES", "QuantizedActivation", "QuantizedELU",
           "QuantizedLeakyReLU", "QuantizedPReLU", "QuantizedTable", "element_tables",
           "integer_tables", "narrow", "table_input_size"]

#: Widest table input: 2^16 integers per channel.
MAX_TABLE_BITS = 16
#: Most entries of all tables of one layer together.
MAX_TABLE_ENTRIES = 1 << 24


def table_input_size(spec: QSpec, channels: int) -> int:
    """How many input integers a channel's table covers (``max_c(hi_c - lo_c) + 1``).

    Raises:
        ValueError: more than ``2^16`` (an input wider than 16 bits has no table).

    Example:
        >>> table_input_size(QSpec(7, True, (4,)), 3)
        256
    """
    lo, hi = output_bounds(spec, channels)
    size = int((hi - lo).max()) + 1
    if size > 1 << MAX_TABLE_BITS:
        raise ValueError(f"a table input of {size} integers (more than {MAX_TABLE_BITS} bits) "
                         f"has no integer table; use activation_bits <= {MAX_TABLE_BITS} "
                         "for the layer before it")
    return size


def integer_tables(phi: Callable, in_spec: QSpec, out_spec: QSpec, channels: int,
                   per_channel: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The flat table and per-channel ``base`` of eq. 38 (both int64).

    ``phi(x, c)`` gives float64 outputs for the float64 grid points ``x`` of channel ``c``;
    with ``per_channel`` False it must not depend on ``c`` (channels then share tables).

    Example:
        >>> t, base = integer_tables(lambda x, c: np.abs(x), QSpec(2, True, (0,)),  # saturates at 7
        ...                          QSpec(3, False, (1,)), channels=2)
        >>> t.tolist(), base.tolist()
        ([7, 6, 4, 2, 0, 2, 4, 6], [4, 4])
    """
    f_in, f_out = in_spec.frac_array(channels), out_spec.frac_array(channels)
    lo, _ = output_bounds(in_spec, channels)
    out_lo, out_hi = output_bounds(out_spec, channels)
    size = table_input_size(in_spec, channels)
    keys: dict[tuple, int] = {}
    ids = []
    for c in range(channels):
        key = (c if per_channel else -1, int(f_in[c]), int(lo[c]), int(f_out[c]),
               int(out_lo[c]), int(out_hi[c]))
        ids.append(keys.setdefault(key, len(keys)))
    if len(keys) * size > MAX_TABLE_ENTRIES:
        raise ValueError(f"{len(keys)} tables of {size} entries exceed {MAX_TABLE_ENTRIES} "
                         "entries; use fewer activation bits before this layer")
    steps = np.arange(size, dtype=np.float64)
    rows = []
    for c, f, low, g, o_lo, o_hi in keys:
        x = np.ldexp(low + steps, -f)
        y = np.asarray(phi(x, max(c, 0)), dtype=np.float64)
        rows.append(np.clip(round_half_up(np.ldexp(y, g)), o_lo, o_hi))
    base = np.asarray(ids, dtype=np.int64) * size - lo
    return np.concatenate(rows).astype(np.int64), base


def narrow(table: np.ndarray) -> np.ndarray:
    """``table`` as int32 when its values fit (a smaller constant to gather from), else int64.

    Example:
        >>> narrow(np.array([0, 255])).dtype, narrow(np.array([0, 2**40])).dtype
        (dtype('int32'), dtype('int64'))
    """
    fits = table.size == 0 or (table.min() >= -(2**31) and table.max() < 2**31)
    return table.astype(np.int32 if fits else np.int64)


class QuantizedTable(QuantizedLayer):
    """Base of the table layers: ``phi(x, c)`` (NumPy float64) and ``float_call(x)`` (Keras,
    for the straight-through gradient) come from subclasses."""

    #: Whether channels may have different functions (``phi`` depends on ``c``).
    per_channel = False

    def build(self, input_shape):
        self.channels = int(input_shape[-1])
        self._f_out = self.output_spec.frac_array(self.channels)
        self._lo, self._hi = output_bounds(self.output_spec, self.channels)
        self._size = table_input_size(self.input_spec0, self.channels)
        if not self.per_channel:  # a fixed function: the tables are constants
            table, base = self.tables()
            self._table, self._base = narrow(table), base.astype(np.int32)
        super().build(input_shape)

    def phi(self, x: np.ndarray, channel: int) -> np.ndarray:
        """The float64 function of ``channel`` on input values ``x`` (the table's entries
        before rounding). Abstract: every subclass (activation, LeakyReLU, ELU, PReLU)
        defines it."""
        raise NotImplementedError(f"{type(self).__name__} must define phi()")

    def float_call(self, x):
        """The float function on a tensor (the straight-through gradient's path). Abstract:
        every subclass defines it."""
        raise NotImplementedError(f"{type(self).__name__} must define float_call()")

    def tables(self) -> tuple[np.ndarray, np.ndarray]:
        """``(table, base)`` of eq. 38 for this layer's specs."""
        return integer_tables(self.phi, self.input_spec0, self.output_spec, self.channels,
                              self.per_channel)

    def integer_params(self) -> dict:
        table, base = self.tables()
        return {"table": table, "base": base, "out_lo": self._lo, "out_hi": self._hi,
                "in_frac": self.input_spec0.frac_array(self.channels), "out_frac": self._f_out}

    def integer_call(self, inputs):
        """Output integers of on-grid ``inputs``: the gather of eq. 38."""
        v = ops.cast(to_channel_integers(inputs, self.input_spec0), "int32")
        index = ops.clip(v + self._base, 0, self._table.shape[0] - 1)
        return ops.take(self._table, index)

    def call(self, inputs, training=None):
        out = from_integers(self.integer_call(inputs), self._f_out, self.compute_dtype)
        if not training:
            return out
        return straight_through(saturate_float(self.float_call(inputs), self.output_spec,
                                               self.channels), out)


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedActivation(QuantizedTable):
    """An elementwise function of :data:`fixedq.layers.table_functions.FUNCTIONS` by name
    (``sigmoid``, ``hard_sigmoid``, ``silu``, ``hard_silu``, ``gelu``, ``tanh``, ...) with its
    parameters, as an integer table."""

    default_function: str | None = None

    def __init__(self, function=None, params=None, **kwargs):
        super().__init__(**kwargs)
        function = function or self.default_function
        self.params = check_params(function, params)
        self.function = function

    def phi(self, x, channel):
        return FUNCTIONS[self.function].numpy(x, **self.params)

    def float_call(self, x):
        return FUNCTIONS[self.function].keras(x, **self.params)

    def get_config(self):
        return {**super().get_config(), "function": self.function, "params": dict(self.params)}


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedLeakyReLU(QuantizedActivation):
    """``LeakyReLU(negative_slope)`` as an integer table."""

    default_function = "leaky_relu"


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedELU(QuantizedActivation):
    """``ELU(alpha)`` as an integer table."""

    default_function = "elu"


def element_tables(alpha: np.ndarray, in_spec: QSpec, out_spec: QSpec,
                   channels: int) -> tuple[np.ndarray, np.ndarray]:
    """PReLU's tables with one ``alpha`` per element (``alpha`` of shape ``(..., channels)``,
    leading axes possibly 1 = shared): the flat table of eq. 38 and ``base`` of ``alpha``'s
    shape. Elements with equal ``(alpha, f, lo, g, lo', hi')`` share a table.

    Raises:
        ValueError: the distinct tables exceed :data:`MAX_TABLE_ENTRIES` entries.

    Example:
        >>> t, base = element_tables(np.array([[0.5], [0.5], [0.0]], np.float32),
        ...                          QSpec(2, True, (0,)), QSpec(3, True, (1,)), 1)
        >>> t.tolist(), base.tolist()
        ([0, 0, 0, 0, 0, 2, 4, 6, -4, -3, -2, -1, 0, 2, 4, 6], [[12], [12], [4]])
    """
    alpha = np.asarray(alpha, dtype=np.float32)
    f_in, f_out = in_spec.frac_array(channels), out_spec.frac_array(channels)
    lo, _ = output_bounds(in_spec, channels)
    out_lo, out_hi = output_bounds(out_spec, channels)
    size = table_input_size(in_spec, channels)
    chan = np.broadcast_to(np.arange(channels), alpha.shape)
    keys = np.stack([alpha.astype(np.float64).ravel(), *(
        np.asarray(a, np.float64)[chan].ravel() for a in (f_in, lo, f_out, out_lo, out_hi))],
        axis=1)
    unique, ids = np.unique(keys, axis=0, return_inverse=True)
    if len(unique) * size > MAX_TABLE_ENTRIES:
        raise ValueError(f"{len(unique)} distinct PReLU tables of {size} entries exceed "
                         f"{MAX_TABLE_ENTRIES} entries; share alpha over more axes "
                         "(shared_axes) or use fewer activation bits before this layer")
    steps = np.arange(size, dtype=np.float64)
    a, f, low, g, o_lo, o_hi = (unique[:, i:i + 1] for i in range(6))
    x = np.ldexp(low + steps, -f.astype(np.int64))  # alpha·x is exact in float64
    y = np.where(x >= 0, x, a * x)
    rows = np.clip(round_half_up(np.ldexp(y, g.astype(np.int64))), o_lo, o_hi)
    base = ids.reshape(alpha.shape).astype(np.int64) * size - lo[chan]
    return rows.ravel().astype(np.int64), base


@keras.saving.register_keras_serializable(package="fixedq")
class QuantizedPReLU(QuantizedTable):
    """``PReLU`` with a trainable ``alpha``: ``x`` for ``x >= 0``, else ``alpha * x``. With one
    alpha per channel (``alpha_shape`` None) the engine gets one table per channel (eq. 38);
    with ``alpha_shape`` (the float layer's alpha shape without the batch axis, e.g.
    ``(H, W, C)`` for Keras' default ``shared_axes=None``, 1 on shared axes) one table per
    distinct ``(alpha, channel spec)`` and a ``base`` of that shape (:func:`element_tables`).
    The Keras layer evaluates the same entry formula on the fly,
    ``sat(round_half_up(alpha * v * 2^(g_c - f_c)))``, so that ``alpha`` trains with QAT.
    ``alpha`` is float32 and ``v`` has at most 17 bits: ``alpha * v`` is exact in float64, so
    both executors round the same exact value."""

    per_channel = True

    def __init__(self, alpha_shape=None, **kwargs):
        super().__init__(**kwargs)
        self.alpha_shape = None if alpha_shape is None else tuple(int(d) for d in alpha_shape)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        shape = (channels,) if self.alpha_shape is None else self.alpha_shape
        if shape[-1] != channels or len(shape) > len(input_shape) - 1 or any(
                d not in (1, int(n)) for d, n in zip(shape[:-1], input_shape[1:-1],
                                                     strict=False)):
            raise ValueError(f"{self.name}: alpha_shape {list(shape)} does not fit the input "
                             f"shape {list(input_shape)}")
        self.alpha = self.add_weight(name="alpha", shape=shape, initializer="zeros")
        super().build(input_shape)

    def tables(self) -> tuple[np.ndarray, np.ndarray]:
        if self.alpha_shape is None:
            return super().tables()
        return element_tables(self.alpha.numpy(), self.input_spec0, self.output_spec,
                              self.channels)

    def get_config(self):
        config = super().get_config()
        if self.alpha_shape is not None:
            config["alpha_shape"] = list(self.alpha_shape)
        return config

    def phi(self, x, channel):
        a = float(np.asarray(self.alpha.numpy(), dtype=np.float32)[channel])
        return np.where(x >= 0, x, a * x)

    def float_call(self, x):
        a = ops.cast(self.alpha, x.dtype)
        return ops.where(x >= 0, x, a * x)

    def integer_call(self, inputs):
        f_in = self.input_spec0.frac_array(self.channels)
        v = to_channel_integers(inputs, self.input_spec0)
        a = ops.cast(ops.cast(self.alpha, "float32"), "float64")
        y = ops.where(v >= 0, v, v * a) * np.ldexp(1.0, self._f_out - f_in)
        return kops.saturate(kops.round_half_up(y), self._lo, self._hi)
