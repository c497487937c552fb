"""Quantized transformer layers: integer-only inference paths (docs/numerics.md eqs. 29-34).

Like every fixedq layer they take on-grid floats ``x = v * 2^-f`` and return on-grid floats;
inside, everything on the value path is int64 (or float BLAS on integers where a static bound
proves it exact, eq. 19). In training mode they return the exact integer result with the
gradient of the float layer (straight-through, eq. 24). ``engine_op()`` gives the integer
parameters the NumPy engine runs (:mod:`fixedq.engine.transformer_ops`).

Example:
    >>> import numpy as np
    >>> from fixedq.layers.spec import QSpec
    >>> sm = QuantizedShiftmax(input_specs=[QSpec(7, True, (4,))],
    ...                        output_spec=QSpec(8, False, (8,)))
    >>> (np.asarray(sm(np.array([[0.0, 1.0, 2.0]], "float32"))) * 256).tolist()
    [[32.0, 64.0, 128.0]]
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from fixedq.layers.base import (
    QuantizedLayer,
    exact_float_dtype,
    from_integers,
    output_bounds,
    straight_through,
    to_channel_integers,
    to_integers,
)
from fixedq.layers.softmax import EXP_BITS, exp_table
from fixedq.layers.transformers import float_layers as fl
from fixedq.layers.transformers import intops
from fixedq.tensors import kops
from fixedq.tensors.rounding import round_half_up, to_multiplier_shift

_SERIALIZE = keras.saving.register_keras_serializable(package="fixedq")
_INT64_SAFE = 2**62


def _i64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.int64)


def _clip_float(z, lo, hi, f, dtype):
    return ops.clip(z, from_integers(lo, f, dtype), from_integers(hi, f, dtype))


def _align(spec, channels: int) -> np.ndarray:
    return spec.max_frac - spec.frac_array(channels)


class _TransformerLayer(QuantizedLayer):
    """Base of the quantized transformer layers.

    Every subclass sets ``engine_kind`` and defines ``engine_op()`` returning
    ``(kind, attrs, arrays)``, what the engine converter stores for the layer.
    """

    engine_kind = ""

    def set_float_weights(self, node) -> None:
        """Copy the float layer's variables (by name) from a graph node."""
        names = [w.path.split("/")[-1] for w in self.weights]
        values = [node.weight(n) for n in names]
        missing = [n for n, v in zip(names, values, strict=True) if v is None]
        if missing:
            raise ValueError(f"layer {self.name!r}: float weights {missing} not found")
        self.set_weights(values)


def shiftmax_params(score_frac: int, exp_bits: int, prob_bits: int, length: int) -> dict:
    """Static shiftmax constants (eq. 29): table, k_max, output frac and clip."""
    return {"score_frac": int(score_frac), "exp_bits": int(exp_bits),
            "k_max": intops.shiftmax_k_max(length, exp_bits), "prob_frac": int(prob_bits),
            "prob_hi": (1 << prob_bits) - 1}


@_SERIALIZE
class QuantizedShiftmax(_TransformerLayer):
    """Integer shiftmax over the last axis (eq. 29); output unsigned, frac_bits = value_bits."""

    engine_kind = "shiftmax"

    def __init__(self, exp_bits: int = 15, **kwargs):
        super().__init__(**kwargs)
        self.exp_bits = int(exp_bits)

    def build(self, input_shape):
        n = int(input_shape[-1])
        spec = self.input_spec0
        big_f = spec.max_frac
        fs = min(max(big_f, 0), intops.MAX_SCORE_FRAC)
        self._align = _align(spec, n)
        self._in_shift = big_f - fs
        bits = self.output_spec.value_bits
        self._p = shiftmax_params(fs, self.exp_bits, bits, n)
        self._table = intops.exp2_table(fs, self.exp_bits)
        super().build(input_shape)

    def call(self, inputs, training=None):
        p = self._p
        v = ops.cast(to_integers(inputs, self.input_spec0), "int64")
        d = kops.shift_round(v, self._in_shift)
        y = intops.shiftmax_int(d, p["score_frac"], self._table, self.exp_bits, p["k_max"],
                                p["prob_frac"], p["prob_hi"])
        out = from_integers(y, p["prob_frac"], self.compute_dtype)
        if not training:
            return out
        return straight_through(fl.shiftmax(inputs), out)

    def engine_op(self):
        attrs = {k: v for k, v in self._p.items()}
        attrs["in_shift"] = int(self._in_shift)
        return self.engine_kind, attrs, {"in_align": _i64(self._align),
                                         "exp_table": self._table}

    def get_config(self):
        return {**super().get_config(), "exp_bits": self.exp_bits}


