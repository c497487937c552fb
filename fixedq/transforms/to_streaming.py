"""``to_streaming(model)``: a model trained on clips ``(N, T, H, W, C)`` -> the streaming model
over frames ``(N, H, W, C)`` that gives, after ``t`` frames, the clip model's output at time
``t``, with the weights carried over.

Each layer of the clip model becomes its per-frame equivalent:

==========================================  ==================================================
clip model                                  streaming model
==========================================  ==================================================
``ZeroPadding3D(((p, 0), sp_h, sp_w))``     dropped (the FIFO holds the past); a spatial pad
                                            becomes ``ZeroPadding2D((sp_h, sp_w))``
``Conv3D`` kernel ``(k, 1, 1)``, valid,     ``BufferTempConv(filters, k)``
after a causal pad of ``k - 1``             (``DepthwiseBufferTempConv`` when ``groups`` = C)
``PleiadesLayer`` ``(k, 1, 1)``, ditto      ``BufferTempConv`` with the polynomial kernel
``Conv3D`` kernel ``(1, kh, kw)``           ``Conv2D`` ``(kh, kw)`` (strides, padding kept)
``AveragePooling3D``/``MaxPooling3D``       ``AveragePooling2D``/``MaxPooling2D``
``(1, ph, pw)``
``TimeDistributed(layer)``                  ``layer``
``StatefulRecurrent(clip=True)``            ``StatefulRecurrent()`` (state between frames)
``BatchNormalization`` over channels        the same (axis renumbered)
Dense, ReLU, activations, Dropout,          the same (they act per frame on the last axis)
Add, Multiply, Concatenate (last axis)
==========================================  ==================================================

Anything that looks across time in another way is refused with a ``ValueError`` naming the
layer: non-causal temporal padding (``'same'`` or a pad after the clip), a temporal kernel
with a spatial extent, on a non-leading axis or with a temporal stride/dilation, pooling or
normalization over time, and layers this transform does not know.

Example:
    >>> import keras
    >>> x = keras.Input((4, 3, 3, 2))
    >>> y = keras.layers.ZeroPadding3D(((2, 0), (0, 0), (0, 0)))(x)
    >>> y = keras.layers.Conv3D(5, (3, 1, 1), name="temporal")(y)
    >>> stream = to_streaming(keras.Model(x, y))
    >>> stream.input_shape, type(stream.get_layer("temporal")).__name__
    ((None, 3, 3, 2), 'BufferTempConv')
"""

from __future__ import annotations

import keras
import numpy as np

from fixedq.layers.temporal import (
    BufferTempConv,
    DepthwiseBufferTempConv,
    PleiadesLayer,
    StatefulRecurrent,
)
from fixedq.transforms.graph import GraphNode, Ref, build_model, read_graph

L = keras.layers

#: Layers that act on each frame independently along the last axis: kept as they are.
PER_FRAME = (L.Dense, L.ReLU, L.Activation, L.Dropout, L.LeakyReLU, L.ELU, L.PReLU, L.Softmax,
             L.Add, L.Multiply, L.Subtract, L.Average, L.Maximum, L.Minimum, L.Rescaling,
             L.LayerNormalization, L.Concatenate, L.BatchNormalization, L.SpatialDropout3D)


#: Layers that, applied to a clip, treat its time axis (axis 1) as a spatial axis.
TIME_AS_SPACE = (L.Conv1D, L.Conv2D, L.DepthwiseConv1D, L.DepthwiseConv2D, L.SeparableConv1D,
                 L.SeparableConv2D, L.Conv1DTranspose, L.Conv2DTranspose, L.MaxPooling1D,
                 L.MaxPooling2D, L.AveragePooling1D, L.AveragePooling2D,
                 L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalMaxPooling1D,
                 L.GlobalMaxPooling2D, L.ZeroPadding1D, L.ZeroPadding2D, L.Cropping1D,
                 L.Cropping2D, L.UpSampling1D, L.UpSampling2D)
#: Layers that move or merge the time axis.
TIME_MOVERS = (L.Flatten, L.Reshape, L.Permute, L.RepeatVector, L.Cropping3D, L.UpSampling3D)


def _fail(node: GraphNode, why: str):
    raise ValueError(f"to_streaming: layer {node.name!r} ({node.cls.__name__}) {why}")


def _frame_shape(shape) -> tuple:
    return (shape[0], *shape[2:])


