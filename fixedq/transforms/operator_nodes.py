"""Operator nodes as standard layers: what the graph reader does with ``x + y``, ``x * 0.5``,
``keras.ops.mean(x, axis=1)``, ``x[:, 0]`` in a Keras 3 functional model, and with tf-keras'
``TFOpLambda`` nodes (loaded as :class:`fixedq.layers.operators.TFOpLambda`).

Each such call is first described as an :class:`OpCall` (a canonical operation name, its
operands -- graph references or constants -- and its parameters), then replaced by the layer
that computes the same function, which the op registry quantizes:

========================================  ==========================================
operation                                  layer
========================================  ==========================================
tensor + tensor, -, * (broadcasting)       ``Add``, ``Subtract``, ``Multiply``
tensor +,-,*,/ a scalar or per-channel     ``Rescaling(scale, offset)``
tensor + constant or weight of (N, D)      ``AddPositionEmbs`` (the constant as weight)
concatenate                                ``Concatenate(axis)``
reshape / expand_dims / squeeze            ``Reshape`` (batch axis kept)
transpose (batch axis first)               ``Permute``
mean over (H, W) or over steps             ``GlobalAveragePooling2D/1D(keepdims)``
``x[:, i]`` on (B, N, D) tokens             ``ExtractToken(i)``
other static slices, strides, ``...``      ``StridedSlice`` (integers copied)
relu / relu6                               ``ReLU`` (``max_value=6``)
image.extract_patches (2-D, channels_last) ``Conv2D`` with a one-hot kernel
sigmoid, tanh, silu, hard_sigmoid(_silu)   ``Activation`` (integer tables)
========================================  ==========================================

Anything else stays a float layer (:class:`~fixedq.layers.operators.OperationLayer` for Keras 3
operations) that ``quantize`` leaves in float with a warning naming it.

Example:
    >>> import keras
    >>> from fixedq.transforms.graph import read_graph
    >>> x = keras.Input((4,), name="x")
    >>> g = read_graph(keras.Model(x, x * 0.5 + 1.0))
    >>> [(n.cls.__name__, n.config.get("scale"), n.config.get("offset")) for n in g.nodes[1:]]
    [('Rescaling', 0.5, 0.0), ('Rescaling', 1.0, 1.0)]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np
from keras import tree

from fixedq.layers.operators import OperationLayer, TensorSlot, TFOpLambda
from fixedq.layers.slicing import StridedSlice
from fixedq.layers.transformers import AddPositionEmbs, ExtractToken
from fixedq.tensors.slicing import normalize_key

__all__ = ["OpCall", "describe_operation", "describe_tf_op", "layer_for"]

L = keras.layers

#: Keras 3 operation class -> canonical name (``keras.ops`` and the tensor operators).
_KERAS_OPS = {"Add": "add", "Subtract": "subtract", "Multiply": "multiply",
              "TrueDivide": "divide", "Divide": "divide", "Concatenate": "concatenate",
              "Reshape": "reshape", "Transpose": "transpose", "Mean": "mean",
              "GetItem": "getitem", "ExpandDims": "reshape", "Squeeze": "reshape",
              "Relu": "relu", "Relu6": "relu6", "Sigmoid": "sigmoid", "Tanh": "tanh",
              "Silu": "silu", "HardSigmoid": "hard_sigmoid", "HardSilu": "hard_silu",
              "ExtractPatches": "extract_patches"}

#: Elementwise activations (``keras.ops.relu(x)``, ...): read as ``ReLU`` or ``Activation``.
_ACTIVATIONS = ("sigmoid", "tanh", "silu", "hard_sigmoid", "hard_silu")

#: tf-keras TFOpLambda function -> canonical name.
_TF_OPS = {"__operators__.add": "add", "math.add": "add", "math.subtract": "subtract",
           "math.multiply": "multiply", "math.truediv": "divide", "math.divide": "divide",
           "concat": "concatenate", "reshape": "reshape", "expand_dims": "reshape",
           "squeeze": "reshape", "transpose": "transpose", "compat.v1.transpose": "transpose",
           "math.reduce_mean": "mean", "__operators__.getitem": "getitem"}


@dataclasses.dataclass
class OpCall:
    """One operator call in canonical form.

    Attributes:
        op: canonical name (``"add"``, ``"multiply"``, ``"reshape"``, ...).
        operands: graph references (:class:`~fixedq.transforms.graph.Ref`) or constants
            (NumPy arrays), in call order; for ``concatenate`` the list of joined values.
        params: ``axis``, ``keepdims``, ``axes``, ``key`` (a getitem key).
    """

    op: str
    operands: list
    params: dict = dataclasses.field(default_factory=dict)


def _constant(x) -> np.ndarray | None:
    """``x`` as a float32 array if it is a constant (number, array, variable), else ``None``."""
    if isinstance(x, keras.Variable):
        return np.asarray(x.numpy(), dtype=np.float32)
    if isinstance(x, (int, float, np.ndarray, np.number)) and not isinstance(x, bool):
        return np.asarray(x, dtype=np.float32)
    if hasattr(x, "numpy") and not isinstance(x, keras.KerasTensor):
        return np.asarray(x.numpy(), dtype=np.float32)
    return None


def describe_operation(op, args: tuple, kwargs: dict, is_ref) -> OpCall | None:
    """The :class:`OpCall` of Keras 3 operation ``op`` called on ``args``/``kwargs`` (input
    tensors already replaced by references, recognised by ``is_ref``); ``None`` if unknown."""
    name = _KERAS_OPS.get(type(op).__name__)
    if name is None or kwargs:
        return None
    operands = list(args)
    params: dict = {}
    if name == "concatenate":
        operands, params["axis"] = list(args[0]), op.axis
    elif name == "mean":
        params = {"axis": op.axis, "keepdims": bool(op.keepdims)}
        operands = operands[:1]
    elif name == "transpose":
        params["axes"] = op.axes
        operands = operands[:1]
    elif name == "getitem":
        params["key"] = args[1]
        operands = operands[:1]
    elif name == "reshape":
        operands = operands[:1]
    elif name == "extract_patches":
        params = {k: getattr(op, k) for k in ("size", "strides", "dilation_rate", "padding",
                                               "data_format")}
        operands = operands[:1]
    return _normalise(OpCall(name, operands, params), is_ref)


def describe_tf_op(layer: TFOpLambda, refs: list, is_ref) -> OpCall | None:
    """The :class:`OpCall` of a loaded tf-keras ``TFOpLambda`` whose inputs are ``refs``."""
    name = _TF_OPS.get(layer.function)
    if name is None:
        return None
    kw = layer.call_arguments(list(refs))
    if name in ("add", "subtract", "multiply", "divide"):
        return _normalise(OpCall(name, [kw.get("x"), kw.get("y")]), is_ref)
    if name == "concatenate":
        return _normalise(OpCall(name, list(kw["values"]), {"axis": kw.get("axis", -1)}), is_ref)
    if name == "mean":
        return _normalise(OpCall(name, [kw["input_tensor"]], {
            "axis": kw.get("axis"), "keepdims": bool(kw.get("keepdims", False))}), is_ref)
    if name == "transpose":
        return _normalise(OpCall(name, [kw["a"]], {"axes": kw.get("perm")}), is_ref)
    if name == "getitem":
        spec = kw["slice_spec"]
        key = tuple(slice(s["start"], s["stop"], s["step"]) if isinstance(s, dict) else s
                    for s in (spec if isinstance(spec, list) else [spec]))
        return _normalise(OpCall(name, [kw["x"]], {"key": key}), is_ref)
    first = kw.get("tensor", kw.get("input"))
    return _normalise(OpCall(name, [first]), is_ref)


def _normalise(call: OpCall, is_ref) -> OpCall | None:
    operands = []
    for x in call.operands:
        if is_ref(x):
            operands.append(x)
            continue
        value = _constant(x)
        if value is None:
            return None
        operands.append(value)
    if not any(is_ref(x) for x in operands):
        return None
    call.operands = operands
    return call


def _per_channel(value: np.ndarray, rank: int, channels: int | None) -> Any:
    """``value`` as a Rescaling scale/offset (a float or a per-channel list), or ``None``."""
    if value.size == 1 and value.ndim <= rank:
        return float(value.reshape(()))
    if (channels is not None and value.ndim <= rank and value.shape[-1] == channels
            and value.size == channels):
        return [float(v) for v in value.reshape(-1)]
    return None


@dataclasses.dataclass
class LayerCall:
    """What replaces an operator node: a layer (class + config), its argument structure and
    its weights (``(name, value)`` pairs)."""

    cls: type
    config: dict
    args: tuple
    weights: list = dataclasses.field(default_factory=list)


def _layer(cls, name: str, args: tuple, weights=(), **config) -> LayerCall:
    layer = cls(name=name, **config)
    return LayerCall(cls, layer.get_config(), args, list(weights))


def _arith(call: OpCall, name: str, shapes: dict, is_ref) -> LayerCall | None:
    a, b = call.operands
    if is_ref(a) and is_ref(b):
        cls = {"add": L.Add, "subtract": L.Subtract, "multiply": L.Multiply}.get(call.op)
        return None if cls is None else _layer(cls, name, ([a, b],))
    ref, const = (a, b) if is_ref(a) else (b, a)
    shape = shapes[ref]
    rank, channels = len(shape) - 1, shape[-1]
    value = _per_channel(const, rank, channels)
    if value is not None:
        v = np.asarray(value, dtype=np.float64)
        scale, offset = {
            "add": (1.0, v), "multiply": (v, 0.0),
            "subtract": (1.0, -v) if is_ref(a) else (-1.0, v),
            "divide": (1.0 / v, 0.0) if is_ref(a) and np.all(v != 0) else (None, None),
        }[call.op]
        if scale is None:
            return None

        def plain(x):
            x = np.broadcast_to(np.asarray(x, dtype=np.float64), v.shape)
            return float(x.reshape(())) if x.ndim == 0 else [float(t) for t in x]

        return _layer(L.Rescaling, name, (ref,), scale=plain(scale), offset=plain(offset))
    if call.op == "add" and len(shape) == 3 and None not in shape[1:]:
        table = np.asarray(const, dtype=np.float32)
        if table.shape in (tuple(shape[1:]), (1, *shape[1:])):
            return _layer(AddPositionEmbs, name, (ref,),
                          [("pos_embedding", table.reshape(shape[1:]))])
    return None


def _mean(call: OpCall, name: str, shape: tuple) -> LayerCall | None:
    axis = call.params["axis"]
    axes = tuple(sorted(a % len(shape) for a in (axis if isinstance(axis, (list, tuple))
                                                  else [axis]))) if axis is not None else None
    keep = call.params["keepdims"]
    if len(shape) == 4 and axes == (1, 2):
        return _layer(L.GlobalAveragePooling2D, name, (call.operands[0],), keepdims=keep)
    if len(shape) == 3 and axes == (1,):
        return _layer(L.GlobalAveragePooling1D, name, (call.operands[0],), keepdims=keep)
    return None


def _getitem(call: OpCall, name: str, shape: tuple) -> LayerCall | None:
    key = call.params["key"]
    key = key if isinstance(key, tuple) else (key,)
    if (len(shape) == 3 and len(key) == 2 and key[0] == slice(None)
            and isinstance(key[1], (int, np.integer)) and not isinstance(key[1], bool)):
        token = int(key[1])
        if shape[1] is not None and not -shape[1] <= token < shape[1]:
            return None
        return _layer(ExtractToken, name, (call.operands[0],), token=token)
    spec = normalize_key(key, tuple(shape))
    if spec is None:
        return None
    return _layer(StridedSlice, name, (call.operands[0],), **spec)


def layer_for(call: OpCall, name: str, out_shape: tuple, shapes: dict, is_ref) -> \
        LayerCall | None:
    """The standard layer computing ``call`` (``None``: none; the node stays a float op).

    ``shapes`` maps each reference operand to its shape (batch axis included).
    """
    if call.op in ("add", "subtract", "multiply", "divide"):
        return _arith(call, name, shapes, is_ref) if len(call.operands) == 2 else None
    refs = [x for x in call.operands if is_ref(x)]
    if len(refs) != len(call.operands):
        return None
    if call.op in ("relu", "relu6"):
        return _layer(L.ReLU, name, (refs[0],), max_value=6.0 if call.op == "relu6" else None)
    if call.op in _ACTIVATIONS:
        return _layer(L.Activation, name, (refs[0],), activation=call.op)
    if call.op == "concatenate":
        return _layer(L.Concatenate, name, (list(refs),), axis=int(call.params["axis"]))
    shape = shapes[refs[0]]
    if call.op == "reshape":
        if out_shape[0] is not None or None in out_shape[1:]:
            return None
        return _layer(L.Reshape, name, (refs[0],), target_shape=tuple(out_shape[1:]))
    if call.op == "transpose":
        axes = call.params.get("axes")
        if axes is None or int(axes[0]) != 0:
            return None
        return _layer(L.Permute, name, (refs[0],), dims=tuple(int(a) for a in axes[1:]))
    if call.op == "mean":
        return _mean(call, name, shape)
    if call.op == "getitem":
        return _getitem(call, name, shape)
    if call.op == "extract_patches":
        return _patches(call, name, shape)
    return None


def _patches(call: OpCall, name: str, shape: tuple) -> LayerCall | None:
    """``keras.ops.image.extract_patches`` on a (B, H, W, C) image as the ``Conv2D`` with the
    one-hot kernel ``K[i, j, c, (i*kw + j)*C + c] = 1`` (the patch's (row, column, channel)
    order): the same values, and a quantized ``neural`` op (weights exactly +-1)."""
    p = call.params
    size = tuple(p["size"]) if isinstance(p["size"], (list, tuple)) else (p["size"],) * 2
    if len(shape) != 4 or len(size) != 2 or p["data_format"] != "channels_last" \
            or shape[-1] is None:
        return None
    kh, kw, c = int(size[0]), int(size[1]), int(shape[-1])
    kernel = np.zeros((kh, kw, c, kh * kw * c), dtype=np.float32)
    for i in range(kh):
        for j in range(kw):
            for ch in range(c):
                kernel[i, j, ch, (i * kw + j) * c + ch] = 1.0
    return _layer(L.Conv2D, name, (call.operands[0],), [("kernel", kernel)],
                  filters=kh * kw * c, kernel_size=(kh, kw), strides=p["strides"] or size,
                  padding=p["padding"], dilation_rate=p["dilation_rate"], use_bias=False)


def operation_layer(op, args: tuple, kwargs: dict, is_ref) -> LayerCall:
    """An :class:`OperationLayer` computing ``op(*args, **kwargs)``, inputs in ``args`` order."""
    refs: list = []

    def slot(x):
        if is_ref(x):
            refs.append(x)
            return TensorSlot(len(refs) - 1)
        return x

    template = {"args": list(tree.map_structure(slot, list(args))),
                "kwargs": tree.map_structure(slot, dict(kwargs))}
    arguments = keras.saving.serialize_keras_object(template)
    config = op.get_config() if hasattr(op, "get_config") else {}
    operation = {"module": type(op).__module__, "class_name": type(op).__name__,
                 "config": {k: v for k, v in config.items() if k != "name"}}
    layer = OperationLayer(operation, arguments, name=op.name)
    return LayerCall(OperationLayer, layer.get_config(),
                     (refs if len(refs) > 1 else refs[0],) if refs else ())
