"""``convert(qmodel)``: a quantized Keras model -> an integer engine :class:`Model`.

Every quantized layer becomes one op whose integer parameters come from the layer's own
``integer_params()`` (computed by the TF code the layer runs, so nothing is recomputed here).
A MaxPool2D that is the only consumer of a neural layer is fused into it (the neural layer
already carries its fused ReLU as clip bounds). This module imports Keras; the rest of
:mod:`fixedq.engine` does not.

Example:
    >>> import fixedq, fixedq.engine                                  # doctest: +SKIP
    >>> qmodel = fixedq.quantize(model, samples=x, verbose=False)     # doctest: +SKIP
    >>> engine = fixedq.engine.convert(qmodel, target="akida-2.0")    # doctest: +SKIP
    >>> np.array_equal(engine.predict(x), qmodel.predict(x))          # doctest: +SKIP
    True
"""

from __future__ import annotations

import keras
import numpy as np

from fixedq.engine.model import Model
from fixedq.engine.ops import Op
from fixedq.layers.quantizers import Dequantizer, InputQuantizer
from fixedq.ops import registry  # importing fixedq.ops registers every op
from fixedq.ops.common import i64
from fixedq.transforms.graph import read_graph

#: Every quantized layer class a converted model may hold: the registered ops' layers (those
#: with an engine op) and the Dequantizer that ends the model.
SUPPORTED = (*registry.quantized_classes(), Dequantizer)


def _dim(d) -> int | None:
    return None if d is None else int(d)


def _offset(spec, channels: int) -> np.ndarray | None:
    """Per-channel window start ``lo`` of an asymmetric tensor, else ``None``."""
    if spec is None or spec.lo is None:
        return None
    return i64(np.broadcast_to(spec.lo_array(), (channels,)))


def _check_structure(qmodel, graph) -> None:
    """Reject float, partly quantized and unsupported models with one precise error."""
    layers = {n.name: n for n in graph.nodes}
    if not any(n.cls is InputQuantizer for n in graph.nodes):
        raise ValueError(f"model {qmodel.name!r} is not quantized (no InputQuantizer); run "
                         "fixedq.quantize(model, qparams, samples) first and convert its result")
    problems = []
    consumers: dict[str, list[str]] = {}
    for node in graph.nodes:
        for ref in node.refs:
            consumers.setdefault(ref.name, []).append(node.name)
    for node in graph.nodes:
        if node.is_input:
            bad = [c for c in consumers.get(node.name, []) if layers[c].cls is not InputQuantizer]
            if bad:
                problems.append(f"input {node.name!r} feeds non-quantized layers {bad}")
            continue
        if node.cls is Dequantizer:
            after = consumers.get(node.name, [])
            if after:
                problems.append(f"Dequantizer {node.name!r} is followed by float layers {after} "
                                "(the model is only partly quantized)")
            continue
        if node.cls not in SUPPORTED:
            problems.append(f"layer {node.name!r} ({node.cls.__name__}) is not a fixedq "
                            "quantized layer")
    outputs = [r.name for r in graph.outputs]
    for name in outputs:
        if layers[name].cls is not Dequantizer:
            problems.append(f"model output {name!r} ({layers[name].cls.__name__}) does not end "
                            "with a Dequantizer")
    if problems:
        raise ValueError(f"cannot convert model {qmodel.name!r} to the integer engine:\n  - "
                         + "\n  - ".join(problems))


def _owner(layer, node):
    """The registered op (:class:`fixedq.ops.OpSpec`) that converts quantized ``layer``."""
    spec = registry.for_layer(layer)
    if spec is None or spec.to_engine is None:
        raise ValueError(f"layer {node.name!r} ({type(layer).__name__}) has no engine op")
    return spec


def _fold_offsets(ops: list[Op], owners: dict, offsets: dict[str, np.ndarray],
                  outputs: list[dict]) -> None:
    """Asymmetric tensors travel as ``u = v - lo`` (eq. 37). An op whose registered op folds
    an offset (``OpSpec.fold_input_offset``; neural ops: into the bias) takes its first
    input's ``lo`` that way; other inputs get ``in_offset<i>`` (``v = u + lo`` before the op
    runs); producers get ``out_offset``; model outputs get ``offset``."""
    for op in ops:
        if op.name in offsets:
            op.arrays["out_offset"] = offsets[op.name]
        fold = owners[op.name].fold_input_offset
        for i, t in enumerate(op.inputs):
            lo = offsets.get(t)
            if lo is None:
                continue
            if fold is not None and i == 0:
                fold(op, lo)
            else:
                op.arrays[f"in_offset{i}"] = lo
    for out in outputs:
        if out["tensor"] in offsets:
            out["offset"] = offsets[out["tensor"]].tolist()


