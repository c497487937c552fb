"""SmoothQuant: move activation outliers of Dense inputs into the Dense weights.

For a Dense layer with input channels ``j`` the transform picks

    s_j = max|X_j|^alpha / max_o|W_jo|^(1 - alpha)

divides input channel ``j`` by ``s_j`` where it is produced, and multiplies kernel row ``j`` by
``s_j``: the float function is unchanged while the per-channel activation ranges become more
even (what per-tensor activations need) and the weights absorb part of the range.

The division happens in the layer that produces the channel: a Dense/Conv2D/DepthwiseConv2D/
Conv2DTranspose (kernel and bias), a BatchNormalization or a (Mad)LayerNormalization (gamma and
beta). Between that producer and the Dense only channel-wise, positively homogeneous layers
may sit (``f(x / s) = f(x) / s`` for ``s > 0``): ReLU without ``max_value``, LeakyReLU,
MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D/1D, Dropout; each must have the Dense as
its only reader. Dense layers without such a producer are left alone (reported).

Attention inputs: Dense layers that read the same tensor — the query/key/value projections
after a (Mad)LayerNormalization — form one group. They share one ``s_j``, computed with
``max_o |W_jo|`` over all their kernels, and each kernel's row ``j`` is multiplied by it; the
group is smoothed only when every reader of that tensor is one of its Dense layers (and all
of them are selected).

Example:
    >>> new_model, report = smooth_quant(model, samples, alpha=0.5)  # doctest: +SKIP
"""

from __future__ import annotations

import keras
import numpy as np

from fixedq.transforms.graph import Graph, GraphNode, build_model, read_graph

L = keras.layers
_PATH = (L.ReLU, L.LeakyReLU, L.MaxPooling2D, L.AveragePooling2D, L.GlobalAveragePooling2D,
         L.GlobalAveragePooling1D, L.Dropout)
_KERNEL = {"Dense": "Dense", "Conv2D": "Conv2D", "DepthwiseConv2D": "DepthwiseConv2D",
           "Conv2DTranspose": "Conv2DTranspose"}
_NORM = ("BatchNormalization", "LayerNormalization", "LayerMadNormalization")


def _producer(graph: Graph, dense: GraphNode) -> tuple[GraphNode | None, str, str]:
    """(producer to rescale, name of the tensor feeding the Dense, reason if none)."""
    refs = dense.refs
    if len(refs) != 1:
        return None, "", "not a single-input Dense"
    feed = refs[0].name
    node = graph.node(feed)
    while True:
        if node.is_input:
            return None, feed, "its input comes straight from the model input"
        name = node.cls.__name__
        if node.name == feed:  # the tensor itself may feed sibling Dense layers (q/k/v)
            if graph.is_output(feed) or any(r.cls is not L.Dense or len(r.refs) != 1
                                            for r in graph.consumers(feed)):
                return None, feed, f"{feed!r} has readers other than Dense layers"
        elif graph.sole_consumer(node.name) is None:
            return None, feed, f"{node.name!r} has other readers"
        if name in _KERNEL or name in _NORM:
            if name in _KERNEL and node.config.get("activation", "linear") not in (None,
                                                                                 "linear"):
                return None, feed, f"{node.name!r} has a fused activation"
            if name in _NORM and node.weight("gamma") is None:
                return None, feed, f"{node.name!r} has no gamma to rescale"
            return node, feed, ""
        if not isinstance(node.template, _PATH) and node.cls not in _PATH:
            return None, feed, f"{node.name!r} ({name}) is not channel-wise homogeneous"
        if node.cls is L.ReLU and (node.config.get("max_value") is not None
                                   or node.config.get("threshold")):
            return None, feed, f"{node.name!r} has a max_value or threshold"
        node = graph.node(node.refs[0].name)


def _set(node: GraphNode, name: str, value: np.ndarray) -> None:
    node.weights = [(k, value.astype(v.dtype) if k == name else v) for k, v in node.weights]


def _divide_outputs(node: GraphNode, s: np.ndarray) -> None:
    name = node.cls.__name__
    if name in _NORM:
        for w in ("gamma", "beta"):
            if node.weight(w) is not None:
                _set(node, w, node.weight(w) / s)
        return
    from fixedq.transforms.fold_batchnorm import scale_output_channels

    _set(node, "kernel", scale_output_channels(node.weight("kernel"), 1.0 / s, name))
    if node.weight("bias") is not None:
        _set(node, "bias", node.weight("bias") / s)


def smooth_quant(model: keras.Model, samples, alpha: float = 0.5, layers=None,
                 num_samples: int = 256, batch_size: int | None = None,
                 verbose: bool = False) -> tuple[keras.Model, list[str]]:
    """Return ``(new_model, report)``; ``layers`` limits the Dense layers (default: all).

    Raises:
        ValueError: ``alpha`` outside [0, 1], unknown layer names, bad samples.
    """
    from fixedq.models.calibrate import calibrate

    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    graph = read_graph(model)
    dense = [n for n in graph.nodes if n.cls is L.Dense]
    if layers is not None:
        names = {n.name for n in graph.nodes}
        unknown = sorted(set(layers) - names)
        if unknown:
            raise ValueError(f"smooth_quant: layers {unknown} are not in model {model.name!r}")
        dense = [n for n in dense if n.name in set(layers)]
    plan, report = [], []
    for node in dense:
        producer, feed, why = _producer(graph, node)
        if producer is None:
            report.append(f"{node.name}: skipped ({why})")
        else:
            plan.append((node, producer, feed))
    if not plan:
        return build_model(graph), report
    groups: dict[str, list] = {}  # feed tensor -> (producer, [Dense readers])
    for node, producer, feed in plan:
        groups.setdefault(feed, (producer, []))[1].append(node)
    for feed, (_, readers) in list(groups.items()):
        missing = [r.name for r in graph.consumers(feed) if r not in readers]
        if missing:  # a sibling was not selected: rescaling the feed would change it
            report.extend(f"{r.name}: skipped ({feed!r} also feeds unselected {missing})"
                          for r in readers)
            del groups[feed]
    if not groups:
        return build_model(graph), report
    stats = calibrate(model, samples, sorted(groups), num_samples, batch_size, 1, verbose)
    for feed, (producer, readers) in groups.items():
        act = np.maximum(np.abs(stats[feed].minimum), np.abs(stats[feed].maximum))
        kernels = [r.weight("kernel").astype(np.float64) for r in readers]
        wmax = np.max([np.abs(k).max(axis=1) for k in kernels], axis=0)
        ok = (act > 0) & (wmax > 0)
        s = np.ones_like(act)
        s[ok] = np.clip(act[ok] ** alpha / wmax[ok] ** (1 - alpha), 1e-5, 1e5)
        _divide_outputs(producer, s)
        for reader, kernel in zip(readers, kernels, strict=True):
            _set(reader, "kernel", kernel * s[:, None])
        spread = act[ok].max() / max(act[ok].min(), 1e-12) if ok.any() else 1.0
        new_act = act / s
        new_spread = new_act[ok].max() / max(new_act[ok].min(), 1e-12) if ok.any() else 1.0
        shared = f" (shared by {len(readers)} Dense layers)" if len(readers) > 1 else ""
        for reader in readers:
            report.append(f"{reader.name}: input channels rescaled in {producer.name!r}"
                          f"{shared}; channel range spread {spread:.3g} -> {new_spread:.3g}")
    return build_model(graph), report