@_SERIALIZE
class QuantizedAttention(_TransformerLayer):
    """Integer multi-head attention (eq. 30) on quantized ``[query, key, value]``.

    Scores ``q k^T`` are exact; they are requantized to ``score_frac`` frac_bits with the
    ``1/sqrt(d)`` scale folded into one multiplier/shift, go through the integer shiftmax
    (probabilities of ``prob_bits`` unsigned bits), and ``p v`` (exact) is shifted to the
    calibrated output spec. With ``softmax="softmax"`` (Keras ``MultiHeadAttention``, split by
    ``sanitize``) the probabilities are the integer softmax of eq. 39 (exp table, exact sum,
    rounded division; eq. 30b) and the engine kind is ``attention_softmax``.
    """

    engine_kind = "attention"

    @property
    def kind(self) -> str:
        """The engine op kind: ``attention`` (shiftmax) or ``attention_softmax``."""
        return "attention" if self.softmax == "shiftmax" else "attention_softmax"

    def __init__(self, num_heads: int = 1, score_frac: int = 8, exp_bits: int = 15,
                 prob_bits: int = 8, buffer_bits: int = 32, scale_bits: int = 8,
                 softmax: str = "shiftmax", **kwargs):
        super().__init__(**kwargs)
        if softmax not in ("shiftmax", "softmax"):
            raise ValueError(f"softmax must be 'shiftmax' or 'softmax', got {softmax!r}")
        self.softmax = softmax
        self.num_heads = int(num_heads)
        self.score_frac = int(score_frac)
        self.exp_bits = int(exp_bits)
        self.prob_bits = int(prob_bits)
        self.buffer_bits = int(buffer_bits)
        self.scale_bits = int(scale_bits)
        if not 0 <= self.score_frac <= intops.MAX_SCORE_FRAC:
            raise ValueError(f"score_frac must be in [0, {intops.MAX_SCORE_FRAC}], "
                             f"got {score_frac!r}")

    def build(self, input_shape):
        fl.check_attention_shapes(self.name, input_shape, self.num_heads)
        if len(self.input_specs) != 3:
            raise ValueError(f"layer {self.name!r} needs 3 input specs, got "
                             f"{len(self.input_specs)}")
        dim = int(input_shape[0][-1])
        nk = input_shape[1][1]
        if nk is None:
            raise ValueError(f"layer {self.name!r} needs a known key sequence length")
        self.channels = dim
        head = dim // self.num_heads
        sq, sk, sv = self.input_specs
        self._fq, self._fk, self._fv = sq.max_frac, sk.max_frac, sv.max_frac
        self._aligns = [_align(s, dim) for s in self.input_specs]
        self._score_bound = head * sq.aligned_max_abs() * sk.aligned_max_abs()
        self._score_dtype = exact_float_dtype(self._score_bound, f"layer {self.name!r} scores")
        factor = 2.0 ** (self.score_frac - self._fq - self._fk) / math.sqrt(head)
        m, s = to_multiplier_shift(np.array([factor]), self.scale_bits)
        self._mult, self._shift = int(m[0]), int(s[0])
        if self._score_bound * max(self._mult, 1) >= _INT64_SAFE:
            raise ValueError(f"layer {self.name!r}: scaled scores could overflow int64")
        top = 1 << (self.buffer_bits - 1)
        self._acc_lo, self._acc_hi = -top, top - 1
        if self.softmax == "shiftmax":
            self._p = shiftmax_params(self.score_frac, self.exp_bits, self.prob_bits, int(nk))
            self._table = intops.exp2_table(self.score_frac, self.exp_bits)
        else:  # eq. 39 on the scores: table grid = score_frac, k_max unused
            self._p = {"score_frac": self.score_frac, "exp_bits": EXP_BITS, "k_max": 0,
                       "prob_frac": self.prob_bits, "prob_hi": (1 << self.prob_bits) - 1}
            self._table = exp_table(self.score_frac, EXP_BITS)
        self._out_bound = int(nk) * self._p["prob_hi"] * sv.aligned_max_abs()
        self._out_dtype = exact_float_dtype(self._out_bound, f"layer {self.name!r} output")
        self._f_out = self.output_spec.frac_array(dim)
        self._out_shift = self._p["prob_frac"] + self._fv - self._f_out
        self._lo, self._hi = output_bounds(self.output_spec, dim)
        super().build(input_shape)

    def call(self, inputs, training=None):
        q, k, v = inputs
        h, p = self.num_heads, self._p
        qh = fl.split_heads(to_integers(q, self.input_specs[0], self._score_dtype), h)
        kh = fl.split_heads(to_integers(k, self.input_specs[1], self._score_dtype), h)
        vh = fl.split_heads(to_integers(v, self.input_specs[2], self._out_dtype), h)
        scores = ops.cast(ops.matmul(qh, ops.transpose(kh, (0, 1, 3, 2))), "int64")
        s = kops.shift_round(scores * np.int64(self._mult), self._shift)
        s = ops.clip(s, self._acc_lo, self._acc_hi)
        if self.softmax == "shiftmax":
            probs = intops.shiftmax_int(s, self.score_frac, self._table, self.exp_bits,
                                        p["k_max"], p["prob_frac"], p["prob_hi"])
        else:
            probs = intops.softmax_int(s, self._table, p["prob_frac"], p["prob_hi"])
        o = ops.cast(ops.matmul(ops.cast(probs, self._out_dtype), vh), "int64")
        y = kops.saturate(kops.shift_round(fl.merge_heads(o), self._out_shift), self._lo,
                          self._hi)
        out = from_integers(y, self._f_out, self.compute_dtype)
        if not training:
            return out
        z = fl.attention_float(q, k, v, h, self.softmax)
        return straight_through(_clip_float(z, self._lo, self._hi, self._f_out,
                                            self.compute_dtype), out)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def engine_op(self):
        attrs = {**self._p, "num_heads": self.num_heads, "score_bound": int(self._score_bound),
                 "score_multiplier": self._mult, "score_shift": self._shift,
                 "acc_lo": self._acc_lo, "acc_hi": self._acc_hi,
                 "out_bound": int(self._out_bound)}
        arrays = {f"align{i}": _i64(a) for i, a in enumerate(self._aligns)}
        arrays.update(exp_table=self._table, out_shift=_i64(self._out_shift),
                      out_lo=_i64(self._lo), out_hi=_i64(self._hi))
        return self.kind, attrs, arrays

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "softmax": self.softmax,
                "score_frac": self.score_frac, "exp_bits": self.exp_bits,
                "prob_bits": self.prob_bits, "buffer_bits": self.buffer_bits,
                "scale_bits": self.scale_bits}


