"""Keras ``LayerNormalization`` (last axis) -> QuantizedLayerNormalization -> engine
``layernorm`` op: exact integer mean and variance, an integer reciprocal square root (a
mantissa of ``W`` and Newton steps), one rounded division, the per-channel gamma/beta affine
(docs/numerics.md eq. 47).

Only the last axis is supported (what transformers use); another ``axis``, several axes or the
deprecated ``rms_scaling=True`` fall back to float with a warning naming the setting.

Example:
    >>> from fixedq.ops.registry import by_name
    >>> by_name("layer_normalization").engine_kinds
    ('layernorm',)
"""

from __future__ import annotations

import keras
import numpy as np

from fixedq.engine.ops import Op
from fixedq.layers.layer_normalization import (
    W_LIMIT,
    QuantizedLayerNormalization,
    layer_norm_bound,
)
from fixedq.ops.common import i64, out_attrs
from fixedq.ops.registry import MAXPOOL_RELU, RELU, OpSpec, register
from fixedq.tensors.rounding import round_half_up


def _accepts(node) -> str | None:
    cfg = node.config
    if cfg.get("rms_scaling"):
        return "rms_scaling=True (deprecated by Keras; use the default mean/variance form)"
    axis = cfg.get("axis", -1)
    axes = list(axis) if isinstance(axis, list | tuple) else [axis]
    rank = len(node.output_shapes[0]) if node.output_shapes else None
    if len(axes) != 1 or (axes[0] != -1 and (rank is None or axes[0] != rank - 1)):
        return f"axis {axis!r} (only the last axis, axis=-1)"
    return None


def _build(node, in_specs, ctx):
    dim = node.output_shapes[0][-1]
    if dim is None:
        raise ValueError("LayerNormalization needs a known channel count")
    eps = float(node.config.get("epsilon", 1e-3))
    spec_in = in_specs[0]
    eps_int = int(round_half_up(np.float64(eps) * float(dim) ** 4 * 2.0 ** (2 * spec_in.max_frac)))
    bound = layer_norm_bound(dim, spec_in.aligned_max_abs(), eps_int)
    if bound >= W_LIMIT:
        raise ValueError(f"LayerNormalization of {dim} channels on inputs up to "
                         f"{spec_in.aligned_max_abs()} (aligned integers) could overflow int64 "
                         f"(D^4 max|v|^2 + eps_q = {bound} >= 2^62); use fewer activation bits "
                         "or per-tensor activations")
    spec, bits = ctx.output_spec(node, signed=True)
    layer = QuantizedLayerNormalization(
        eps, scale_bits=ctx.qparams.scale_bits, input_specs=[spec_in], output_spec=spec,
        name=node.name, qconfig=ctx.entry(node.name, activation_bits=bits))
    return layer, spec, [None]


def _set_weights(layer, node) -> None:
    dim = layer.channels
    gamma, beta = node.weight("gamma"), node.weight("beta")
    layer.set_weights([np.ones(dim, "float32") if gamma is None else gamma,
                       np.zeros(dim, "float32") if beta is None else beta])


def _to_engine(layer, node, ins, specs, channels) -> Op:
    p = layer.integer_params()
    return Op(node.name, "layernorm", ins,
              {**out_attrs(layer, channels), "eps_int": int(p["eps_int"]),
               "norm_frac": int(p["norm_frac"])},
              {k: i64(p[k]) for k in ("in_align", "multiplier", "shift", "offset", "out_lo",
                                      "out_hi")})


def _example(rng):
    """Token rows with a constant row (variance 0: epsilon alone), huge and tiny ranges; gamma
    with negative and zero entries, beta, ``center=False`` and ``scale=False`` variants."""
    L = keras.layers
    x = keras.Input((5, 8))
    a = L.LayerNormalization(epsilon=1e-6, name="ln")(L.Dense(8, name="fc")(x))
    b = L.LayerNormalization(center=False, name="ln_nocenter")(x)
    c = L.LayerNormalization(scale=False, epsilon=1e-5, name="ln_noscale")(x)
    model = keras.Model(x, L.Dense(3, name="head")(L.Concatenate()([a, b, c])))
    ln = model.get_layer("ln")
    ln.set_weights([np.array([1.5, -0.7, 0.0, 2.0, 0.3, -1.2, 1.0, 0.05], "float32"),
                    rng.normal(size=8).astype("float32")])
    samples = rng.normal(size=(64, 5, 8)).astype("float32") * rng.choice(
        [1e-3, 1.0, 40.0], size=(64, 5, 1)).astype("float32")
    samples[:4] = 3.0  # constant rows: variance 0
    return model, samples


SPEC = register(OpSpec(
    name="layer_normalization", kind="layernorm",
    float_layers=(keras.layers.LayerNormalization,),
    quantized_layers=(QuantizedLayerNormalization,), engine_kinds=("layernorm",),
    accepts=_accepts, requantizes=True, fuses=(RELU, MAXPOOL_RELU), build=_build,
    set_weights=_set_weights, to_engine=_to_engine,
    description="layer normalization over the last axis: exact mean/variance, integer "
                "reciprocal square root (mantissa + Newton steps), affine",
    example=_example))
