"""``insert_rescaling(model, scale, offset)``: a new model that starts with a Rescaling layer.

Moves a preprocessing step (e.g. ``[0, 255]`` images to ``[-1, 1]``) into the model, where
quantization can fold it into the input quantizer and first layer. The input keeps its name,
shape and dtype; every other layer keeps its name and weights. The given model is not changed.

Example:
    >>> import keras, numpy as np
    >>> from fixedq.transforms.insert_rescaling import insert_rescaling
    >>> x = keras.Input((3,), name="x")
    >>> model = keras.Model(x, keras.layers.Dense(2, name="fc")(x))
    >>> new = insert_rescaling(model, 1 / 127.5, -1.0)
    >>> [layer.name for layer in new.layers]
    ['x', 'rescaling', 'fc']
"""

from __future__ import annotations

import math

import keras

from fixedq.transforms.graph import Ref, build_model, new_node, read_graph

__all__ = ["insert_rescaling"]


def insert_rescaling(model: keras.Model, scale: float, offset: float = 0.0,
                     name: str = "rescaling") -> keras.Model:
    """Return a copy of ``model`` whose input goes through ``Rescaling(scale, offset)`` first.

    Args:
        model: a Keras 3 functional or Sequential model with one input.
        scale: finite, non-zero multiplier.
        offset: finite value added after scaling.
        name: name of the new layer (made unique if taken).

    Raises:
        TypeError: ``model`` is not a Keras model; ``scale``/``offset`` are not numbers.
        ValueError: several inputs, a zero or non-finite scale/offset, or a model that already
            starts with a Rescaling layer.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"insert_rescaling expects a keras.Model, got {type(model).__name__}")
    for label, value in (("scale", scale), ("offset", offset)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{label} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{label} must be finite, got {value!r}")
    if scale == 0:
        raise ValueError("scale must be non-zero, got 0")
    graph = read_graph(model)
    if len(graph.inputs) != 1:
        raise ValueError(f"insert_rescaling supports models with one input; {model.name!r} has "
                         f"{len(graph.inputs)}")
    source = graph.inputs[0].name
    readers = graph.consumers(source)
    if readers and all(n.cls is keras.layers.Rescaling for n in readers):
        raise ValueError(f"model {model.name!r} already starts with a Rescaling layer "
                         f"({readers[0].name!r})")
    input_node = graph.node(source)
    layer = keras.layers.Rescaling(float(scale), float(offset), name=graph.unique_name(name))
    node = new_node(layer, (Ref(source),), list(input_node.output_shapes))
    graph.redirect(source, node.name)
    graph.insert_after(source, node)
    return build_model(graph)
