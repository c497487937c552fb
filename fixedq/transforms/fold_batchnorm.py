"""Rewrite 4: fold an inference-mode ``BatchNormalization`` into the layer before it.

At inference BN computes ``y = a * x + c`` per channel with ``a = gamma / sqrt(var + eps)`` and
``c = beta - a * mean`` (``gamma = 1`` when ``scale=False``, ``beta = 0`` when ``center=False``).
If ``x = W * input + b`` comes straight from a weighted layer, then ``y = (a W) * input +
(a b + c)``: the kernel is scaled per output channel and the layer gets a bias if it had none.
The output channel sits on a different kernel axis per layer type:

============================  ===========================  =================================
layer                         kernel shape                 output channel
============================  ===========================  =================================
Dense                         (in, out)                    axis -1
Conv2D                        (kh, kw, in/groups, out)     axis -1
Conv1D                        (k, in/groups, out)          axis -1
Conv2DTranspose               (kh, kw, out, in)            axis 2
DepthwiseConv2D               (kh, kw, in, mult)           ``in_index * mult + m`` (axes 2, 3)
SeparableConv2D               pointwise (1, 1, in*m, out)  axis -1 of the pointwise kernel
DepthwiseConv2DTranspose      (kh, kw, channels, 1)        axes 2, 3 (as DepthwiseConv2D)
============================  ===========================  =================================

Conditions: BN normalizes the last axis (``axis=-1``), reads only that layer, is that layer's
only reader, the layer has no fused activation (run :mod:`split_activations` first) and uses
``channels_last``. Anything else is left unchanged.

Example:
    >>> import numpy as np
    >>> kernel = np.ones((2, 3), "float32")
    >>> scale_output_channels(kernel, np.array([1.0, 2.0, 3.0]), "Dense").tolist()
    [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]
"""

from __future__ import annotations

import keras
import numpy as np

from fixedq.transforms.graph import Graph
from fixedq.transforms.report import Change
from fixedq.transforms.split_activations import is_linear_activation, weighted_layer_classes

__all__ = ["fold_batchnorm", "scale_output_channels"]

NAME = "fold_batchnorm"

# class name -> possible names of the kernel that carries the output channels (Keras versions
# differ: DepthwiseConv2D's variable is "kernel" in recent Keras 3, "depthwise_kernel" before)
_KERNEL = {
    "Dense": ("kernel",),
    "Conv2D": ("kernel",),
    "Conv1D": ("kernel",),
    "Conv2DTranspose": ("kernel",),
    "DepthwiseConv2D": ("kernel", "depthwise_kernel"),
    "SeparableConv2D": ("pointwise_kernel",),
    "DepthwiseConv2DTranspose": ("kernel",),
}


def scale_output_channels(kernel: np.ndarray, scale: np.ndarray, kind: str) -> np.ndarray:
    """``kernel`` with output channel ``j`` multiplied by ``scale[j]`` (float64 result).

    ``kind`` is the layer class name (see the table in the module docstring).
    """
    kernel = kernel.astype(np.float64)
    if kind == "Conv2DTranspose":
        return kernel * scale.reshape(1, 1, -1, 1)
    if kind in ("DepthwiseConv2D", "DepthwiseConv2DTranspose"):
        channels, mult = kernel.shape[2], kernel.shape[3]
        return kernel * scale.reshape(1, 1, channels, mult)
    return kernel * scale


def _bn_affine(bn) -> tuple[np.ndarray, np.ndarray] | None:
    mean = bn.weight("moving_mean")
    var = bn.weight("moving_variance")
    if mean is None or var is None:
        return None
    mean, var = mean.astype(np.float64), var.astype(np.float64)
    gamma = bn.weight("gamma") if bn.config.get("scale", True) else None
    beta = bn.weight("beta") if bn.config.get("center", True) else None
    gamma = np.ones_like(mean) if gamma is None else gamma.astype(np.float64)
    beta = np.zeros_like(mean) if beta is None else beta.astype(np.float64)
    scale = gamma / np.sqrt(var + float(bn.config.get("epsilon", 1e-3)))
    return scale, beta - scale * mean


def _foldable(graph: Graph, bn) -> bool:
    config = bn.config
    if config.get("renorm") or len(bn.refs) != 1 or not bn.plain_call:
        return False
    axis = config.get("axis", -1)
    if isinstance(axis, list | tuple):
        if len(axis) != 1:
            return False
        axis = axis[0]
    rank = len(bn.output_shapes[0])
    return axis in (-1, rank - 1)


def fold_batchnorm(graph: Graph) -> list[Change]:
    """Fold every foldable ``BatchNormalization`` in ``graph`` into its producer (in place)."""
    classes = weighted_layer_classes()
    changes = []
    for bn in graph:
        if bn.cls is not keras.layers.BatchNormalization or not _foldable(graph, bn):
            continue
        ref = bn.refs[0]
        layer = graph.node(ref.name)
        kind = layer.cls.__name__
        if (
            layer.cls not in classes
            or kind not in _KERNEL
            or graph.sole_consumer(layer.name) is not bn
            or not is_linear_activation(layer.config.get("activation"))
            or (layer.config.get("data_format") or "channels_last") != "channels_last"
        ):
            continue
        affine = _bn_affine(bn)
        if affine is None:
            continue
        scale, shift = affine
        weights = dict(layer.weights)
        kernel_name = next((k for k in _KERNEL[kind] if k in weights), None)
        if kernel_name is None:
            continue
        kernel = weights[kernel_name]
        folded = scale_output_channels(kernel, scale, kind)
        bias = weights.get("bias")
        bias = np.zeros_like(scale) if bias is None else bias.astype(np.float64)
        if bias.shape != scale.shape:
            continue
        weights[kernel_name] = folded.astype(kernel.dtype)
        weights["bias"] = (scale * bias + shift).astype(kernel.dtype)
        layer.weights = list(weights.items())  # bias is always the last variable
        layer.config = {**layer.config, "use_bias": True}
        graph.redirect(bn.name, layer.name)
        graph.remove(bn.name)
        changes.append(Change(NAME, (layer.name, bn.name), f"{bn.name} folded into {kind}"))
    return changes
