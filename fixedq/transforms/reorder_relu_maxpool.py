"""Rewrite 5: swap ``ReLU → MaxPooling2D`` into ``MaxPooling2D → ReLU``.

A ReLU (also with ``max_value``, a threshold >= 0 or a slope >= 0; also as the
``Activation(ReLUFunction)`` rewrite 1 makes of a thresholded one) is a non-decreasing
function applied element-wise, and max pooling takes maxima of windows (padding never wins a
maximum in TensorFlow's ``"same"`` pooling), so ``maxpool(relu(x)) == relu(maxpool(x))``
exactly. Pooling first lets the ReLU run on fewer values and leaves the pool on the signed
values of the layer before (which quantization then sees as a plain conv → pool → ReLU chain).

Only done when the ReLU's single reader is the pool. Both layers keep their names; readers of
the pool (and model outputs) now read the ReLU.

Example:
    >>> import keras
    >>> from fixedq.transforms.graph import read_graph
    >>> x = keras.Input((4, 4, 2))
    >>> y = keras.layers.MaxPooling2D(name="pool")(keras.layers.ReLU(name="relu")(x))
    >>> graph = read_graph(keras.Model(x, y))
    >>> [str(c) for c in reorder_relu_maxpool(graph)]
    ['[reorder_relu_maxpool] relu, pool: relu moved after pool']
"""

from __future__ import annotations

import keras

from fixedq.layers.table_functions import for_activation
from fixedq.transforms.graph import Graph, Ref
from fixedq.transforms.report import Change

__all__ = ["reorder_relu_maxpool"]

NAME = "reorder_relu_maxpool"


def _relu_params(node) -> dict | None:
    """The ReLU parameters of a ``ReLU`` layer, or of the ``Activation(ReLUFunction)`` that
    canonicalization (rewrite 1) makes of one; ``None`` for any other node."""
    if node.cls is keras.layers.ReLU:
        return node.config
    if node.cls is keras.layers.Activation:
        fn = for_activation(node.config.get("activation"))
        if fn is not None and fn[0] == "relu":
            return fn[1]
    return None


def _monotonic_relu(node) -> bool:
    params = _relu_params(node)
    if params is None or not node.plain_call or len(node.refs) != 1:
        return False
    # x >= threshold ? x : slope * (x - threshold) is non-decreasing iff slope >= 0 and the
    # value jumps up (not down) at the threshold, i.e. threshold >= 0.
    slope = params.get("negative_slope") or 0.0
    threshold = params.get("threshold") or 0.0
    return float(slope) >= 0.0 and float(threshold) >= 0.0


def reorder_relu_maxpool(graph: Graph) -> list[Change]:
    """Swap each ``ReLU → MaxPooling2D`` pair of ``graph`` (in place), one pass."""
    changes = []
    for relu in graph:
        if not _monotonic_relu(relu):
            continue
        pool = graph.sole_consumer(relu.name)
        if pool is None or pool.cls is not keras.layers.MaxPooling2D or not pool.plain_call:
            continue
        source = relu.refs[0]
        graph.redirect(pool.name, relu.name)
        pool.args = (Ref(source.name, source.index),)
        relu.args = (Ref(pool.name),)
        relu.output_shapes = list(pool.output_shapes)
        graph.remove(relu.name)
        graph.insert_after(pool.name, relu)
        changes.append(Change(NAME, (relu.name, pool.name), f"{relu.name} moved after {pool.name}"))
    return changes
