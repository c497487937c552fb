"""Rewrite 1: replace ``Activation``/``Lambda`` layers by the equivalent standard layer.

- ``Activation("relu")`` → ``ReLU()``; ``Activation("relu6")`` → ``ReLU(max_value=6)``;
  ``Activation("softmax")`` → ``Softmax()`` (over the last axis); ``Activation("linear")`` and
  ``Activation(None)`` (keras.applications' ``classifier_activation=None``) → ``Identity()``,
  which passes the integers through unchanged.
- ``ReLU(negative_slope=a)`` (no threshold, no max_value) → ``LeakyReLU(a)``: the same function,
  quantized as an integer table. A ``ReLU`` with a threshold, or with a negative slope and a
  ``max_value`` (not a clip, not a LeakyReLU) → ``Activation(ReLUFunction(...))``
  (:class:`fixedq.layers.table_functions.ReLUFunction`: ``keras.activations.relu`` with the
  same arguments), quantized as the integer table of that function.
- ``Lambda`` layers are identified by probing (:mod:`fixedq.transforms.lambda_probe`) and become
  ``ReLU``, ``ReLU(max_value=6)``, ``Permute``, ``Reshape`` or ``Add`` only when the probe
  matches exactly; anything else is left in place (quantization will stop before it).

The replacement keeps the layer's name, so the rest of the graph is untouched.

Example:
    >>> import keras
    >>> from fixedq.transforms.graph import read_graph
    >>> x = keras.Input((4,))
    >>> model = keras.Model(x, keras.layers.Activation("relu6", name="act")(x))
    >>> graph = read_graph(model)
    >>> [str(c) for c in canonicalize_layers(graph)]
    ['[canonicalize_layers] act: Activation(relu6) -> ReLU(max_value=6.0)']
"""

from __future__ import annotations

import keras

from fixedq.layers.table_functions import ReLUFunction
from fixedq.transforms.graph import Graph, GraphNode, Ref, new_node
from fixedq.transforms.lambda_probe import identify_lambda
from fixedq.transforms.report import Change

__all__ = ["canonicalize_layers", "layer_for_activation", "relu_for_activation"]

NAME = "canonicalize_layers"


def relu_for_activation(activation, name: str, dtype=None) -> keras.layers.ReLU | None:
    """A ``ReLU`` layer equal to the activation ``activation`` (name or config), else ``None``."""
    try:
        fn = keras.activations.get(activation)
    except (ValueError, TypeError):
        return None
    if fn is keras.activations.relu:
        return keras.layers.ReLU(name=name, dtype=dtype)
    if fn is keras.activations.relu6:
        return keras.layers.ReLU(max_value=6.0, name=name, dtype=dtype)
    return None


def layer_for_activation(activation, name: str, dtype=None) -> keras.layers.Layer | None:
    """The standard layer equal to the activation ``activation``: ``ReLU`` (relu, relu6),
    ``Softmax`` (softmax over the last axis) or ``Identity`` (linear, ``None``); ``None`` for
    any other.

    Example:
        >>> type(layer_for_activation("softmax", "s")).__name__
        'Softmax'
        >>> type(layer_for_activation(None, "p")).__name__
        'Identity'
    """
    relu = relu_for_activation(activation, name, dtype)
    if relu is not None:
        return relu
    try:
        fn = keras.activations.get(activation)
    except (ValueError, TypeError):
        return None
    if fn is keras.activations.softmax:
        return keras.layers.Softmax(axis=-1, name=name, dtype=dtype)
    if fn is keras.activations.linear:
        return keras.layers.Identity(name=name, dtype=dtype)
    return None


def _leaky_for_relu(node: GraphNode) -> keras.layers.Layer | None:
    """``LeakyReLU(a)`` for a ``ReLU(negative_slope=a)`` without threshold and max_value."""
    cfg = node.config
    slope = cfg.get("negative_slope") or 0.0
    if not slope or cfg.get("threshold") or cfg.get("max_value") is not None:
        return None
    return keras.layers.LeakyReLU(negative_slope=float(slope), name=node.name,
                                  dtype=cfg.get("dtype"))


