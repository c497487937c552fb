"""Rewrite: 1-D layers without a quantized op of their own run as their 2-D versions over a
``(1, steps)`` image: ``DepthwiseConv1D``, ``SeparableConv1D``, ``MaxPooling1D`` and
``AveragePooling1D`` on ``(B, T, C)`` become ``Reshape((1, T, C))`` -> the 2-D layer with
kernel/pool ``(1, k)``, strides ``(1, s)``, dilation ``(1, d)`` -> ``Reshape((T', C))``.

The 2-D layer keeps the original name (q-config entries and calibration still refer to it) and
its weights are the 1-D ones with a unit height axis, so the rewritten graph computes the same
function; the quantized 2-D ops (depthwise and separable convs, max and average pooling) and
the reshapes then take it. ``padding="causal"``, ``channels_first`` and an unknown number of
steps are left alone (the layer then falls back to float with a warning naming it).

Example:
    >>> import keras
    >>> from fixedq.transforms.graph import read_graph
    >>> x = keras.Input((8, 3))
    >>> g = read_graph(keras.Model(x, keras.layers.MaxPooling1D(2, name="pool")(x)))
    >>> [str(c) for c in one_d_as_2d(g)]
    ['[one_d_as_2d] pool: MaxPooling1D as MaxPooling2D over a (1, steps) image']
    >>> [n.cls.__name__ for n in g.nodes]
    ['InputLayer', 'Reshape', 'MaxPooling2D', 'Reshape']
"""

from __future__ import annotations

import keras

from fixedq.transforms.graph import Graph, GraphNode, Ref, new_node
from fixedq.transforms.report import Change

__all__ = ["one_d_as_2d"]

NAME = "one_d_as_2d"
L = keras.layers

#: 1-D class -> (2-D class, config keys that take a (1, v) pair).
_AS_2D = {
    L.DepthwiseConv1D: (L.DepthwiseConv2D, ("kernel_size", "strides", "dilation_rate")),
    L.SeparableConv1D: (L.SeparableConv2D, ("kernel_size", "strides", "dilation_rate")),
    L.MaxPooling1D: (L.MaxPooling2D, ("pool_size", "strides")),
    L.AveragePooling1D: (L.AveragePooling2D, ("pool_size", "strides")),
}

#: Config keys the 2-D class does not take.
_DROP = ("groups",)


def _single(v) -> int:
    return int(v[0]) if isinstance(v, (list, tuple)) else int(v)


def _config_2d(node: GraphNode, keys: tuple[str, ...]) -> dict:
    cfg = {k: v for k, v in node.config.items() if k not in _DROP}
    for key in keys:
        if key in cfg and cfg[key] is not None:
            cfg[key] = (1, _single(cfg[key]))
    if cfg.get("strides") is None and "pool_size" in cfg:
        cfg["strides"] = cfg["pool_size"]
    cfg["data_format"] = "channels_last"
    return cfg


def _weights_2d(node: GraphNode) -> list:
    # every 1-D kernel (depthwise (k, C, m), pointwise (1, C*m, F)) gains a unit height axis
    return [(name, value[None] if name.endswith("kernel") else value)
            for name, value in node.weights]


def one_d_as_2d(graph: Graph) -> list[Change]:
    """Rewrite the 1-D layers of ``graph`` listed above (in place)."""
    changes = []
    for node in graph:
        target = _AS_2D.get(node.cls)
        if target is None or len(node.refs) != 1 or not node.plain_call:
            continue
        cls_2d, keys = target
        shape_in, shape_out = graph.input_shape(node), node.output_shapes[0]
        if (node.config.get("padding") == "causal"
                or node.config.get("data_format", "channels_last") != "channels_last"
                or shape_in is None or len(shape_in) != 3 or None in shape_in[1:]
                or None in shape_out[1:]):
            continue
        src = node.refs[0]
        to2d = L.Reshape((1, *shape_in[1:]), name=graph.unique_name(f"{node.name}_as_2d"))
        back = L.Reshape(tuple(shape_out[1:]), name=graph.unique_name(f"{node.name}_as_1d"))
        pre = new_node(to2d, (Ref(src.name, src.index),), [(shape_in[0], 1, *shape_in[1:])])
        graph.redirect(node.name, back.name)
        node.cls, node.config = cls_2d, _config_2d(node, keys)
        node.weights = _weights_2d(node)
        node.args, node.kwargs = (Ref(pre.name),), {}
        node.output_shapes = [(shape_out[0], 1, *shape_out[1:])]
        node.template = None
        graph.nodes.insert(graph.nodes.index(node), pre)
        graph.insert_after(node.name, new_node(back, (Ref(node.name),), [shape_out]))
        changes.append(Change(NAME, (node.name,),
                              f"{target[0].__name__.replace('2D', '1D')} as "
                              f"{cls_2d.__name__} over a (1, steps) image"))
    return changes
