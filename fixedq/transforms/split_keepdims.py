"""Rewrite: a global average pooling with ``keepdims=True`` becomes the pooling without it
followed by a ``Reshape`` that restores the unit axes (the squeeze-and-excitation pattern
``GlobalAveragePooling2D(keepdims=True) -> Conv 1x1`` of MobileNetV3 and EfficientNet).

The two compute the same values; the pooling keeps its name (its calibration point), the new
``Reshape`` is called ``<pool>_keepdims``.

Example:
    >>> import keras
    >>> from fixedq.transforms.graph import read_graph
    >>> x = keras.Input((4, 4, 3))
    >>> y = keras.layers.GlobalAveragePooling2D(keepdims=True, name="gap")(x)
    >>> graph = read_graph(keras.Model(x, y))
    >>> [str(c) for c in split_keepdims(graph)]
    ['[split_keepdims] gap, gap_keepdims: keepdims=True as a Reshape to (1, 1, 3)']
"""

from __future__ import annotations

import keras

from fixedq.transforms.graph import Graph, Ref, new_node
from fixedq.transforms.report import Change

__all__ = ["split_keepdims"]

NAME = "split_keepdims"
_POOLS = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalAveragePooling1D,
          keras.layers.GlobalMaxPooling2D, keras.layers.GlobalMaxPooling1D)


def split_keepdims(graph: Graph) -> list[Change]:
    """Split ``keepdims=True`` off the global poolings of ``graph`` (in place)."""
    changes = []
    for node in graph:
        if node.cls not in _POOLS or not node.config.get("keepdims"):
            continue
        if node.config.get("data_format", "channels_last") != "channels_last":
            continue
        shape = node.output_shapes[0]
        target = tuple(int(d) for d in shape[1:]) if None not in shape[1:] else None
        if target is None:
            continue
        layer = keras.layers.Reshape(target, name=graph.unique_name(f"{node.name}_keepdims"),
                                     dtype=node.config.get("dtype"))
        node.config = {**node.config, "keepdims": False}
        node.output_shapes = [(shape[0], shape[-1])]
        graph.redirect(node.name, layer.name)
        graph.insert_after(node.name, new_node(layer, (Ref(node.name),), [shape]))
        changes.append(Change(NAME, (node.name, layer.name),
                              f"keepdims=True as a Reshape to {target}"))
    return changes
