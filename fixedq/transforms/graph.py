"""A small, editable picture of a Keras 3 functional graph.

:func:`read_graph` turns a functional or Sequential model into a :class:`Graph`: a list of
:class:`GraphNode` in topological order, each holding a layer *description* (class, config,
weights) and the structure of its call arguments, where every input tensor is replaced by a
:class:`Ref` to the producing node. Rewrites edit that list; :func:`build_model` turns it back
into a new functional model made of fresh layer objects. The user's model is only read.

Example:
    >>> import keras
    >>> inputs = keras.Input((4,), name="x")
    >>> model = keras.Model(inputs, keras.layers.Dense(2, name="fc")(inputs))
    >>> graph = read_graph(model)
    >>> [node.name for node in graph.nodes]
    ['x', 'fc']
    >>> build_model(graph).layers[-1].name
    'fc'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
from keras import tree

from fixedq.layers.operators import TFOpLambda

__all__ = [
    "Ref",
    "GraphNode",
    "Graph",
    "read_graph",
    "build_model",
    "make_layer",
    "new_node",
    "pack_structure",
]


@dataclasses.dataclass(frozen=True)
class Ref:
    """Reference to output ``index`` (in flattened order) of the node called ``name``."""

    name: str
    index: int = 0


@dataclasses.dataclass
class GraphNode:
    """One layer call: what layer to build and what it is called on.

    ``args``/``kwargs`` are the call arguments with each input tensor replaced by a :class:`Ref`.
    ``weights`` pairs each variable name with its value, in ``layer.weights`` order.
    ``output_shapes`` are the flattened output shapes (batch dimension included, ``None`` for
    unknown). Input nodes have ``cls is keras.layers.InputLayer`` and no arguments.
    """

    name: str
    cls: type
    config: dict[str, Any]
    weights: list[tuple[str, np.ndarray]]
    args: tuple = ()
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    output_shapes: list[tuple] = dataclasses.field(default_factory=list)
    dtype: str = "float32"
    template: keras.layers.Layer | None = None  # original layer, read-only (for Lambda)
    #: Set by ``fold_rescaling``: ``(unit, kernel)``, the folded Rescaling's per-input-channel
    #: scale and the kernel before the fold (``weights`` holds the folded one); the quantized
    #: layer trains the kernel in these original units (see ``QuantizedNeuralLayer``).
    folded_input: tuple | None = None

    @property
    def refs(self) -> list[Ref]:
        """All input references, in argument order."""
        return [x for x in tree.flatten((self.args, self.kwargs)) if isinstance(x, Ref)]

    @property
    def plain_call(self) -> bool:
        """Called without tensor keyword arguments and without ``training=True``-like flags."""
        return all(value is None or value is False for value in self.kwargs.values())

    @property
    def is_input(self) -> bool:
        return self.cls is keras.layers.InputLayer

    def weight(self, name: str) -> np.ndarray | None:
        """The value of the variable called ``name``, or ``None``."""
        for key, value in self.weights:
            if key == name:
                return value
        return None


@dataclasses.dataclass
class Graph:
    """Nodes in topological order plus the model's inputs and outputs as references."""

    nodes: list[GraphNode]
    inputs: list[Ref]
    outputs: list[Ref]
    name: str = "model"
    input_structure: Any = None  # nesting of the model's inputs (list/dict), None = flat
    output_structure: Any = None

    def __iter__(self) -> Iterator[GraphNode]:
        return iter(list(self.nodes))

    def node(self, name: str) -> GraphNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def consumers(self, name: str) -> list[GraphNode]:
        """Nodes that read any output of node ``name`` (each listed once)."""
        return [n for n in self.nodes if any(r.name == name for r in n.refs)]

    def is_output(self, name: str) -> bool:
        return any(r.name == name for r in self.outputs)

    def sole_consumer(self, name: str) -> GraphNode | None:
        """The only reader of node ``name`` if there is exactly one and it is not an output."""
        users = self.consumers(name)
        if len(users) != 1 or self.is_output(name) or len(users[0].refs) != 1:
            return None
        return users[0]

    def input_shape(self, node: GraphNode, position: int = 0) -> tuple | None:
        """Shape of the ``position``-th input reference of ``node``."""
        refs = node.refs
        if position >= len(refs):
            return None
        ref = refs[position]
        return self.node(ref.name).output_shapes[ref.index]

    def redirect(self, old: str, new: str, skip: tuple[str, ...] = ()) -> None:
        """Make every reader of node ``old`` (and the outputs) read node ``new`` instead."""

        def swap(x):
            if isinstance(x, Ref) and x.name == old:
                return Ref(new, x.index)
            return x

        for node in self.nodes:
            if node.name in skip:
                continue
            node.args = tree.map_structure(swap, node.args)
            node.kwargs = tree.map_structure(swap, node.kwargs)
        self.outputs = [swap(r) for r in self.outputs]

    def remove(self, name: str) -> None:
        self.nodes = [n for n in self.nodes if n.name != name]

    def insert_after(self, name: str, node: GraphNode) -> None:
        index = [n.name for n in self.nodes].index(name)
        self.nodes.insert(index + 1, node)

    def unique_name(self, base: str) -> str:
        """``base`` if unused in the graph, else ``base_1``, ``base_2``, ..."""
        taken = {n.name for n in self.nodes}
        name, i = base, 0
        while name in taken:
            i += 1
            name = f"{base}_{i}"
        return name


