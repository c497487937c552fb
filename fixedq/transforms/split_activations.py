"""Rewrite 2: split a fused ``activation=...`` off weighted layers into its own layer.

``Conv2D(activation="relu")`` (also ``Dense``, ``DepthwiseConv2D``, ``SeparableConv2D``,
``Conv2DTranspose`` and fixedq's ``DepthwiseConv2DTranspose``) becomes the same layer with
``activation=None`` followed by a new layer named ``<layer>_relu`` (``ReLU``, with
``max_value=6`` for relu6), ``<layer>_softmax`` (``Softmax``) or ``<layer>_activation`` (an
``Activation`` layer for anything else: quantized as an integer table when the function has
one, e.g. gelu, swish, sigmoid). Readers of the old layer now read the new one.

Example:
    >>> import keras
    >>> from fixedq.transforms.graph import read_graph
    >>> x = keras.Input((4,))
    >>> model = keras.Model(x, keras.layers.Dense(2, activation="relu", name="fc")(x))
    >>> graph = read_graph(model)
    >>> [str(c) for c in split_activations(graph)]
    ['[split_activations] fc, fc_relu: activation relu moved to ReLU layer fc_relu']
"""

from __future__ import annotations

import keras

from fixedq.transforms.canonicalize import layer_for_activation
from fixedq.transforms.graph import Graph, Ref, new_node
from fixedq.transforms.report import Change

__all__ = ["is_linear_activation", "split_activations", "weighted_layer_classes"]

NAME = "split_activations"


def weighted_layer_classes() -> tuple[type, ...]:
    """Layer classes whose fused activation is split (and into which BN can be folded): the
    float layers of every weighted op of the registry, plus ``SeparableConv2D`` (``quantize``
    splits it into two weighted ops).

    Example:
        >>> import keras
        >>> keras.layers.Conv1D in weighted_layer_classes()
        True
    """
    from fixedq.ops import all_ops  # the registry imports layers; keep transforms light

    classes = [cls for spec in all_ops() if spec.weighted for cls in spec.float_layers]
    classes.append(keras.layers.SeparableConv2D)
    return tuple(dict.fromkeys(classes))


def is_linear_activation(activation) -> bool:
    """True for ``None``/``"linear"`` (or its config); unknown activations count as non-linear."""
    if activation is None:
        return True
    try:
        return keras.activations.get(activation) is keras.activations.linear
    except (ValueError, TypeError):
        return False


def relu_like(activation) -> bool:
    """Whether ``activation`` is relu or relu6 (its split layer is named ``<layer>_relu``)."""
    try:
        fn = keras.activations.get(activation)
    except (ValueError, TypeError):
        return False
    return fn in (keras.activations.relu, keras.activations.relu6)


def split_activations(graph: Graph) -> list[Change]:
    """Split fused activations in ``graph`` (in place); one :class:`Change` per split layer."""
    classes = weighted_layer_classes()
    changes = []
    for node in graph:
        if node.cls not in classes or is_linear_activation(node.config.get("activation")):
            continue
        activation = node.config["activation"]
        dtype = node.config.get("dtype")
        short = "relu" if relu_like(activation) else "softmax"
        layer = layer_for_activation(activation, graph.unique_name(f"{node.name}_{short}"),
                                     dtype)
        if layer is None:
            layer = keras.layers.Activation(
                activation, name=graph.unique_name(f"{node.name}_activation"), dtype=dtype
            )
        kind = type(layer).__name__
        node.config = {**node.config, "activation": "linear"}
        graph.redirect(node.name, layer.name)
        graph.insert_after(
            node.name, new_node(layer, (Ref(node.name),), node.output_shapes, node.dtype)
        )
        label = activation if isinstance(activation, str) else type(activation).__name__
        changes.append(
            Change(
                NAME,
                (node.name, layer.name),
                f"activation {label} moved to {kind} layer {layer.name}",
            )
        )
    return changes
