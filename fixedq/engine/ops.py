"""Engine operations: one integer op per (fused) quantized layer, and how each one runs.

An :class:`Op` is plain data: a ``kind``, the names of its input tensors, JSON-able ``attrs``
and integer NumPy ``arrays``. :data:`KERNELS` is the engine's one table of op kinds: per kind a
:class:`Kernel` (a description, the NumPy function that runs it, the hardware profiles that
have it); :data:`NEURAL_TYPES` does the same for the ``type`` of a ``neural`` op.
:func:`run_op` executes an op on ``int64`` tensors through the table. The equations are those
of ``docs/numerics.md`` and :mod:`fixedq.tensors.rounding` (the shared NumPy reference); every
tensor between ops holds the raw integers ``v`` (frac_bits in ``attrs``).

The op registry (:mod:`fixedq.ops`, which imports Keras) names the kinds each operation
produces (``OpSpec.engine_kinds``); a test checks they match this table both ways.

Example:
    >>> import numpy as np
    >>> op = Op("relu", "clip", ["x"], {}, {"lo": np.array([0]), "hi": np.array([6])})
    >>> run_op(op, [np.array([[-3, 2, 9]])]).tolist()
    [[0, 2, 6]]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fixedq.engine import (
    buffer_conv,
    kernels,
    layernorm,
    recurrent,
    table_ops,
    transformer_ops,
)
from fixedq.tensors.rounding import DEFAULT_ROUNDING, quantize_input, requantize, shift_round
from fixedq.tensors.slicing import slice_key


@dataclass
class Op:
    """One engine op. Its output tensor is called ``name``.

    Attributes:
        name: output tensor name (the last fused Keras layer's name).
        kind: one of :data:`KERNELS`.
        inputs: input tensor names.
        attrs: JSON-able settings (strides, padding, output spec, fused layer names, ...).
        arrays: integer parameters (int64 in memory).
    """

    name: str
    kind: str
    inputs: list[str]
    attrs: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        """Keras layer names fused into this op."""
        return list(self.attrs.get("layers", [self.name]))

    @property
    def out_frac(self) -> np.ndarray:
        return np.asarray(self.attrs.get("out_frac", [0]), dtype=np.int64)


def op_error(op: Op, err: Exception) -> ValueError:
    """The ``ValueError`` that reports ``err`` raised while running ``op``, its message starting
    with the op's name and kind (a message that already names the op is kept).

    Example:
        >>> str(op_error(Op("conv", "neural", ["x"]), IndexError("index 9 is out of bounds")))
        "op 'conv' (neural): index 9 is out of bounds"
    """
    text = str(err)
    if not text.startswith(f"op {op.name!r}"):
        text = f"op {op.name!r} ({op.kind}): {text or type(err).__name__}"
    return ValueError(text)


def linear(op: Op, x: np.ndarray) -> np.ndarray:
    """The exact linear part (no bias) of a ``neural`` op on aligned input integers ``x``."""
    if op.attrs.get("conv1d"):  # Conv1D: a conv2d over a (1, steps) image
        return neural_type(op).linear(op, x[:, None])[:, 0]
    return neural_type(op).linear(op, x)


def _conv_args(op: Op) -> tuple:
    a = op.attrs
    return (tuple(a["strides"]), a["padding"], tuple(a["dilation_rate"]), a["accum_dtype"])


def _dense(op: Op, x: np.ndarray) -> np.ndarray:
    return kernels.dense(x, op.arrays["kernel"], op.attrs["accum_dtype"])


def _conv2d(op: Op, x: np.ndarray) -> np.ndarray:
    return kernels.conv2d(x, op.arrays["kernel"], *_conv_args(op))


def _depthwise(op: Op, x: np.ndarray) -> np.ndarray:
    return kernels.depthwise_conv2d(x, op.arrays["kernel"], *_conv_args(op))


def _transpose(op: Op, x: np.ndarray) -> np.ndarray:
    check_transpose_size(op, x)
    return kernels.conv2d_transpose(x, op.arrays["kernel"], *_conv_args(op))


def check_transpose_size(op: Op, x: np.ndarray) -> None:
    """A transposed conv's accumulation buffer fits the value limit (checked before it is
    allocated: a large stride on a dynamic-size input could otherwise ask for gigabytes).
    Does nothing for other ops."""
    from fixedq.engine.fileformat import max_values

    a, kernel = op.attrs, op.arrays["kernel"]
    if a.get("type") != "transpose" or x.ndim != 4:
        return  # the kernel reports the shape
    size = x.shape[0] * kernel.shape[2]
    for i in range(2):
        eff = (kernel.shape[i] - 1) * a["dilation_rate"][i] + 1
        size *= (x.shape[1 + i] - 1) * a["strides"][i] + eff + a["strides"][i]
    if size > max_values():
        raise ValueError(f"a transposed conv of inputs {x.shape} with strides {a['strides']} "
                         f"needs {size} values, more than the limit of {max_values()} "
                         "(FIXEDQ_ENGINE_MAX_VALUES; or use a smaller batch_size)")


def aligned_input(op: Op, x: np.ndarray) -> np.ndarray:
    """``x * 2^(F - f_c)``: input integers aligned to the common frac_bits (eq. 8)."""
    align = op.arrays.get("in_align")
    if align is None or not np.any(align):
        return x
    return np.left_shift(x, align)


def rounding_of(op: Op) -> str:
    """The op's requantization rounding rule (eq. 5b; attr ``rounding``, default half up)."""
    return op.attrs.get("rounding", DEFAULT_ROUNDING)