def _check_model(model: Any) -> None:
    from keras.src.models.functional import Functional

    if isinstance(model, keras.Sequential):
        try:
            model.inputs  # noqa: B018 - raises when the Sequential model is not built
        except (AttributeError, ValueError) as err:
            raise ValueError(
                f"Sequential model {model.name!r} is not built: give it a keras.Input or call "
                "model.build(input_shape) before sanitizing"
            ) from err
        if not model.inputs:
            raise ValueError(f"Sequential model {model.name!r} is not built")
        return
    if isinstance(model, Functional):
        return
    if isinstance(model, keras.Model):
        return
    raise TypeError(
        f"expected a keras.Model (Keras 3, functional or Sequential); received "
        f"{type(model).__module__}.{type(model).__name__}"
    )


def _shape(tensor) -> tuple:
    return tuple(None if d is None else int(d) for d in tensor.shape)


def _structure(model: keras.Model, attribute: str, count: int) -> Any:
    """The nesting (single tensor, list, dict) of a model's inputs or outputs, with ``0``s."""
    struct = getattr(model, attribute, None)  # functional models keep it; Sequential does not
    if struct is not None:
        try:
            if len(tree.flatten(struct)) == count:
                return tree.map_structure(lambda _: 0, struct)
        except (TypeError, ValueError):
            pass
    return 0 if count == 1 else [0] * count


def pack_structure(structure: Any, tensors: list) -> Any:
    """Nest ``tensors`` like ``Graph.input_structure``/``output_structure`` (``None`` = flat).

    Example:
        >>> pack_structure({"a": 0, "b": 0}, ["x", "y"])
        {'a': 'x', 'b': 'y'}
    """
    if structure is None:
        return tensors[0] if len(tensors) == 1 else tensors
    return tree.pack_sequence_as(structure, tensors)




def read_graph(model: keras.Model) -> Graph:
    """Read ``model`` (functional or built Sequential) into a :class:`Graph` without changing it.

    A subclassed model is traced into a functional graph first
    (:func:`fixedq.transforms.trace.trace_subclassed`).

    Raises:
        TypeError: ``model`` is not a Keras 3 model, or is a subclassed model whose ``call`` is
            not a plain graph of layers.
        ValueError: a layer is called more than once in the graph (shared layers), or the model
            is an unbuilt Sequential.
    """
    _check_model(model)
    from keras.src.models.functional import Functional

    if not isinstance(model, (Functional, keras.Sequential)):
        from fixedq.transforms.trace import trace_subclassed

        model = trace_subclassed(model)  # or a TypeError saying how to make it functional
    chosen: dict[int, int] = {}  # id(layer) -> node index used by this model
    layers_by_name: dict[str, Any] = {}
    order: list[tuple[Any, int]] = []

    def history(tensor) -> tuple[Any, int, int]:
        hist = getattr(tensor, "_keras_history", None)
        if hist is None or hist.operation is None:
            raise ValueError(f"tensor {tensor!r} of model {model.name!r} has no producing layer")
        return hist.operation, hist.node_index, hist.tensor_index

    def claim(layer, node_index: int) -> bool:
        """Record ``layer`` as used at ``node_index``; False if it was already recorded."""
        if id(layer) in chosen:
            if chosen[id(layer)] != node_index:
                raise ValueError(
                    f"layer {layer.name!r} ({type(layer).__name__}) is called more than once in "
                    f"model {model.name!r}; shared layers are not supported by sanitize"
                )
            return False
        if layer.name in layers_by_name:
            raise ValueError(f"model {model.name!r} has two layers named {layer.name!r}")
        chosen[id(layer)] = node_index
        layers_by_name[layer.name] = layer
        return True

    # Iterative post-order depth-first search (deep models would overflow recursion). A layer
    # is entered when it is popped, not when it is pushed: a tensor read by two layers (a skip
    # connection) may be pushed twice, and a layer is appended only after all its inputs.
    roots = [history(t)[:2] for t in list(model.inputs) + list(model.outputs)]
    entered: set[int] = set()
    for root in roots:
        claim(*root)
        stack = [(root[0], root[1], False)]
        while stack:
            layer, index, expanded = stack.pop()
            if expanded:
                order.append((layer, index))
                continue
            if id(layer) in entered:
                continue
            entered.add(id(layer))
            stack.append((layer, index, True))
            knode = layer._inbound_nodes[index]
            for tensor in reversed(knode.arguments.keras_tensors):
                parent, parent_index, _ = history(tensor)
                claim(parent, parent_index)  # checks shared layers and duplicate names
                if id(parent) not in entered:
                    stack.append((parent, parent_index, False))

    def to_ref(x):
        if isinstance(x, keras.KerasTensor):
            layer, _, tensor_index = history(x)
            return Ref(layer.name, tensor_index)
        return x

    nodes = []
    shapes: dict[Ref, tuple] = {}
    for layer, index in order:
        knode = layer._inbound_nodes[index]
        if isinstance(layer, keras.layers.InputLayer):
            args, kwargs = (), {}
        else:
            args = tree.map_structure(to_ref, knode.arguments.args)
            kwargs = tree.map_structure(to_ref, knode.arguments.kwargs)
        outputs = knode.outputs
        out_shapes = [_shape(t) for t in outputs]
        node = GraphNode(
            name=layer.name,
            cls=type(layer),
            config=layer.get_config() if isinstance(layer, keras.layers.Layer) else {},
            weights=[(w.name, np.array(w.numpy())) for w in getattr(layer, "weights", [])],
            args=args,
            kwargs=kwargs,
            output_shapes=out_shapes,
            dtype=str(outputs[0].dtype) if outputs else "float32",
            template=layer,
        )
        if not isinstance(layer, keras.layers.Layer) or isinstance(layer, TFOpLambda):
            _as_layer_node(node, layer, shapes)
        nodes.append(node)
        for i, shape in enumerate(out_shapes):
            shapes[Ref(layer.name, i)] = shape

    inputs = [to_ref(t) for t in model.inputs]
    outputs = [to_ref(t) for t in model.outputs]
    return Graph(
        nodes=nodes,
        inputs=inputs,
        outputs=outputs,
        name=model.name,
        input_structure=_structure(model, "_inputs_struct", len(inputs)),
        output_structure=_structure(model, "_outputs_struct", len(outputs)),
    )