def _last_axis(node: GraphNode, rank: int, key: str = "axis") -> None:
    """A layer's ``axis`` must be the channel axis (the clip's last); renumber it for frames."""
    axis = node.config.get(key, -1)
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    if any(a % rank != rank - 1 for a in axes):
        _fail(node, f"works over axis {axis} of clips of rank {rank}; only the channel "
              f"(last) axis can stream" + (" (normalization over time)" if 1 in
                                          [a % rank for a in axes] else ""))
    node.config[key] = [-1] if isinstance(axis, (list, tuple)) else -1


def _temporal(node: GraphNode, pads: dict, kernel: np.ndarray, bias, groups: int):
    """A ``(k, 1, 1)`` temporal conv after a causal pad of ``k - 1`` -> a buffer conv."""
    cfg, k = node.config, kernel.shape[0]
    if kernel.shape[1:3] != (1, 1):
        _fail(node, f"has kernel {tuple(kernel.shape[:3])}: a temporal kernel must be (k, 1, 1) "
              "(factor a spatio-temporal kernel into (k, 1, 1) and (1, kh, kw))")
    if tuple(cfg.get("strides", (1, 1, 1)))[0] != 1 or \
            tuple(cfg.get("dilation_rate", (1, 1, 1)))[0] != 1:
        _fail(node, "has a temporal stride or dilation (one output frame per input frame is "
              "needed)")
    if cfg.get("padding", "valid") != "valid":
        _fail(node, f"uses padding {cfg['padding']!r} over time: not causal (pad with "
              f"ZeroPadding3D((({k - 1}, 0), (0, 0), (0, 0))) and use 'valid')")
    got = pads.get(node.name)
    if got != k - 1:
        _fail(node, f"has temporal kernel {k} but its input is padded by {got or 0} past "
              f"frames; a causal temporal conv needs ZeroPadding3D((({k - 1}, 0), ...)) right "
              "before it")
    use_bias = bias is not None
    c_in, f = kernel.shape[3], kernel.shape[4]
    if groups == 1:
        layer = BufferTempConv(int(f), int(k), use_bias=use_bias, name=node.name)
        weights = [kernel[:, 0, 0]]
    elif c_in == 1 and groups == f:
        layer = DepthwiseBufferTempConv(int(k), use_bias=use_bias, name=node.name)
        weights = [kernel[:, 0, 0, 0]]
    else:
        _fail(node, f"has groups={groups}: only 1 or one group per channel (depthwise)")
    node.cls, node.config = type(layer), layer.get_config()
    node.weights = [("kernel", w.astype("float32")) for w in weights]
    if use_bias:
        node.weights.append(("bias", np.asarray(bias, "float32")))


def _conv3d(node: GraphNode, pads: dict) -> None:
    cfg = node.config
    kernel, bias = node.weight("kernel"), node.weight("bias") if cfg.get("use_bias") else None
    if cfg.get("activation", "linear") not in ("linear", None):
        _fail(node, f"has a fused activation {cfg['activation']!r}: use a separate activation "
              "layer")
    if kernel.shape[0] > 1:
        _temporal(node, pads, kernel, bias, int(cfg.get("groups", 1)))
        return
    if cfg.get("groups", 1) != 1:
        _fail(node, f"is a spatial conv with groups={cfg['groups']} (only 1)")
    new = {"name": node.name, "filters": cfg["filters"], "kernel_size": tuple(kernel.shape[1:3]),
           "strides": tuple(cfg["strides"])[1:], "padding": cfg["padding"],
           "dilation_rate": tuple(cfg["dilation_rate"])[1:], "use_bias": cfg["use_bias"],
           "dtype": cfg.get("dtype")}
    if tuple(cfg["strides"])[0] != 1:
        _fail(node, f"has temporal stride {cfg['strides'][0]} (one frame out per frame in)")
    node.cls, node.config = L.Conv2D, new
    node.weights = [("kernel", kernel[0])] + ([("bias", bias)] if bias is not None else [])


def _pleiades(node: GraphNode, pads: dict) -> None:
    cfg = node.config
    basis = PleiadesLayer(cfg["filters"], cfg["kernel_size"], cfg["degrees"], cfg["alpha"],
                          cfg["beta"]).basis.astype(np.float64)
    coeff = node.weight("coefficients").astype(np.float64)
    kernel = np.tensordot(basis, coeff, axes=1).astype("float32")
    _temporal(node, pads, kernel, node.weight("bias") if cfg.get("use_bias") else None, 1)