def fast_requantize(acc, multiplier, shift, lo, hi, rounding=DEFAULT_ROUNDING) -> np.ndarray:
    """:func:`fixedq.tensors.rounding.requantize` (eq. 7) with in-place int64 steps when every
    shift is a right shift (identical results, less memory traffic); other rounding rules than
    the default run the reference."""
    shift = np.asarray(shift, dtype=np.int64)
    if rounding != DEFAULT_ROUNDING:
        return requantize(acc, multiplier, shift, lo, hi, rounding)
    if np.any(shift < 0) or np.any(shift > 62):  # int64 shifts by >= 64 are not defined
        return requantize(acc, multiplier, shift, lo, hi)  # (files from before eq. 13b's cap)
    prod = np.multiply(acc, multiplier, dtype=np.int64)
    # eq. 5 as shift_round computes it, ((v >> (s-1)) + 1) >> 1: adding 2^(s-1) first would
    # wrap past 2^63 for a 48-bit accumulator times a 16-bit multiplier at s >= 49
    up = (shift > 0).astype(np.int64)
    np.right_shift(prod, np.maximum(shift - 1, 0), out=prod)
    prod += up
    np.right_shift(prod, up, out=prod)
    return np.clip(prod, lo, hi, out=prod)


def neural_output(op: Op, acc_linear: np.ndarray) -> np.ndarray:
    """Bias, accumulator saturation, requantization and fused pooling (eqs. 10-14)."""
    a = op.attrs
    bias = op.arrays["bias"]
    acc = acc_linear + bias
    top = int(a.get("accum_bound", 1 << 62)) + int(np.abs(bias).max(initial=0))
    if top > a["acc_hi"] or -top < a["acc_lo"]:  # saturation can happen: apply it
        np.clip(acc, a["acc_lo"], a["acc_hi"], out=acc)
    y = fast_requantize(acc, op.arrays["multiplier"], op.arrays["shift"], op.arrays["out_lo"],
                        op.arrays["out_hi"], rounding_of(op))
    pool = a.get("pool")
    if pool:
        y = kernels.max_pool2d(y, tuple(pool["pool_size"]), tuple(pool["strides"]),
                               pool["padding"])
    return y


def _run_neural(op: Op, xs):
    return neural_output(op, linear(op, aligned_input(op, xs[0])))


def reject_nan(x) -> None:
    """Raise ``ValueError`` if the float input ``x`` holds NaN (it has no integer value).

    Example:
        >>> reject_nan(np.array([1.0, np.inf]))   # inf saturates (eq. 4): accepted
    """
    x = np.asarray(x)
    if x.dtype.kind in "fc":
        n = int(np.count_nonzero(np.isnan(x)))
        if n:
            raise ValueError(f"input contains {n} NaN value{'s' if n > 1 else ''}; NaN is the "
                             "one non-finite input that cannot be quantized (±inf saturate): "
                             "replace it, e.g. with np.nan_to_num, before predict")


