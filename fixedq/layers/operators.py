"""Float layers that stand for operator nodes: a Keras 3 operation called on tensors outside any
layer (``x + y``, ``keras.ops.mean(x, 1)``, ``x[:, 0]``), and tf-keras' ``TFOpLambda`` /
``SlicingOpLambda`` (a TensorFlow function recorded in a Keras 2 model file).

The graph reader (:mod:`fixedq.transforms.operator_nodes`) turns every operator node it can into
the equivalent standard layer (``Add``, ``Multiply``, ``Rescaling``, ``Reshape``, ...), which
``quantize`` then quantizes through the op registry. What has no equivalent stays one of these
float layers: it computes exactly what the operation computed, so a model that holds one still
runs (in float from that node on, with a warning naming it).

Example:
    >>> import numpy as np
    >>> layer = TFOpLambda(function="math.multiply", arguments={"y": 0.5})
    >>> np.asarray(layer(np.array([[2.0, 4.0]], "float32"))).tolist()
    [[1.0, 2.0]]
"""

from __future__ import annotations

import importlib
from typing import Any

import keras
import numpy as np
from keras import ops, tree

__all__ = ["TF_FUNCTIONS", "OperationLayer", "TFOpLambda", "TensorSlot"]


class TensorSlot(dict):
    """Marks where the ``i``-th input tensor goes in a recorded call (a dict, so it serializes)."""

    def __init__(self, index: int):
        super().__init__(__tensor__=int(index))


def _is_slot(x) -> bool:
    return isinstance(x, dict) and set(x) == {"__tensor__"}


def _fill(template: Any, tensors: list) -> Any:
    return tree.traverse(lambda x: tensors[x["__tensor__"]] if _is_slot(x) else None, template,
                         top_down=True)


def _as_list(inputs) -> list:
    return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]


@keras.saving.register_keras_serializable(package="fixedq")
class OperationLayer(keras.layers.Layer):
    """A Keras 3 operation (``keras.ops``) with its constant arguments, as a layer.

    Args:
        operation: ``{"module", "class_name", "config"}`` of the operation.
        arguments: ``{"args": [...], "kwargs": {...}}``: the call, each input tensor replaced by
            ``{"__tensor__": i}`` (its position in the layer's inputs), constants kept
            (serialized with ``keras.saving.serialize_keras_object``).

    Example:
        >>> import numpy as np
        >>> layer = OperationLayer({"module": "keras.src.ops.numpy", "class_name": "Square",
        ...                         "config": {}}, {"args": [{"__tensor__": 0}], "kwargs": {}})
        >>> np.asarray(layer(np.array([[3.0]], "float32"))).tolist()
        [[9.0]]
    """

    def __init__(self, operation: dict, arguments: dict, **kwargs):
        super().__init__(**kwargs)
        module = str(operation.get("module", ""))
        if not module.startswith("keras."):
            raise ValueError(f"OperationLayer {self.name!r}: operation module must be a Keras "
                             f"module (keras.*), got {module!r}")
        self.operation = dict(operation)
        self.arguments = arguments
        cls = getattr(importlib.import_module(module), operation["class_name"])
        config = {k: v for k, v in operation.get("config", {}).items() if k != "name"}
        self._op = cls(**config)
        self._args = keras.saving.deserialize_keras_object(arguments)

    @property
    def operation_name(self) -> str:
        """The wrapped operation's class name (e.g. ``"Sin"``)."""
        return str(self.operation["class_name"])

    def call(self, inputs):
        call = _fill(self._args, _as_list(inputs))
        return self._op(*call["args"], **call["kwargs"])

    def compute_output_spec(self, inputs):
        call = _fill(self._args, _as_list(inputs))
        return self._op.compute_output_spec(*call["args"], **call["kwargs"])

    def get_config(self):
        return {**super().get_config(), "operation": self.operation,
                "arguments": self.arguments}


def _getitem(x, slice_spec):
    """tf-keras' ``SlicingOpLambda``: ``slice_spec`` is a list of ints, ``None`` (new axis),
    ``Ellipsis`` or ``{"start", "stop", "step"}`` dicts."""
    key = tuple(slice(s["start"], s["stop"], s["step"]) if isinstance(s, dict) else s
                for s in (slice_spec if isinstance(slice_spec, list) else [slice_spec]))
    return x[key]


def _tf_mean(input_tensor, axis=None, keepdims=False, **_):
    return ops.mean(input_tensor, axis=axis, keepdims=bool(keepdims))


