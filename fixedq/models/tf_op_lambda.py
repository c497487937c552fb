"""tf-keras ``TFOpLambda`` / ``SlicingOpLambda`` nodes in a ``.h5`` model config, rewritten for
Keras 3 (which has neither class).

tf-keras records ``x + pos``, ``tf.reduce_mean(x, 1)``, ``x[:, 0]`` as such nodes: the function
name in the layer config, its arguments in the inbound node's keyword dict, where a tensor
argument is a ``[layer, node, tensor]`` reference. :func:`rewrite_tf_op_lambdas` moves every
tensor argument into the node's inputs and the constant ones into the layer config, and makes
the node a :class:`fixedq.layers.operators.TFOpLambda`, which computes the function with
``keras.ops``; the graph reader then turns it into the standard layer the op registry
quantizes (:mod:`fixedq.transforms.operator_nodes`). A function outside
:data:`fixedq.layers.operators.TF_FUNCTIONS` is a ``ValueError`` naming the node.

Example:
    >>> cfg = {"layers": [{"class_name": "TFOpLambda", "name": "tf.math.multiply",
    ...     "config": {"name": "tf.math.multiply", "function": "math.multiply"},
    ...     "inbound_nodes": [[["dense", 0, 0, {"y": 0.5, "name": None}]]]}]}
    >>> rewrite_tf_op_lambdas(cfg)
    True
    >>> cfg["layers"][0]["config"]["arguments"], cfg["layers"][0]["inbound_nodes"]
    ({'y': 0.5, 'name': None}, [[['dense', 0, 0, {}]]])
"""

from __future__ import annotations

from fixedq.layers.operators import TF_FUNCTIONS, first_argument

__all__ = ["TF_OP_CLASSES", "rewrite_tf_op_lambdas"]

TF_OP_CLASSES = ("TFOpLambda", "SlicingOpLambda")


def _is_ref(value, names: set[str]) -> bool:
    return (isinstance(value, list) and len(value) in (3, 4) and isinstance(value[0], str)
            and value[0] in names and isinstance(value[1], int) and isinstance(value[2], int))


def _rewrite_node(layer: dict, node: list, names: set[str]) -> None:
    cfg = layer["config"]
    function = cfg.get("function")
    name = cfg.get("name", layer.get("name"))
    if function not in TF_FUNCTIONS:
        raise ValueError(
            f"tf-keras node {name!r} ({layer['class_name']}) calls TensorFlow function "
            f"{function!r}, which fixedq cannot read; supported: {sorted(TF_FUNCTIONS)}. "
            "Replace it by a Keras layer (e.g. layers.Add, layers.Multiply, layers.Reshape) "
            "in the tf-keras model and save it again")
    if node and isinstance(node[0], str):  # a single input is written unnested
        node[:] = [list(node)]
    entries = [e for e in node if isinstance(e, list)]
    if not entries:
        raise ValueError(f"tf-keras node {name!r} has no input tensors")
    kwargs = dict(entries[-1][3]) if len(entries[-1]) > 3 and entries[-1][3] else {}
    inputs = [list(e[:3]) for e in entries]
    tensor_names = ([first_argument(function)] if len(entries) == 1 else
                    [f"{first_argument(function)}.{i}" for i in range(len(entries))])
    constants = {}
    for key, value in kwargs.items():
        if _is_ref(value, names):
            inputs.append(list(value[:3]))
            tensor_names.append(key)
        elif isinstance(value, list) and value and all(_is_ref(v, names) for v in value):
            for i, v in enumerate(value):
                inputs.append(list(v[:3]))
                tensor_names.append(f"{key}.{i}")
        else:
            constants[key] = value
    layer["class_name"] = "TFOpLambda"
    layer["config"] = {"name": cfg.get("name"), "trainable": cfg.get("trainable", True),
                       "dtype": cfg.get("dtype", "float32"), "function": function,
                       "arguments": constants, "tensor_arguments": tensor_names}
    node[:] = [[*ref, {}] for ref in inputs]


def rewrite_tf_op_lambdas(model_config: dict) -> bool:
    """Rewrite, in place, the TFOpLambda/SlicingOpLambda layers of one functional model config
    (its ``layers`` list) as :class:`~fixedq.layers.operators.TFOpLambda` nodes. Return True if
    any was found. Raises ``ValueError`` naming a node whose function is not supported, or one
    called more than once (a shared op node)."""
    layers = model_config.get("layers")
    if not isinstance(layers, list):
        return False
    names = {str(layer.get("name", layer.get("config", {}).get("name"))) for layer in layers}
    changed = False
    for layer in layers:
        if (layer.get("class_name") not in TF_OP_CLASSES
                or "tensor_arguments" in layer.get("config", {})):  # rewritten already
            continue
        nodes = layer.get("inbound_nodes") or []
        if len(nodes) != 1:
            raise ValueError(f"tf-keras node {layer.get('name')!r} is called {len(nodes)} "
                             "times; a shared TFOpLambda is not supported")
        _rewrite_node(layer, nodes[0], names)
        changed = True
    return changed