def _run_input(op: Op, xs):
    """Eq. 4, saturating: ``±inf`` and huge values give the range ends; NaN is rejected."""
    reject_nan(xs[0])
    return quantize_input(xs[0], op.arrays["frac"], op.arrays["lo"], op.arrays["hi"])


def _run_affine(op: Op, xs):
    r = op.arrays
    v = xs[0] * r["multiplier"] + r["offset"]
    return np.clip(shift_round(v, r["shift"], rounding_of(op)), r["out_lo"], r["out_hi"])


def _run_gap(op: Op, xs):
    r = op.arrays
    acc = xs[0].sum(axis=tuple(range(1, xs[0].ndim - 1)))  # (N, H, W, C) or (N, steps, C)
    return requantize(acc, r["multiplier"], r["shift"], r["out_lo"], r["out_hi"],
                      rounding_of(op))


def _run_avgpool(op: Op, xs):
    a, r = op.attrs, op.arrays
    acc = kernels.avg_pool_sum(xs[0], tuple(a["pool_size"]), tuple(a["strides"]),
                               a["padding"])
    return requantize(acc, r["multiplier"], r["shift"], r["out_lo"], r["out_hi"],
                      rounding_of(op))


def _run_add(op: Op, xs):
    """Eq. 27: aligned exact sum + rounding shift. Imported programs (TFLite ADD) may rescale
    each aligned input first (``multiplier_in<i>``, ``shift_in<i>``) and the sum with
    ``multiplier`` (eq. 7 with the op's rounding rule instead of a plain shift)."""
    r, rule = op.arrays, rounding_of(op)
    acc = None
    for i, x in enumerate(xs):
        v = np.left_shift(x, r[f"align{i}"])
        if f"multiplier_in{i}" in r:
            v = requantize(v, r[f"multiplier_in{i}"], r[f"shift_in{i}"], -(2**62), 2**62, rule)
        acc = v if acc is None else acc + v
    if "multiplier" in r:
        return requantize(acc, r["multiplier"], r["shift"], r["out_lo"], r["out_hi"], rule)
    return np.clip(shift_round(acc, r["shift"], rule), r["out_lo"], r["out_hi"])


def _run_mul(op: Op, xs):
    """Eq. 46: exact product of two broadcast tensors, rounding shift, clip."""
    r = op.arrays
    return np.clip(shift_round(xs[0] * xs[1], r["shift"]), r["out_lo"], r["out_hi"])


def _run_gmp(op: Op, xs):
    """Global max pooling: the largest integer per channel over the spatial axes / steps."""
    return xs[0].max(axis=tuple(range(1, xs[0].ndim - 1)))


def _run_upsample(op: Op, xs):
    """Nearest-neighbour upsampling: every integer repeated ``size`` times along H and W."""
    sh, sw = op.attrs["size"]
    return np.repeat(np.repeat(xs[0], sh, axis=1), sw, axis=2)


def _run_pad(op: Op, xs):
    """Zero padding of the spatial axes (``pads`` = [[top, bottom], [left, right]], or
    [[before, after]] for steps). An asymmetric input arrives as ``v`` (its offset added
    before the op), so the zeros are zeros of ``v``."""
    pads = [(0, 0), *(tuple(p) for p in op.attrs["pads"]), (0, 0)]
    return np.pad(xs[0], pads, constant_values=0)


def _run_shift(op: Op, xs):
    r = op.arrays
    return np.clip(shift_round(xs[0], r["shift"], rounding_of(op)), r["out_lo"], r["out_hi"])


def _run_concat(op: Op, xs):
    r = op.arrays
    parts = []
    for i, x in enumerate(xs):
        if f"shift{i}" in r:
            x = np.clip(shift_round(x, r[f"shift{i}"], rounding_of(op)), r["out_lo"],
                        r["out_hi"])
        parts.append(x)
    return np.concatenate(parts, axis=op.attrs["axis"])


def _run_clip(op: Op, xs):
    return np.clip(xs[0], op.arrays["lo"], op.arrays["hi"])


def _run_maxpool(op: Op, xs):
    a = op.attrs
    return kernels.max_pool2d(xs[0], tuple(a["pool_size"]), tuple(a["strides"]), a["padding"])