def _table_for_relu(node: GraphNode) -> keras.layers.Layer | None:
    """``Activation(ReLUFunction(...))`` for a ``ReLU`` that is neither a clip nor a LeakyReLU:
    a non-zero threshold, or a negative slope together with a ``max_value``."""
    cfg = node.config
    slope = float(cfg.get("negative_slope") or 0.0)
    threshold = float(cfg.get("threshold") or 0.0)
    max_value = cfg.get("max_value")
    if not threshold and not (slope and max_value is not None):
        return None
    fn = ReLUFunction(slope, None if max_value is None else float(max_value), threshold)
    return keras.layers.Activation(fn, name=node.name, dtype=cfg.get("dtype"))


def _describe(layer: keras.layers.Layer) -> str:
    if isinstance(layer, keras.layers.ReLU):
        return "ReLU(max_value=6.0)" if layer.max_value is not None else "ReLU()"
    if isinstance(layer, keras.layers.LeakyReLU):
        return f"LeakyReLU({layer.negative_slope})"
    if isinstance(layer, keras.layers.Activation) and isinstance(layer.activation, ReLUFunction):
        return f"Activation(ReLUFunction({layer.activation.params()}))"
    if isinstance(layer, keras.layers.Permute):
        return f"Permute({tuple(layer.dims)})"
    if isinstance(layer, keras.layers.Reshape):
        return f"Reshape({tuple(layer.target_shape)})"
    return f"{type(layer).__name__}()"


def _lambda_replacement(graph: Graph, node: GraphNode) -> keras.layers.Layer | None:
    if node.template is None or not node.plain_call:
        return None
    if len(node.args) != 1 or len(node.output_shapes) != 1:
        return None
    arg = node.args[0]
    if isinstance(arg, Ref):
        refs, as_list = [arg], False
    elif isinstance(arg, list | tuple) and len(arg) >= 2 and all(isinstance(r, Ref) for r in arg):
        refs, as_list = list(arg), True
    else:
        return None
    if any(graph.node(r.name).dtype != "float32" for r in refs) or node.dtype != "float32":
        return None
    shapes = [graph.node(r.name).output_shapes[r.index] for r in refs]
    return identify_lambda(
        node.template,
        shapes,
        name=node.name,
        as_list=as_list,
        output_shape=node.output_shapes[0],
        dtype=node.config.get("dtype"),
    )


def canonicalize_layers(graph: Graph) -> list[Change]:
    """Replace recognizable ``Activation``/``Lambda`` layers in ``graph`` (in place).

    Returns:
        one :class:`Change` per replaced layer.
    """
    changes = []
    for index, node in enumerate(list(graph.nodes)):
        if node.cls is keras.layers.Activation:
            activation = node.config.get("activation")
            new = layer_for_activation(activation, node.name, node.config.get("dtype"))
            before = f"Activation({activation})"
        elif node.cls is keras.layers.ReLU:
            new = _leaky_for_relu(node) or _table_for_relu(node)
            before = (f"ReLU(negative_slope={node.config.get('negative_slope')}, "
                      f"max_value={node.config.get('max_value')}, "
                      f"threshold={node.config.get('threshold')})")
        elif node.cls is keras.layers.Lambda:
            new = _lambda_replacement(graph, node)
            before = "Lambda"
        else:
            continue
        if new is None:
            continue
        args = node.args
        if isinstance(new, keras.layers.Add):
            args = (list(node.args[0]),)
        replacement = new_node(new, args, node.output_shapes, node.dtype)
        graph.nodes[index] = replacement
        changes.append(Change(NAME, (node.name,), f"{before} -> {_describe(new)}"))
    return changes
