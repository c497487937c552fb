"""Split each SeparableConv2D into DepthwiseConv2D + 1x1 Conv2D (the same float function).

The quantized model then requantizes the depthwise result on its own grid (at least 8 bits,
see ``quantize``) before the pointwise product, exactly like two consecutive layers.

Example:
    >>> import keras
    >>> from fixedq.transforms.graph import read_graph
    >>> x = keras.Input((8, 8, 3), name="x")
    >>> m = keras.Model(x, keras.layers.SeparableConv2D(4, 3, name="sep")(x))
    >>> g = read_graph(m); split_separable(g)
    ['sep']
    >>> [n.name for n in g.nodes]
    ['x', 'sep_dw', 'sep']
"""

from __future__ import annotations

import keras

from fixedq.transforms.graph import Graph, GraphNode, Ref

#: Suffix of the depthwise half of a split SeparableConv2D.
DW_SUFFIX = "_dw"


def split_separable(graph: Graph) -> list[str]:
    """Rewrite ``graph`` in place; returns the names of the split layers."""
    split = []
    for node in list(graph.nodes):
        if node.cls is not keras.layers.SeparableConv2D:
            continue
        cfg = node.config
        if cfg.get("activation") not in (None, "linear"):
            continue  # sanitize splits activations first; leave anything else alone
        dw_name = graph.unique_name(node.name + DW_SUFFIX)
        dw_layer = keras.layers.DepthwiseConv2D(
            kernel_size=cfg["kernel_size"], strides=cfg["strides"], padding=cfg["padding"],
            depth_multiplier=cfg["depth_multiplier"], dilation_rate=cfg["dilation_rate"],
            use_bias=False, name=dw_name)
        pw_layer = keras.layers.Conv2D(cfg["filters"], 1, use_bias=cfg["use_bias"],
                                       name=node.name)
        in_shape = graph.input_shape(node)
        dw_shape = dw_layer.compute_output_shape(in_shape)
        weights = dict(node.weights)
        dw_node = GraphNode(dw_name, type(dw_layer), dw_layer.get_config(),
                            [("kernel", weights["depthwise_kernel"])], node.args, node.kwargs,
                            [tuple(dw_shape)], node.dtype)
        pw_weights = [("kernel", weights["pointwise_kernel"])]
        if cfg["use_bias"]:
            pw_weights.append(("bias", weights["bias"]))
        pw_node = GraphNode(node.name, type(pw_layer), pw_layer.get_config(), pw_weights,
                            (Ref(dw_name),), {}, node.output_shapes, node.dtype)
        index = graph.nodes.index(node)
        graph.nodes[index:index + 1] = [dw_node, pw_node]
        split.append(node.name)
    return split