def _run_reshape(op: Op, xs):
    return xs[0].reshape((xs[0].shape[0], *op.attrs["target_shape"]))


def _run_permute(op: Op, xs):
    return np.transpose(xs[0], (0, *op.attrs["dims"]))


def _run_identity(op: Op, xs):
    return xs[0]


def _run_slice(op: Op, xs):
    """Strided slice of the non-batch axes (normalized ``begin``/``end``/``strides``, integer
    indices on the ``shrink`` axes): the integers are copied."""
    a = op.attrs
    x = xs[0]
    for axis, (b, e, s) in enumerate(zip(a["begin"], a["end"], a["strides"], strict=True),
                                     start=1):
        idx = range(b, e, s)  # the load-time check of validate.py, on the real sizes
        n = x.shape[axis] if axis < x.ndim else 0
        if not (all(0 <= i < n for i in (idx[0], idx[-1])) if len(idx) else 0 <= b <= n):
            raise ValueError(f"slice {b}:{e}:{s} of axis {axis} is outside its {n} entries "
                             f"(input {x.shape})")
    key = slice_key(a["begin"], a["end"], a["strides"], a.get("shrink", []))
    return np.ascontiguousarray(x[(slice(None), *key)])


@dataclass(frozen=True)
class Kernel:
    """The engine side of one op kind.

    Attributes:
        description: one line (``Model.summary``, docs/engine.md).
        run: ``run(op, xs) -> y``: the NumPy reference that executes an op of this kind on its
            input tensors (int64; floats for ``input``).
        targets: names of the hardware profiles (:data:`fixedq.engine.targets.TARGETS`) that
            run this kind.
    """

    description: str
    run: Callable[[Op, list[np.ndarray]], np.ndarray]
    targets: tuple[str, ...] = ()


@dataclass(frozen=True)
class NeuralType:
    """One ``type`` of the ``neural`` kind: its exact linear part and the profiles that have it.

    Attributes:
        description: one line.
        linear: ``linear(op, x) -> acc``: the exact sums (no bias) on aligned input integers.
        targets: names of the hardware profiles that run this type.
    """

    description: str
    linear: Callable[[Op, np.ndarray], np.ndarray]
    targets: tuple[str, ...] = ()


_AKIDA = ("akida-1.0", "akida-2.0")
_AKIDA2 = ("akida-2.0",)