@_SERIALIZE
class QuantizedLayerMadNormalization(_TransformerLayer):
    """Integer MAD normalization (eq. 31): integer mean and MAD, rounded integer division to
    ``norm_frac`` frac_bits, then the per-channel affine of eq. 28 (``gamma``, ``beta``)."""

    engine_kind = "madnorm"

    def __init__(self, epsilon: float = 1e-3, norm_frac: int = 12, scale_bits: int = 8,
                 **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)
        self.norm_frac = int(norm_frac)
        self.scale_bits = int(scale_bits)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.channels = dim
        self.gamma = self.add_weight(name="gamma", shape=(dim,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(dim,), initializer="zeros")
        spec = self.input_spec0
        self._big_f = spec.max_frac
        self._align = _align(spec, dim)
        self._eps_int = int(round_half_up(np.float64(self.epsilon) * dim * dim
                                          * 2.0 ** self._big_f))
        c_max = 2 * dim * spec.aligned_max_abs()
        if c_max * dim * (2 << self.norm_frac) * 2 >= _INT64_SAFE:
            raise ValueError(f"layer {self.name!r}: MAD normalization of {dim} channels "
                             "could overflow int64; use fewer activation bits")
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

    def call(self, inputs, training=None):
        mult, shift, offset = self.integer_terms()
        v = ops.cast(to_integers(inputs, self.input_spec0), "int64")
        dim = self.channels
        c = dim * v - ops.sum(v, axis=-1, keepdims=True)
        den = ops.sum(ops.abs(c), axis=-1, keepdims=True) + self._eps_int
        den = ops.maximum(den, 1)
        z = intops.round_div(c * np.int64(dim << self.norm_frac), den)
        y = kops.saturate(kops.shift_round_dynamic(z * mult + offset, shift), self._lo, self._hi)
        out = from_integers(y, self._f_out, self.compute_dtype)
        if not training:
            return out
        zf = fl.mad_normalize(inputs, self.gamma, self.beta, self.epsilon)
        return straight_through(_clip_float(zf, self._lo, self._hi, self._f_out,
                                            self.compute_dtype), out)

    def engine_op(self):
        mult, shift, offset = (ops.convert_to_numpy(t).astype(np.int64)
                               for t in self.integer_terms())
        return self.engine_kind, {"eps_int": self._eps_int, "norm_frac": self.norm_frac}, {
            "in_align": _i64(self._align), "multiplier": mult, "shift": shift,
            "offset": offset, "out_lo": _i64(self._lo), "out_hi": _i64(self._hi)}

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon, "norm_frac": self.norm_frac,
                "scale_bits": self.scale_bits}


