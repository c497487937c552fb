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