#: The engine's op kinds: one :class:`Kernel` per kind (the only place a kind is defined).
KERNELS: dict[str, Kernel] = {
    "input": Kernel("float -> integer input quantizer (eq. 4)", _run_input, _AKIDA),
    "neural": Kernel("conv2d / depthwise / transpose / dense + bias + requantize "
                     "(+ fused max-pool)", _run_neural, _AKIDA),
    "affine": Kernel("per-channel integer affine (BatchNormalization / Rescaling)",
                     _run_affine, _AKIDA2),
    "gap": Kernel("global average pooling (2-D or over steps): exact sum + requantize",
                  _run_gap, _AKIDA),
    "avgpool": Kernel("average pooling: exact window sum + requantize by 1/count",
                      _run_avgpool, _AKIDA2),
    "add": Kernel("aligned exact sum + rounding shift", _run_add, _AKIDA2),
    "mul": Kernel("exact elementwise product (broadcasting) + rounding shift (eq. 46)",
                  _run_mul, _AKIDA2),
    "pad": Kernel("zero padding of the spatial axes", _run_pad, _AKIDA2),
    "gmp": Kernel("global max pooling (2-D or over steps)", _run_gmp, _AKIDA2),
    "upsample": Kernel("nearest-neighbour upsampling (integers repeated)", _run_upsample,
                       _AKIDA2),
    "shift": Kernel("rounding shift + clip (OutputQuantizer)", _run_shift, _AKIDA2),
    "concat": Kernel("concatenation (optionally re-gridded inputs)", _run_concat, _AKIDA2),
    "clip": Kernel("ReLU as an integer clip", _run_clip, _AKIDA),
    "maxpool": Kernel("max pooling", _run_maxpool, _AKIDA),
    "reshape": Kernel("reshape / flatten", _run_reshape, _AKIDA),
    "permute": Kernel("axis permutation", _run_permute, _AKIDA2),
    "identity": Kernel("no-op (Dropout at inference)", _run_identity, _AKIDA),
    "slice": Kernel("strided slice / integer index of the non-batch axes (integers copied)",
                    _run_slice),
    "shiftmax": Kernel("integer shiftmax: exp2 table + shifts, power-of-two normalization "
                       "(eq. 29)", transformer_ops.run_shiftmax),
    "attention": Kernel("multi-head attention: exact QK^T, requantized scores, shiftmax, PV "
                        "(eq. 30)", transformer_ops.run_attention),
    "attention_softmax": Kernel("multi-head attention (Keras MultiHeadAttention): exact QK^T, "
                                "requantized scores, integer softmax, PV (eq. 30b)",
                                transformer_ops.run_attention_softmax),
    "madnorm": Kernel("layer MAD normalization: integer mean, MAD, rounded division (eq. 31)",
                      transformer_ops.run_madnorm),
    "layernorm": Kernel("layer normalization: exact mean and variance, integer reciprocal "
                        "square root, rounded division, affine (eq. 47)",
                        layernorm.run_layernorm),
    "class_token": Kernel("prepend an integer class token, re-gridded input (eq. 32)",
                          transformer_ops.run_class_token),
    "add_pos": Kernel("add integer position embeddings + rounding shift (eq. 33)",
                      transformer_ops.run_add_pos),
    "extract_token": Kernel("select one token (eq. 34)", transformer_ops.run_extract_token),
    "table": Kernel("elementwise function as an integer table over the input integers (eq. 38)",
                    table_ops.run_table),
    "softmax": Kernel("softmax: exp table, exact sum, rounded integer division (eq. 39)",
                      table_ops.run_softmax),
    "buffer_conv": Kernel("temporal conv over an integer FIFO of the last k frames + requantize "
                          "(streaming state, eq. 40)", buffer_conv.run_first_frame, _AKIDA2),
    "recurrent": Kernel("complex diagonal recurrence with integer states, output Re(s) "
                        "(streaming state, eq. 41)", recurrent.run_first_frame, _AKIDA2),
}

#: The ``type`` attribute of a ``neural`` op: one :class:`NeuralType` per type.
NEURAL_TYPES: dict[str, NeuralType] = {
    "conv2d": NeuralType("2-D convolution (Conv1D: over a (1, steps) image)", _conv2d, _AKIDA),
    "depthwise": NeuralType("depthwise 2-D convolution", _depthwise, _AKIDA),
    "transpose": NeuralType("transposed 2-D convolution (regular or depthwise kernel)",
                            _transpose, _AKIDA2),
    "dense": NeuralType("dense (over the last axis)", _dense, _AKIDA),
}


def kernel(kind: str, name: str = "?") -> Kernel:
    """The :class:`Kernel` of op kind ``kind`` (``name``: the op, for the error message).

    Example:
        >>> kernel("clip").description
        'ReLU as an integer clip'
    """
    try:
        return KERNELS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown engine op kind {kind!r} (op {name!r}); "
                         f"known: {sorted(KERNELS)}") from None


def neural_type(op: Op) -> NeuralType:
    """The :class:`NeuralType` of neural op ``op`` (``ValueError`` for an unknown type)."""
    t = op.attrs.get("type")
    try:
        return NEURAL_TYPES[t]
    except (KeyError, TypeError):
        raise ValueError(f"unknown neural op type {t!r} (op {op.name!r}); "
                         f"known: {sorted(NEURAL_TYPES)}") from None


def kinds_for_target(target: str) -> tuple[str, ...]:
    """The op kinds hardware profile ``target`` runs (from :data:`KERNELS`).

    Example:
        >>> "add" in kinds_for_target("akida-1.0"), "add" in kinds_for_target("akida-2.0")
        (False, True)
    """
    return tuple(k for k, v in KERNELS.items() if target in v.targets)


def neural_types_for_target(target: str) -> tuple[str, ...]:
    """The neural op types hardware profile ``target`` runs (from :data:`NEURAL_TYPES`)."""
    return tuple(t for t, v in NEURAL_TYPES.items() if target in v.targets)


def run_op(op: Op, xs: list[np.ndarray]) -> np.ndarray:
    """Execute ``op`` on its input tensors (int64; floats for the ``input`` op)."""
    return kernel(op.kind, op.name).run(op, xs)