def _as_layer_node(node: GraphNode, op, shapes: dict) -> None:
    """Turn an operator node (a Keras 3 operation, or a loaded tf-keras ``TFOpLambda``) into
    the standard layer computing it (see :mod:`fixedq.transforms.operator_nodes`), or into a
    float :class:`~fixedq.layers.operators.OperationLayer` when there is none."""
    from fixedq.transforms import operator_nodes

    def is_ref(x):
        return isinstance(x, Ref)

    if isinstance(op, TFOpLambda):
        call = operator_nodes.describe_tf_op(op, node.refs, is_ref)
    else:
        call = operator_nodes.describe_operation(op, node.args, node.kwargs, is_ref)
    found = None
    if call is not None:
        found = operator_nodes.layer_for(call, node.name, node.output_shapes[0], shapes, is_ref)
    if found is None and isinstance(op, TFOpLambda):
        return  # a float layer already
    if found is None:
        found = operator_nodes.operation_layer(op, node.args, node.kwargs, is_ref)
    node.cls, node.config, node.args, node.kwargs = found.cls, found.config, found.args, {}
    node.weights, node.template = list(found.weights), None


def make_layer(node: GraphNode) -> keras.layers.Layer:
    """A fresh, unbuilt layer described by ``node`` (Lambda layers share the Python function)."""
    if node.cls is keras.layers.Lambda and node.template is not None:
        t = node.template
        return keras.layers.Lambda(
            t.function,
            output_shape=t._output_shape,
            mask=t.mask,
            arguments=dict(t.arguments),
            name=node.name,
            dtype=node.config.get("dtype"),
        )
    config = dict(node.config)
    config["name"] = node.name
    return node.cls.from_config(config)


def build_model(graph: Graph) -> keras.Model:
    """Build a new functional model from ``graph`` with fresh layers and copied weights."""
    values: dict[str, list] = {}
    for node in graph.nodes:
        if node.is_input:
            shape = node.output_shapes[0]
            values[node.name] = [
                keras.Input(
                    batch_shape=shape,
                    dtype=node.dtype,
                    name=node.name,
                    sparse=node.config.get("sparse", False),
                )
            ]
            continue

        def fill(x):
            if isinstance(x, Ref):
                return values[x.name][x.index]
            return x

        layer = make_layer(node)
        args = tree.map_structure(fill, node.args)
        kwargs = tree.map_structure(fill, node.kwargs)
        out = layer(*args, **kwargs)
        if node.weights:
            names = [w.name for w in layer.weights]
            if len(names) != len(node.weights):
                raise ValueError(
                    f"layer {node.name!r} expects {len(names)} weights ({names}), "
                    f"got {len(node.weights)} ({[k for k, _ in node.weights]})"
                )
            layer.set_weights([value for _, value in node.weights])
        values[node.name] = tree.flatten(out)

    ins = [values[r.name][r.index] for r in graph.inputs]
    outs = [values[r.name][r.index] for r in graph.outputs]
    return keras.Model(
        pack_structure(graph.input_structure, ins),
        pack_structure(graph.output_structure, outs),
        name=graph.name,
    )


def new_node(
    layer: keras.layers.Layer,
    args: tuple,
    output_shapes: list[tuple],
    dtype: str = "float32",
) -> GraphNode:
    """Describe an unbuilt, weightless ``layer`` called on ``args`` as a :class:`GraphNode`."""
    return GraphNode(
        name=layer.name,
        cls=type(layer),
        config=layer.get_config(),
        weights=[],
        args=args,
        output_shapes=list(output_shapes),
        dtype=dtype,
    )