def _fuse(ops: list[Op], owners: dict, outputs: list[dict]) -> list[Op]:
    """Fold an op into the op before it when the registered producer ``absorbs`` it (a
    MaxPool2D into a conv-type neural op) and it is that op's only consumer; the absorbed
    op's ``epilogue`` gives the attrs it adds (once: an op absorbs at most one epilogue)."""
    consumers: dict[str, int] = {}
    for op in ops:
        for t in op.inputs:
            consumers[t] = consumers.get(t, 0) + 1
    out_tensors = {o["tensor"] for o in outputs}
    result: list[Op] = []
    where: dict[str, int] = {}
    fused: set[str] = set()
    for op in ops:
        spec = owners[op.name]
        prev = result[where[op.inputs[0]]] if op.inputs and op.inputs[0] in where else None
        if (prev is not None and spec.name in owners[prev.name].absorbs
                and spec.epilogue is not None and prev.name not in fused
                and consumers[prev.name] == 1 and prev.name not in out_tensors):
            attrs = {**prev.attrs, **spec.epilogue(op), "layers": prev.layers + [op.name]}
            merged = Op(op.name, prev.kind, prev.inputs, attrs, prev.arrays)
            owners[op.name] = owners[prev.name]
            fused.add(op.name)
            index = where.pop(prev.name)
            result[index] = merged
            where[op.name] = index
            continue
        where[op.name] = len(result)
        result.append(op)
    return result


def convert(qmodel, target=None, fuse: bool = True) -> Model:
    """Convert a fixedq-quantized Keras model into an integer engine :class:`Model`.

    Args:
        qmodel: a model returned by :func:`fixedq.quantize` (or loaded from its ``.keras``).
        target: ``None``, a profile name (see :data:`fixedq.engine.targets.TARGETS`) or a
            :class:`~fixedq.engine.targets.Target`; the model is checked against it.
        fuse: fold ops into the op before them where the registry says so (max-pooling into
            a conv-type neural op).

    Raises:
        TypeError: ``qmodel`` is not a Keras model.
        ValueError: float or partly quantized model, unsupported layer, or target violations
            (one error listing every offending layer).

    Example:
        >>> engine = convert(qmodel)                # doctest: +SKIP
    """
    if not isinstance(qmodel, keras.Model):
        raise TypeError(f"convert expects a quantized keras.Model, got "
                        f"{type(qmodel).__module__}.{type(qmodel).__name__}")
    graph = read_graph(qmodel)
    _check_structure(qmodel, graph)
    if len(graph.inputs) != 1:
        raise ValueError(f"the engine supports one model input; {qmodel.name!r} has "
                         f"{len(graph.inputs)}")
    specs: dict = {}
    alias: dict[str, str] = {}  # Dequantizer / InputLayer name -> tensor it exposes
    ops: list[Op] = []
    offsets: dict[str, np.ndarray] = {}  # asymmetric tensors -> per-channel lo
    owners: dict = {}  # op name -> the registered op (OpSpec) that made it
    input_node = None
    for node in graph.nodes:
        layer = qmodel.get_layer(node.name)
        if node.is_input:
            input_node = node
            continue
        ins = [alias.get(r.name, r.name) for r in node.refs]
        if isinstance(layer, Dequantizer):
            alias[node.name] = ins[0]
            continue
        channels = int(node.output_shapes[0][-1])
        owners[node.name] = _owner(layer, node)
        op = owners[node.name].to_engine(layer, node, ins, specs, channels)
        if op.kind == "neural":
            # None for a dynamic dimension: the integer ops run at any size
            op.attrs["linear_shape"] = [_dim(d) for d in node.output_shapes[0][1:]]
            op.attrs["in_shape"] = [_dim(d) for d in graph.input_shape(node)[1:]]
        specs[node.name] = layer.output_spec
        lo = _offset(layer.output_spec, channels)
        if lo is not None:
            offsets[node.name] = lo
        ops.append(op)
    outputs = []
    for ref in graph.outputs:
        tensor = alias[ref.name]
        frac = specs[tensor].frac_array(int(graph.node(ref.name).output_shapes[0][-1]))
        outputs.append({"tensor": tensor, "frac": frac.tolist(), "name": ref.name})
    _fold_offsets(ops, owners, offsets, outputs)
    if fuse:
        ops = _fuse(ops, owners, outputs)
    input_shape = tuple(input_node.output_shapes[0])
    from fixedq.engine.streaming import as_streaming  # stateful ops: a StreamingModel

    model = as_streaming(Model(ops, outputs, input_shape, input_node.dtype, qmodel.name,
                               meta={"keras_version": keras.__version__}))
    if target is not None:
        from fixedq.engine.targets import check_target

        model.target = check_target(model, target).name
    return model