@_SERIALIZE
class QuantizedClassToken(_TransformerLayer):
    """Prepend the class token quantized to the output grid; tokens re-gridded (eq. 32)."""

    engine_kind = "class_token"

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.channels = dim
        self.token = self.add_weight(name="token", shape=(dim,), initializer="zeros")
        self._f_out = self.output_spec.frac_array(dim)
        self._shift = self.input_spec0.frac_array(dim) - self._f_out
        self._lo, self._hi = output_bounds(self.output_spec, dim)
        super().build(input_shape)

    def token_int(self):
        return kops.quantize_float(self.token, self._f_out, self._lo, self._hi)

    def call(self, inputs, training=None):
        v = ops.cast(to_channel_integers(inputs, self.input_spec0), "int64")
        y = kops.saturate(kops.shift_round(v, self._shift), self._lo, self._hi)
        tok = ops.broadcast_to(ops.reshape(self.token_int(), (1, 1, -1)),
                               (ops.shape(inputs)[0], 1, self.channels))
        out = from_integers(ops.concatenate([tok, y], axis=1), self._f_out, self.compute_dtype)
        if not training:
            return out
        ftok = ops.broadcast_to(ops.reshape(ops.cast(self.token, inputs.dtype), (1, 1, -1)),
                                (ops.shape(inputs)[0], 1, self.channels))
        z = _clip_float(ops.concatenate([ftok, inputs], axis=1), self._lo, self._hi,
                        self._f_out, self.compute_dtype)
        return straight_through(z, out)

    def compute_output_shape(self, input_shape):
        return fl.ClassToken().compute_output_shape(input_shape)

    def engine_op(self):
        tok = ops.convert_to_numpy(self.token_int()).astype(np.int64)
        return self.engine_kind, {}, {"token": tok, "shift": _i64(self._shift),
                                      "out_lo": _i64(self._lo), "out_hi": _i64(self._hi)}


@_SERIALIZE
class QuantizedAddPositionEmbs(_TransformerLayer):
    """Add position embeddings quantized on the grid ``G_c = max(f_in_c, f_out_c)`` (eq. 33)."""

    engine_kind = "add_pos"

    def build(self, input_shape):
        n, dim = int(input_shape[1]), int(input_shape[2])
        self.channels = dim
        self.pos_embedding = self.add_weight(name="pos_embedding", shape=(n, dim),
                                             initializer="zeros")
        f_in = self.input_spec0.frac_array(dim)
        self._f_out = self.output_spec.frac_array(dim)
        self._grid = np.maximum(f_in, self._f_out)
        self._in_align = self._grid - f_in
        self._shift = self._grid - self._f_out
        self._lo, self._hi = output_bounds(self.output_spec, dim)
        super().build(input_shape)

    def pos_int(self):
        scale = np.ldexp(1.0, self._grid)
        return kops.round_half_up(ops.cast(self.pos_embedding, "float64") * scale)

    def call(self, inputs, training=None):
        v = ops.cast(to_channel_integers(inputs, self.input_spec0), "int64")
        acc = kops.shift_round(v, -self._in_align) + self.pos_int()[None]
        y = kops.saturate(kops.shift_round(acc, self._shift), self._lo, self._hi)
        out = from_integers(y, self._f_out, self.compute_dtype)
        if not training:
            return out
        z = inputs + ops.cast(self.pos_embedding, inputs.dtype)[None]
        return straight_through(_clip_float(z, self._lo, self._hi, self._f_out,
                                            self.compute_dtype), out)

    def engine_op(self):
        pos = ops.convert_to_numpy(self.pos_int()).astype(np.int64)
        return self.engine_kind, {}, {"pos": pos, "in_align": _i64(self._in_align),
                                      "shift": _i64(self._shift), "out_lo": _i64(self._lo),
                                      "out_hi": _i64(self._hi)}


@_SERIALIZE
class QuantizedExtractToken(_TransformerLayer):
    """Select one token; values and frac_bits unchanged (eq. 34)."""

    engine_kind = "extract_token"

    def __init__(self, token: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.token = int(token)

    def build(self, input_shape):
        fl.check_token(self.name, self.token, input_shape)
        self._index = self.token % int(input_shape[1])
        super().build(input_shape)

    def call(self, inputs, training=None):
        return ops.take(inputs, self._index, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])

    def engine_op(self):
        return self.engine_kind, {"token": int(self._index)}, {}

    def get_config(self):
        return {**super().get_config(), "token": self.token}
