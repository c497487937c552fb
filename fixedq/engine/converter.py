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
from fixedq.ops.common import i64 as _i64
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
    return _i64(np.broadcast_to(spec.lo_array(), (channels,)))


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


def _layer_op(layer, node, ins: list[str], specs: dict, channels: int) -> Op:
    """The engine op of one (non-Dequantizer) quantized layer, made by its registered op."""
    spec = registry.for_layer(layer)
    if spec is None or spec.to_engine is None:
        raise ValueError(f"layer {node.name!r} ({type(layer).__name__}) has no engine op")
    return spec.to_engine(layer, node, ins, specs, channels)


def _fold_offsets(ops: list[Op], offsets: dict[str, np.ndarray], outputs: list[dict]) -> None:
    """Asymmetric tensors travel as ``u = v - lo`` (eq. 37). A neural op reading one folds
    ``sum w * lo`` into its bias: computed exactly with the reference linear op on a constant
    ``lo`` image, it is a per-channel vector, or a (Ho, Wo, Cout) bias map where zero padding
    makes border outputs see fewer taps. Other ops get ``in_offset<i>`` (``v = u + lo`` before
    they run); producers get ``out_offset``; model outputs get ``offset``."""
    from fixedq.engine.ops import aligned_input, linear

    for op in ops:
        if op.name in offsets:
            op.arrays["out_offset"] = offsets[op.name]
        for i, t in enumerate(op.inputs):
            lo = offsets.get(t)
            if lo is None:
                continue
            if op.kind == "neural" and i == 0:
                dynamic = None in op.attrs["in_shape"]
                shape = (1, *_fold_shape(op)) if dynamic else (1, *op.attrs["in_shape"])
                x_lo = np.broadcast_to(lo, shape).astype(np.int64)
                fold = linear(op, aligned_input(op, x_lo))[0]
                flat = fold.reshape(-1, fold.shape[-1])
                bias = op.arrays["bias"]
                if np.all(flat == flat[0]):
                    op.arrays["bias"] = _i64(bias + flat[0])
                elif dynamic:
                    raise ValueError(
                        f"layer {op.name!r} reads an asymmetric tensor through zero padding "
                        f"and its input size {tuple(op.attrs['in_shape'])} is dynamic: the "
                        "folded offset depends on the size. Quantize a model with a fixed "
                        "input shape, e.g. keras.Input((224, 224, 3))")
                else:
                    op.arrays["bias"] = _i64(bias + fold)
            else:
                op.arrays[f"in_offset{i}"] = lo
    for out in outputs:
        if out["tensor"] in offsets:
            out["offset"] = offsets[out["tensor"]].tolist()


def _fold_shape(op: Op) -> list[int]:
    """A stand-in size for the dynamic dimensions of a neural op's input: large enough for
    interior outputs (a constant fold there and at the borders means a size-free fold)."""
    a = op.attrs
    k = op.arrays["kernel"].shape
    extent = [(k[i] - 1) * a.get("dilation_rate", [1, 1])[i] + 1 for i in range(2)] \
        if a["type"] != "dense" else [1, 1]
    dims = list(op.attrs["in_shape"])
    spatial = range(len(dims) - 1)
    first = 1 if a.get("conv1d") else 0  # a Conv1D's steps are the conv2d's width
    return [3 * extent[min(i + first, 1)] + 2 * max(a.get("strides", [1, 1])) if dims[i] is None
            else dims[i] for i in spatial] + [dims[-1]]


def _fuse_pools(ops: list[Op], outputs: list[dict]) -> list[Op]:
    """Fold a MaxPool2D into the neural op before it when it is that op's only consumer."""
    consumers: dict[str, int] = {}
    for op in ops:
        for t in op.inputs:
            consumers[t] = consumers.get(t, 0) + 1
    out_tensors = {o["tensor"] for o in outputs}
    result: list[Op] = []
    where: dict[str, int] = {}
    for op in ops:
        prev = result[where[op.inputs[0]]] if op.kind == "maxpool" else None
        if (prev is not None and prev.kind == "neural" and prev.attrs["type"] != "dense"
                and not prev.attrs.get("pool") and consumers[prev.name] == 1
                and prev.name not in out_tensors):
            attrs = dict(prev.attrs)
            attrs["layers"] = prev.layers + [op.name]
            attrs["pool"] = {k: op.attrs[k] for k in ("pool_size", "strides", "padding")}
            merged = Op(op.name, "neural", prev.inputs, attrs, prev.arrays)
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
        fuse: fold max-pooling into the neural op before it.

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
        op = _layer_op(layer, node, ins, specs, channels)
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
    _fold_offsets(ops, offsets, outputs)
    if fuse:
        ops = _fuse_pools(ops, outputs)
    input_shape = tuple(input_node.output_shapes[0])
    from fixedq.engine.streaming import as_streaming  # stateful ops: a StreamingModel

    model = as_streaming(Model(ops, outputs, input_shape, input_node.dtype, qmodel.name,
                               meta={"keras_version": keras.__version__}))
    if target is not None:
        from fixedq.engine.targets import check_target

        model.target = check_target(model, target).name
    return model
