"""Rewrite: ``Subtract()([a, b])`` becomes ``Add()([a, Rescaling(-1)(b)])``: the same values
(negation is exact in float), and both layers are quantized ops (the negation is a per-channel
integer affine, then the aligned exact sum). The ``Add`` keeps the subtraction's name; the
negation is called ``<name>_negate``.

Example:
    >>> import keras
    >>> from fixedq.transforms.graph import read_graph
    >>> a, b = keras.Input((4,)), keras.Input((4,))
    >>> g = read_graph(keras.Model([a, b], keras.layers.Subtract(name="diff")([a, b])))
    >>> [str(c) for c in subtract_as_add(g)]
    ['[subtract_as_add] diff, diff_negate: a - b as a + (-1 * b)']
"""

from __future__ import annotations

import keras

from fixedq.transforms.graph import Graph, Ref, new_node
from fixedq.transforms.report import Change

__all__ = ["subtract_as_add"]

NAME = "subtract_as_add"


def subtract_as_add(graph: Graph) -> list[Change]:
    """Rewrite every two-input ``Subtract`` of ``graph`` (in place)."""
    changes = []
    for node in graph:
        if node.cls is not keras.layers.Subtract or len(node.refs) != 2 or not node.plain_call:
            continue
        a, b = node.refs
        shape_b = graph.node(b.name).output_shapes[b.index]
        negate = keras.layers.Rescaling(-1.0, name=graph.unique_name(f"{node.name}_negate"),
                                        dtype=node.config.get("dtype"))
        graph.nodes.insert(graph.nodes.index(node),
                           new_node(negate, (Ref(b.name, b.index),), [shape_b]))
        config = {k: v for k, v in node.config.items() if k in ("name", "trainable", "dtype")}
        node.cls, node.config = keras.layers.Add, keras.layers.Add(**config).get_config()
        node.args, node.kwargs, node.template = ([Ref(a.name, a.index), Ref(negate.name)],), {}, \
            None
        changes.append(Change(NAME, (node.name, negate.name), "a - b as a + (-1 * b)"))
    return changes
