"""Small ViTs made of fixedq's transformer layers, and an adapter for standard Keras ViTs.

:func:`build_vit` makes a ViT that ``fixedq.quantize`` turns into an integer-only model:
patches by a strided ``Conv2D`` -> ``ClassToken`` -> ``AddPositionEmbs`` -> encoder blocks
(``LayerMadNormalization``, ``Dense`` q/k/v, ``Attention``, ``Dense`` projection, residual
``Add``; MLP ``Dense``-``ReLU``-``Dense``, residual ``Add``) -> ``LayerMadNormalization`` ->
``ExtractToken`` -> ``Dense`` classifier. :func:`adapt_vit` rewrites a standard Keras ViT
(``MultiHeadAttention``, ``LayerNormalization``, ``Softmax``) into these layers, copying weights,
so that a short fine-tune recovers the accuracy.

Example:
    >>> model = build_vit((28, 28, 1), patch=7, dim=32, heads=2, blocks=2)  # doctest: +SKIP
"""

from __future__ import annotations

import math

import keras
import numpy as np

from fixedq.layers.transformers import (
    AddPositionEmbs,
    Attention,
    ClassToken,
    ExtractToken,
    LayerMadNormalization,
    Shiftmax,
)

L = keras.layers

#: gamma factor mapping a LayerNormalization onto LayerMadNormalization for Gaussian data.
MAD_PER_STD = math.sqrt(2.0 / math.pi)


def _check_int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"build_vit: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


