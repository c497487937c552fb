"""Machinery shared by every quantized layer: specs in the config, grid <-> integer conversion.

A quantized layer receives on-grid floats described by ``input_specs`` (one :class:`QSpec` per
input) and produces on-grid floats described by ``output_spec``. Both live in the layer config,
so ``get_config``/``from_config`` and ``.keras`` files keep everything needed to run it and to
convert it to the integer engine.

Example:
    >>> from fixedq.layers.base import output_bounds
    >>> from fixedq.layers.spec import QSpec
    >>> lo, hi = output_bounds(QSpec(3, False, (2,), hi=(6,)), channels=2)
    >>> lo.tolist(), hi.tolist()
    ([0, 0], [6, 6])
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from fixedq.layers.spec import QSpec
from fixedq.tensors import kops

#: Largest accumulator magnitude a float32 op computes exactly / a float64 op computes exactly.
FLOAT32_EXACT = 2**24
FLOAT64_EXACT = 2**53


def exact_float_dtype(bound: int, what: str) -> str:
    """Float dtype whose integer arithmetic is exact up to ``bound`` (eq. 19); beyond ``2^53`` a
    ``ValueError`` naming ``what`` (the engine's ``kernels.exact_dtype`` returns int64 there).

    Example:
        >>> exact_float_dtype(1_200_000, "conv"), exact_float_dtype(2**30, "conv")
        ('float32', 'float64')
    """
    if bound < FLOAT32_EXACT:
        return "float32"
    if bound < FLOAT64_EXACT:
        return "float64"
    raise ValueError(f"{what}: accumulator bound {bound} >= 2^53 cannot be computed exactly; "
                     "use fewer weight or activation bits")


def output_bounds(spec: QSpec, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel integer clip bounds ``(lo, hi)`` of an output spec (int64 arrays)."""
    lo, hi = spec.lo_array(), spec.hi_array()
    return (np.broadcast_to(lo, (channels,)).astype(np.int64),
            np.broadcast_to(hi, (channels,)).astype(np.int64))


def to_integers(x, spec: QSpec, dtype: str = "float64"):
    """Recover aligned integers ``v = x * 2^F`` from an on-grid float (eq. 15), in ``dtype``.

    The result holds integer values exactly (a power-of-two scaling of an on-grid float).
    """
    return ops.cast(x, dtype) * float(2.0**spec.max_frac)


def from_integers(v, frac_bits, dtype: str = "float32"):
    """On-grid float ``v * 2^-f`` from int64 values and static per-channel ``frac_bits``."""
    scale = np.ldexp(1.0, -np.asarray(frac_bits, dtype=np.int64)).astype(dtype)
    return ops.cast(v, dtype) * scale


def saturate_float(x, spec: QSpec, channels: int):
    """``x`` clipped to the float range of ``spec``'s integers (per channel, last axis): the
    training path's saturation, so that a value the integers clip passes no gradient (eq. 24).

    Example:
        >>> import numpy as np
        >>> np.asarray(saturate_float(np.array([[3.0, -9.0]], "float32"),
        ...                           QSpec(3, True, (2,)), 2)).tolist()
        [[1.75, -2.0]]
    """
    f, dtype = spec.frac_array(channels), keras.backend.standardize_dtype(x.dtype)
    return ops.clip(x, *(from_integers(b, f, dtype) for b in output_bounds(spec, channels)))


def straight_through(float_path, exact_path):
    """Forward value of ``exact_path`` with the gradient of ``float_path`` (QAT, eq. 24)."""
    return float_path + ops.stop_gradient(exact_path - float_path)


class QuantizedLayer(keras.layers.Layer):
    """Base class: stores ``input_specs`` and ``output_spec`` and serializes them.

    Subclasses implement ``call``; they may be built without specs only by ``from_config``.
    """

    def __init__(self, input_specs=None, output_spec=None, qconfig=None, **kwargs):
        super().__init__(**kwargs)
        #: The q-config entry this layer was built from (bits, calibration ranges), for
        #: ``dump_config``; ``None`` for layers without their own quantization choices.
        self.qconfig = qconfig
        specs = input_specs or []
        self.input_specs = [s if isinstance(s, QSpec) else QSpec.from_config(s) for s in specs]
        if output_spec is not None and not isinstance(output_spec, QSpec):
            output_spec = QSpec.from_config(output_spec)
        self.output_spec = output_spec

    @property
    def input_spec0(self) -> QSpec:
        if not self.input_specs:
            raise ValueError(f"layer {self.name!r} has no input spec: build it with quantize()")
        return self.input_specs[0]

    def get_config(self):
        config = super().get_config()
        config.update({
            "input_specs": [s.to_config() for s in self.input_specs],
            "output_spec": None if self.output_spec is None else self.output_spec.to_config(),
            "qconfig": self.qconfig,
        })
        return config

    def compute_output_shape(self, input_shape):
        return input_shape


def is_quantized_layer(layer) -> bool:
    """Whether ``layer`` is a fixedq quantized layer: a :class:`QuantizedLayer` (every
    ``Quantized*`` layer, ``InputQuantizer``, ``OutputQuantizer``) or a ``Dequantizer``.

    Example:
        >>> import keras
        >>> is_quantized_layer(keras.layers.Dense(2))
        False
    """
    from fixedq.layers.quantizers.dequantizer import Dequantizer

    return isinstance(layer, (QuantizedLayer, Dequantizer))


def is_quantized(model) -> bool:
    """The one "is this model quantized" check: whether any layer of ``model`` is a fixedq
    quantized layer (:func:`is_quantized_layer`). ``quantize`` rejects such models; ``check``,
    ``inspect``, ``qat`` and the CLI require them. (The engine converter additionally requires
    the structure it can run: an ``InputQuantizer`` after every input.)

    Example:
        >>> import keras
        >>> is_quantized(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
        False
    """
    return any(is_quantized_layer(layer) for layer in model.layers)


def to_channel_integers(x, spec: QSpec, dtype: str = "float64"):
    """Per-channel integers ``v_c = x_c * 2^f_c`` (no alignment) from an on-grid float."""
    scale = np.ldexp(1.0, spec.frac_array())
    return ops.cast(x, dtype) * scale.astype(dtype)


def shift_requantize(v, shift, spec: QSpec, channels: int):
    """``sat(shift_round(v, shift))`` into ``spec``, back to an on-grid float (eqs. 5, 3, 12)."""
    lo, hi = output_bounds(spec, channels)
    y = kops.saturate(kops.shift_round(v, shift), lo, hi)
    return from_integers(y, spec.frac_array(channels))
