"""Subclassed Keras models as functional graphs: :func:`trace_subclassed` calls the model's
``call`` on a symbolic input, so every layer it calls (and every ``keras.ops`` operation on
tensors) is recorded as a node of a functional model sharing the same layer objects. That
works when ``call`` is a plain graph of layers (Python control flow on shapes or
attributes is fine); ``call`` that branches on tensor values, loops over a dynamic length or
calls a layer twice cannot be traced, and the error says how to write the model functionally.

Example:
    >>> import keras, numpy as np
    >>> class Net(keras.Model):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = keras.layers.Dense(2, name="fc")
    ...     def call(self, x):
    ...         return self.fc(x)
    >>> net = Net()
    >>> _ = net(np.zeros((1, 3), "float32"))
    >>> [layer.name for layer in trace_subclassed(net).layers][1:]
    ['fc']
"""

from __future__ import annotations

import keras

__all__ = ["trace_subclassed"]


def _how_to(model) -> str:
    return (f"write {model.name!r} as a functional model instead: x = keras.Input(shape); "
            "y = layer(x) for each layer of call(); keras.Model(x, y) (each layer called once)")


def trace_subclassed(model: keras.Model) -> keras.Model:
    """A functional model computing what subclassed ``model`` computes, made of its layers.

    Raises:
        ValueError: ``model`` is not built (call it once on a batch, or ``build(shape)``), or
            has several inputs.
        TypeError: its ``call`` is not a plain graph of layers (the error of tracing it and
            how to make the model functional).
    """
    shapes = dict(getattr(model, "_build_shapes_dict", None) or {})
    if model.built and not shapes:  # Keras built it eagerly: its symbolic build failed
        raise TypeError(f"subclassed model {model.name!r} ({type(model).__name__}) cannot be "
                        "traced into a functional graph: Keras recorded no input shape for it "
                        "(its call() is not a plain graph of layers on a symbolic input); "
                        + _how_to(model))
    if not model.built:
        raise ValueError(f"subclassed model {model.name!r} ({type(model).__name__}) is not "
                         "built: call it once on a batch, or model.build(input_shape), before "
                         "quantizing it")
    if len(shapes) != 1:
        raise ValueError(f"subclassed model {model.name!r} takes {len(shapes)} inputs "
                         f"({sorted(shapes)}); only single-input subclassed models are traced; "
                         + _how_to(model))
    shape = tuple(next(iter(shapes.values())))
    if not shape or isinstance(shape[0], (list, tuple, dict)):
        raise ValueError(f"subclassed model {model.name!r}: cannot read its input shape "
                         f"{shape!r}; " + _how_to(model))
    inputs = keras.Input(batch_shape=(None, *shape[1:]), name=f"{model.name}_input")
    try:
        outputs = model.call(inputs)
        traced = keras.Model(inputs, outputs, name=model.name)
    except Exception as err:  # anything tracing raises: user code
        raise TypeError(f"subclassed model {model.name!r} ({type(model).__name__}) cannot be "
                        f"traced into a functional graph: its call() is not a plain graph of "
                        f"layers ({type(err).__name__}: {str(err)[:300]}); "
                        + _how_to(model)) from err
    return traced