def build_vit(input_shape=(28, 28, 1), patch: int = 7, dim: int = 32, heads: int = 2,
              blocks: int = 2, mlp_dim: int = 64, num_classes: int = 10,
              softmax: str = "shiftmax", standard: bool = False, rescale: float | None = 1 / 255,
              name: str = "vit") -> keras.Model:
    """A small ViT classifier (logits).

    Args:
        input_shape: image shape ``(H, W, C)``; ``H`` and ``W`` multiples of ``patch``.
        patch, dim, heads, blocks, mlp_dim, num_classes: the usual ViT sizes.
        softmax: ``"shiftmax"`` or ``"softmax"`` in fixedq's ``Attention``.
        standard: build the same network with Keras ``MultiHeadAttention`` and
            ``LayerNormalization`` instead (what :func:`adapt_vit` converts).
        rescale: a ``Rescaling`` factor applied first (``None``: none).

    Raises:
        ValueError: sizes that do not fit (``heads`` not dividing ``dim``, image not a multiple
            of ``patch``), naming the value.
    """
    patch, dim, heads = _check_int("patch", patch), _check_int("dim", dim), _check_int(
        "heads", heads)
    blocks, mlp_dim = _check_int("blocks", blocks, 0), _check_int("mlp_dim", mlp_dim)
    if dim % heads:
        raise ValueError(f"build_vit: heads={heads} does not divide dim={dim}")
    h, w = int(input_shape[0]), int(input_shape[1])
    if h % patch or w % patch:
        raise ValueError(f"build_vit: image size {h}x{w} is not a multiple of patch={patch}")
    tokens = (h // patch) * (w // patch)
    x = keras.Input(tuple(input_shape), name="image")
    t = L.Rescaling(rescale, name="rescale")(x) if rescale is not None else x
    t = L.Conv2D(dim, patch, strides=patch, name="patches")(t)
    t = L.Reshape((tokens, dim), name="tokens")(t)
    t = ClassToken(name="cls")(t)
    t = AddPositionEmbs(name="pos")(t)

    def norm(nm):
        return L.LayerNormalization(epsilon=1e-3, name=nm) if standard \
            else LayerMadNormalization(name=nm)

    for i in range(blocks):
        y = norm(f"b{i}_ln1")(t)
        if standard:
            y = L.MultiHeadAttention(heads, dim // heads, name=f"b{i}_mha")(y, y)
        else:
            q = L.Dense(dim, name=f"b{i}_q")(y)
            k = L.Dense(dim, name=f"b{i}_k")(y)
            v = L.Dense(dim, name=f"b{i}_v")(y)
            y = Attention(heads, softmax=softmax, name=f"b{i}_att")([q, k, v])
            y = L.Dense(dim, name=f"b{i}_proj")(y)
        t = L.Add(name=f"b{i}_add1")([t, y])
        y = norm(f"b{i}_ln2")(t)
        y = L.Dense(mlp_dim, name=f"b{i}_mlp1")(y)
        y = L.ReLU(name=f"b{i}_relu")(y)
        y = L.Dense(dim, name=f"b{i}_mlp2")(y)
        t = L.Add(name=f"b{i}_add2")([t, y])
    t = norm("ln_final")(t)
    t = ExtractToken(0, name="cls_out")(t)
    return keras.Model(x, L.Dense(num_classes, name="logits")(t), name=name)


def _mha_config(layer) -> dict:
    cfg = layer.get_config()
    heads, key_dim = int(cfg["num_heads"]), int(cfg["key_dim"])
    value_dim = cfg.get("value_dim") or key_dim
    if int(value_dim) != key_dim:
        raise ValueError(f"adapt_vit: MultiHeadAttention {layer.name!r} has value_dim="
                         f"{value_dim} != key_dim={key_dim}; fixedq's Attention needs them equal")
    if cfg.get("output_shape") not in (None, [], ()):
        raise ValueError(f"adapt_vit: MultiHeadAttention {layer.name!r} output_shape="
                         f"{cfg['output_shape']!r} is not supported (leave it None)")
    axes = cfg.get("attention_axes")
    if axes not in (None, [1], (1,), 1):
        raise ValueError(f"adapt_vit: MultiHeadAttention {layer.name!r} attention_axes="
                         f"{axes!r} is not supported (only the sequence axis)")
    return {"heads": heads, "key_dim": key_dim, "use_bias": bool(cfg.get("use_bias", True))}


def adapt_vit(model: keras.Model, softmax: str = "shiftmax", norm: str = "mad") -> keras.Model:
    """Rewrite a standard Keras ViT into fixedq's quantizable transformer layers.

    * ``MultiHeadAttention(q, v[, k])`` -> ``Dense`` q/k/v (``<name>_q``/``_k``/``_v``),
      ``Attention(num_heads, softmax)`` (``<name>``) and ``Dense`` output (``<name>_out``),
      with the kernels reshaped from ``(D, H, d)`` to ``(D, H*d)`` (same head layout);
    * ``LayerNormalization`` (last axis) -> ``LayerMadNormalization`` with
      ``gamma * sqrt(2/pi)`` (exact for Gaussian activations) when ``norm="mad"``;
    * ``Softmax`` (last axis) -> ``Shiftmax`` when ``softmax="shiftmax"``.

    Every other layer is cloned with its weights. The result computes (almost) the same
    function; a short fine-tune (1-3 epochs) recovers the accuracy before ``quantize``.
    With ``softmax="softmax", norm="keep"`` the output equals the original up to float rounding.

    Raises:
        ValueError: a non-functional model, masks or unsupported MultiHeadAttention settings,
            or a bad ``softmax``/``norm`` value (named in the message).

    Example:
        >>> adapted = adapt_vit(build_vit(standard=True))  # doctest: +SKIP
    """
    if softmax not in ("shiftmax", "softmax"):
        raise ValueError(f"adapt_vit: softmax must be 'shiftmax' or 'softmax', got {softmax!r}")
    if norm not in ("mad", "keep"):
        raise ValueError(f"adapt_vit: norm must be 'mad' or 'keep', got {norm!r}")
    if not isinstance(model, keras.Model) or not hasattr(model, "_nodes_by_depth"):
        raise ValueError(f"adapt_vit expects a functional keras.Model, got {type(model)!r}")
    copies: list[tuple] = []  # (new layer, weights to set after the model is built)

    def clone(layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer  # an operation node (x + pos, x * y): called again as it is
        cfg = layer.get_config()
        if isinstance(layer, L.LayerNormalization) and norm == "mad":
            axis = cfg.get("axis", -1)
            if axis not in (-1, [-1]) and not (isinstance(axis, list) and len(axis) == 1):
                raise ValueError(f"adapt_vit: LayerNormalization {layer.name!r} over axis "
                                 f"{axis!r} is not supported (last axis only)")
            new = LayerMadNormalization(epsilon=cfg.get("epsilon", 1e-3), name=layer.name)
            c = int(layer.input.shape[-1])
            gamma = layer.gamma.numpy() if layer.scale else np.ones(c)
            beta = layer.beta.numpy() if layer.center else np.zeros(c)
            copies.append((new, [gamma * MAD_PER_STD, beta]))
            return new
        if isinstance(layer, L.Softmax) and softmax == "shiftmax":
            if cfg.get("axis", -1) not in (-1, [-1]):
                raise ValueError(f"adapt_vit: Softmax {layer.name!r} axis {cfg['axis']!r} is "
                                 "not supported")
            return Shiftmax(name=layer.name)
        if isinstance(layer, L.MultiHeadAttention):
            return layer  # replaced in call()
        new = layer.__class__.from_config(cfg)
        if layer.weights:
            copies.append((new, layer.get_weights()))
        return new

    def call(layer, *args, **kwargs):
        if not isinstance(layer, L.MultiHeadAttention):
            return layer(*args, **kwargs)
        return _attention_block(layer, args, kwargs, softmax, copies)

    adapted = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for layer, weights in copies:
        layer.set_weights(weights)
    return adapted


def _attention_block(mha, args, kwargs, softmax, copies):
    cfg = _mha_config(mha)
    names = ("query", "value", "key")
    values = dict(zip(names, args, strict=False))
    for key in names:
        if key in kwargs:
            values[key] = kwargs.pop(key)
    extra = {k: v for k, v in kwargs.items() if v is not None and v is not False}
    extra.pop("training", None)
    if extra:
        raise ValueError(f"adapt_vit: MultiHeadAttention {mha.name!r} is called with "
                         f"{sorted(extra)}; masks and attention scores are not supported")
    query, value = values["query"], values["value"]
    key = values.get("key", value)
    width = cfg["heads"] * cfg["key_dim"]
    out_dim = int(query.shape[-1])
    dense = {}
    for part, src, tensor in (("q", "query", query), ("k", "key", key), ("v", "value", value)):
        sub = getattr(mha, f"_{src}_dense")
        layer = L.Dense(width, use_bias=cfg["use_bias"], name=f"{mha.name}_{part}")
        dense[part] = layer(tensor)
        weights = [sub.kernel.numpy().reshape(-1, width)]
        if cfg["use_bias"]:
            weights.append(sub.bias.numpy().reshape(width))
        copies.append((layer, weights))
    att = Attention(cfg["heads"], softmax=softmax, name=mha.name)(
        [dense["q"], dense["k"], dense["v"]])
    sub = mha._output_dense
    out = L.Dense(out_dim, use_bias=cfg["use_bias"], name=f"{mha.name}_out")
    weights = [sub.kernel.numpy().reshape(width, out_dim)]
    if cfg["use_bias"]:
        weights.append(sub.bias.numpy().reshape(out_dim))
    copies.append((out, weights))
    return out(att)
