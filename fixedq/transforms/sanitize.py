"""``sanitize(model)``: an ordered pipeline of small, function-preserving graph rewrites.

The order matters and is fixed:

1. :func:`~fixedq.transforms.canonicalize.canonicalize_layers` - ``Activation``/``Lambda``
   layers become ``ReLU``/``Permute``/``Reshape``/``Add``, so the later rewrites only need to
   recognise standard layers (e.g. an ``Activation("relu")`` before a pool is reordered by 5).
   Then :func:`~fixedq.transforms.one_d_as_2d.one_d_as_2d` - ``DepthwiseConv1D``,
   ``SeparableConv1D``, ``MaxPooling1D``, ``AveragePooling1D`` as their 2-D layers over a
   ``(1, steps)`` image between two ``Reshape`` layers.
   Then :func:`~fixedq.transforms.subtract_as_add.subtract_as_add` - ``a - b`` as
   ``a + Rescaling(-1)(b)``, and :func:`~fixedq.transforms.split_attention.split_attention` -
   ``MultiHeadAttention`` as ``Dense`` q/k/v + ``Attention(softmax="softmax")`` + ``Dense``.
2. :func:`~fixedq.transforms.split_activations.split_activations` - fused activations become
   their own layer, so every weighted layer is linear (the precondition of 4) and its ReLU is
   visible to 5.
   Then :func:`~fixedq.transforms.split_keepdims.split_keepdims` - a global pooling with
   ``keepdims=True`` becomes the pooling + a ``Reshape`` (both quantized ops).
3. :func:`~fixedq.transforms.fold_padding.fold_padding` - ``ZeroPadding2D`` + valid conv become a
   ``"same"`` conv (independent of 4, done first so 4 sees the final conv).
4. :func:`~fixedq.transforms.fold_batchnorm.fold_batchnorm` - BN folded into the layer before.
5. :func:`~fixedq.transforms.reorder_relu_maxpool.reorder_relu_maxpool` - ``ReLU → MaxPool`` is
   swapped last, after BN folding, because it only moves ReLUs further down.

Each rewrite runs until it finds nothing more to do, and no rewrite creates work for an earlier
one, so ``sanitize`` is idempotent: sanitizing its output reports no change. ``Dropout`` layers
are kept (they are the identity at inference).

Example:
    >>> import keras
    >>> x = keras.Input((8, 8, 3), name="image")
    >>> y = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    >>> model = keras.Model(x, keras.layers.BatchNormalization(name="bn")(y))
    >>> new_model, report = sanitize(model)
    >>> [layer.name for layer in new_model.layers]
    ['image', 'conv', 'conv_relu', 'bn']
    >>> print(report)
    sanitize: 1 change
      [split_activations] conv, conv_relu: activation relu moved to ReLU layer conv_relu
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from fixedq.transforms.canonicalize import canonicalize_layers
from fixedq.transforms.fold_batchnorm import fold_batchnorm
from fixedq.transforms.fold_padding import fold_padding
from fixedq.transforms.graph import Graph, build_model, read_graph
from fixedq.transforms.one_d_as_2d import one_d_as_2d
from fixedq.transforms.reorder_relu_maxpool import reorder_relu_maxpool
from fixedq.transforms.report import Change, SanitizeReport
from fixedq.transforms.split_activations import split_activations
from fixedq.transforms.split_attention import split_attention
from fixedq.transforms.split_keepdims import split_keepdims
from fixedq.transforms.subtract_as_add import subtract_as_add

__all__ = ["REWRITES", "sanitize"]

Rewrite = Callable[[Graph], list[Change]]

REWRITES: tuple[Rewrite, ...] = (
    canonicalize_layers,
    one_d_as_2d,
    subtract_as_add,
    split_attention,
    split_activations,
    split_keepdims,
    fold_padding,
    fold_batchnorm,
    reorder_relu_maxpool,
)


def _run_to_fixpoint(rewrite: Rewrite, graph: Graph) -> list[Change]:
    changes: list[Change] = []
    for _ in range(len(graph.nodes) + 1):  # each pass removes or moves at least one pattern
        found = rewrite(graph)
        if not found:
            break
        changes.extend(found)
    return changes


def sanitize(model: keras.Model) -> tuple[keras.Model, SanitizeReport]:
    """Return a rewritten copy of ``model`` computing the same function, and what changed.

    ``model`` (functional or built Sequential Keras 3 model) is never modified: the result is a
    new functional model of fresh layers with copied (or folded) weights, the same inputs
    (names, shapes, dtypes) and the same layer names wherever a layer survives.

    Raises:
        TypeError: ``model`` is not a functional/Sequential Keras 3 model (e.g. subclassed).
        ValueError: the model calls a layer more than once (shared layers) or is not built.
    """
    graph = read_graph(model)
    changes: list[Change] = []
    for rewrite in REWRITES:
        changes.extend(_run_to_fixpoint(rewrite, graph))
    return build_model(graph), SanitizeReport(changes)