def _padding(node: GraphNode, pads: dict, src: Ref, graph) -> bool:
    """Record the causal temporal pad its readers see; returns whether the node is dropped."""
    (t0, t1), hpad, wpad = (tuple(p) for p in node.config["padding"])
    if t1 != 0:
        _fail(node, f"pads the time axis by {(t0, t1)}: padding after the clip is not causal")
    for user in graph.consumers(node.name):
        pads[user.name] = t0 + pads.get(node.name, 0)
    if any(hpad) or any(wpad):  # spatial padding stays, as a ZeroPadding2D
        node.cls = L.ZeroPadding2D
        node.config = {"name": node.name, "padding": (hpad, wpad), "dtype": node.config.get(
            "dtype")}
        return False
    graph.redirect(node.name, src.name)
    return True


def _pooling(node: GraphNode, cls) -> None:
    cfg = node.config
    pool = tuple(cfg["pool_size"])
    strides = tuple(cfg.get("strides") or pool)
    if pool[0] != 1 or strides[0] != 1:
        _fail(node, f"pools over time (pool_size {pool}, strides {strides}); only (1, ph, pw)")
    node.cls = cls
    node.config = {"name": node.name, "pool_size": pool[1:], "strides": strides[1:],
                   "padding": cfg.get("padding", "valid"), "dtype": cfg.get("dtype")}


def _time_distributed(node: GraphNode) -> None:
    inner = node.config["layer"]
    layer = keras.saving.deserialize_keras_object(inner)
    node.cls = type(layer)
    node.config = {**layer.get_config(), "name": node.name}
    node.kwargs = {k: v for k, v in node.kwargs.items() if k == "training"}


def to_streaming(model: keras.Model) -> keras.Model:
    """The streaming (frame by frame) model of a clip model; the input model is not changed.

    Args:
        model: a functional/Sequential Keras model over clips ``(N, T, ..., C)`` (``T`` may
            be free).

    Returns:
        A model over frames ``(N, ..., C)`` whose temporal layers keep explicit state (run it
        over clips with :func:`fixedq.models.predict_clips`).

    Raises:
        ValueError: a layer that cannot stream (named), or inputs that are not clips.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"to_streaming expects a keras.Model, got {type(model).__name__}")
    graph = read_graph(model)
    for ref in graph.inputs:
        shape = graph.node(ref.name).output_shapes[0]
        if len(shape) < 3:
            raise ValueError(f"to_streaming: input {ref.name!r} has shape {tuple(shape)}; a "
                             "clip model takes clips (N, T, ..., C) (e.g. (N, T, H, W, C))")
    pads: dict[str, int] = {}
    for node in graph:
        src = node.refs[0] if node.refs else None
        rank = len(node.output_shapes[0]) if node.output_shapes else 0
        if node.is_input:
            pass
        elif node.cls is L.ZeroPadding3D:
            if _padding(node, pads, src, graph):
                graph.remove(node.name)
                continue
        elif node.cls is L.Conv3D:
            _conv3d(node, pads)
        elif node.cls is PleiadesLayer:
            _pleiades(node, pads)
        elif node.cls in (L.AveragePooling3D, L.MaxPooling3D):
            _pooling(node, L.AveragePooling2D if node.cls is L.AveragePooling3D
                     else L.MaxPooling2D)
        elif node.cls is L.TimeDistributed:
            _time_distributed(node)
        elif node.cls is StatefulRecurrent:
            if not node.config.get("clip"):
                _fail(node, "is already a streaming layer (clip=False) inside a clip model")
            node.config = {**node.config, "clip": False}
        elif node.cls in (L.BatchNormalization, L.LayerNormalization, L.Softmax,
                          L.Concatenate):
            _last_axis(node, rank)
        elif node.cls in PER_FRAME:
            if node.cls is L.SpatialDropout3D:
                node.cls, node.config = L.Dropout, {"name": node.name,
                                                    "rate": node.config["rate"]}
        elif node.cls in TIME_AS_SPACE:
            _fail(node, "would run its kernel over the time axis (axis 1 of the clip, a "
                  "non-leading axis for it): wrap per-frame layers in TimeDistributed, and "
                  "convolve time with a causal (k, 1, 1) Conv3D")
        elif node.cls in TIME_MOVERS:
            _fail(node, "moves or merges the time axis (axis 1); wrap per-frame reshapes in "
                  "TimeDistributed")
        else:
            _fail(node, "is not supported by to_streaming (known: Conv3D, PleiadesLayer, "
                  "ZeroPadding3D, 3-D pooling over space, TimeDistributed, StatefulRecurrent "
                  "and per-frame layers)")
        if pads.get(node.name) and node.cls not in (L.ZeroPadding2D, BufferTempConv,
                                                     DepthwiseBufferTempConv):
            _fail(node, f"reads a time-padded tensor ({pads[node.name]} past frames) but is not "
                  "a temporal conv")
        node.output_shapes = [_frame_shape(s) for s in node.output_shapes]
    return build_model(graph)