def _tf_transpose(a, perm=None, **_):
    return ops.transpose(a, perm)


#: tf-keras TFOpLambda functions and their Keras 3 equivalent (argument names as TensorFlow's).
TF_FUNCTIONS: dict[str, Any] = {
    "__operators__.add": lambda x, y, **_: ops.add(x, y),
    "math.add": lambda x, y, **_: ops.add(x, y),
    "math.subtract": lambda x, y, **_: ops.subtract(x, y),
    "math.multiply": lambda x, y, **_: ops.multiply(x, y),
    "math.truediv": lambda x, y, **_: ops.divide(x, y),
    "math.divide": lambda x, y, **_: ops.divide(x, y),
    "concat": lambda values, axis, **_: ops.concatenate(values, axis=axis),
    "reshape": lambda tensor, shape, **_: ops.reshape(tensor, shape),
    "transpose": _tf_transpose,
    "compat.v1.transpose": _tf_transpose,
    "math.reduce_mean": _tf_mean,
    "expand_dims": lambda input, axis, **_: ops.expand_dims(input, axis),  # noqa: A002
    "squeeze": lambda input, axis=None, **_: ops.squeeze(input, axis),  # noqa: A002
    "__operators__.getitem": _getitem,
    "math.sigmoid": lambda x, **_: ops.sigmoid(x),
    "nn.relu": lambda features, **_: ops.relu(features),
    "nn.relu6": lambda features, **_: ops.relu6(features),
}

#: The name of each function's first (tensor) argument when it is given positionally.
_FIRST_ARG = {"concat": "values", "reshape": "tensor", "transpose": "a",
              "compat.v1.transpose": "a", "math.reduce_mean": "input_tensor",
              "expand_dims": "input", "squeeze": "input", "__operators__.getitem": "x",
              "nn.relu": "features", "nn.relu6": "features"}


def first_argument(function: str) -> str:
    """The keyword of ``function``'s first tensor argument (``"x"`` for the arithmetic ones).

    Example:
        >>> first_argument("reshape")
        'tensor'
    """
    return _FIRST_ARG.get(function, "x")


@keras.saving.register_keras_serializable(package="fixedq")
class TFOpLambda(keras.layers.Layer):
    """A tf-keras ``TFOpLambda``/``SlicingOpLambda`` node in Keras 3.

    ``fixedq.load_model`` rewrites each such node of a tf-keras ``.h5`` file into this layer:
    its inputs are the node's tensor arguments (``tensor_arguments`` names them, in order) and
    ``arguments`` holds the constant ones.

    Args:
        function: the TensorFlow function name as tf-keras records it (``"math.add"``).
        arguments: constant keyword arguments (numbers, lists, slice specs).
        tensor_arguments: keyword names of the tensor inputs, in input order; a name may be
            ``"values.i"`` for the ``i``-th element of a list argument (``tf.concat``).

    Raises:
        ValueError: ``function`` is not one of :data:`TF_FUNCTIONS`.
    """

    def __init__(self, function: str, arguments: dict | None = None,
                 tensor_arguments: list | None = None, **kwargs):
        super().__init__(**kwargs)
        if function not in TF_FUNCTIONS:
            raise ValueError(f"TFOpLambda {self.name!r}: TensorFlow function {function!r} is "
                             f"not supported; supported: {sorted(TF_FUNCTIONS)}")
        self.function = function
        self.arguments = dict(arguments or {})
        self.tensor_arguments = list(tensor_arguments or [first_argument(function)])

    def call_arguments(self, tensors: list) -> dict:
        """The function's keyword arguments with ``tensors`` put in their places."""
        kwargs = {k: v for k, v in self.arguments.items() if k != "name"}
        for name, t in zip(self.tensor_arguments, tensors, strict=True):
            if "." in name:
                key, index = name.split(".")
                values = list(kwargs.get(key, []))
                values += [None] * (int(index) + 1 - len(values))
                values[int(index)] = t
                kwargs[key] = values
            else:
                kwargs[name] = t
        for key, value in list(kwargs.items()):
            if isinstance(value, list) and key in ("y", "x") and value and not any(
                    isinstance(v, keras.KerasTensor) or hasattr(v, "dtype") for v in value):
                kwargs[key] = np.asarray(value, dtype="float32")
        return kwargs

    def call(self, inputs):
        return TF_FUNCTIONS[self.function](**self.call_arguments(_as_list(inputs)))

    def get_config(self):
        return {**super().get_config(), "function": self.function,
                "arguments": self.arguments, "tensor_arguments": self.tensor_arguments}
