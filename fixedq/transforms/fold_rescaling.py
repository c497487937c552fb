"""Fold a ``Rescaling`` into the layer with weights that reads it (before quantization).

``y = W (s x + o) + b = (W s) x + (b + W o)``: the scale multiplies the kernel's input
channels and the offset moves into the bias. The offset part is exact only when no zero
padding is added (``valid`` convs, Dense): with ``same`` padding a padded zero would receive the
offset, so there only offset-free Rescaling layers are folded. Folding keeps the model input's
integers (e.g. 0..255 pixels) unchanged into the first layer instead of requantizing the
rescaled image to ``activation_bits``.

Example:
    >>> import keras
    >>> from fixedq.transforms.graph import read_graph
    >>> x = keras.Input((4, 4, 1), name="x")
    >>> y = keras.layers.Conv2D(2, 3, name="c")(keras.layers.Rescaling(1 / 255, name="r")(x))
    >>> g = read_graph(keras.Model(x, y)); fold_rescaling(g)
    ['r']
    >>> [n.name for n in g.nodes]
    ['x', 'c']
"""

from __future__ import annotations

import keras
import numpy as np

from fixedq.transforms.graph import Graph

L = keras.layers
#: Layers a Rescaling folds into, with the kernel axis of their input channels.
_INPUT_AXIS = {L.Conv2D: 2, L.DepthwiseConv2D: 2, L.Dense: 0}


def _fold(node, scale: np.ndarray, offset: np.ndarray) -> None:
    kernel = node.weight("kernel").astype(np.float64)
    axis = _INPUT_AXIS[node.cls]
    shape = [1] * kernel.ndim
    shape[axis] = kernel.shape[axis]
    # Sum over every axis but the output channel(s): conv (0, 1, 2), dense (0), depthwise (0, 1).
    reduce = (0, 1) if node.cls is L.DepthwiseConv2D else tuple(range(kernel.ndim - 1))
    moved = np.sum(kernel * offset.reshape(shape), axis=reduce).reshape(-1)
    bias = node.weight("bias")
    new_bias = moved if bias is None else bias.astype(np.float64) + moved
    # The quantized layer keeps the kernel in the original units (kernel_unit = scale) so that
    # QAT's optimizer steps are not ~1/scale (255x for 1/255) too large relative to the kernel;
    # its effective kernel float32(float64(kernel) * scale) is this folded kernel bit for bit.
    node.folded_input = (scale.astype(np.float64), node.weight("kernel"))
    node.weights = [("kernel", (kernel * scale.reshape(shape)).astype(np.float32)),
                    ("bias", new_bias.astype(np.float32))]
    node.config = {**node.config, "use_bias": True}


def fold_rescaling(graph: Graph) -> list[str]:
    """Rewrite ``graph`` in place; returns the names of the folded Rescaling layers."""
    folded = []
    for node in list(graph.nodes):
        if node.cls is not L.Rescaling:
            continue
        nxt = graph.sole_consumer(node.name)
        if nxt is None or nxt.cls not in _INPUT_AXIS or nxt.weight("kernel") is None:
            continue
        channels = int(graph.input_shape(node)[-1])
        scale = np.broadcast_to(np.asarray(node.config["scale"], np.float64), (channels,))
        offset = np.broadcast_to(np.asarray(node.config["offset"], np.float64), (channels,))
        if np.any(offset != 0) and nxt.config.get("padding", "valid") != "valid":
            continue
        _fold(nxt, scale, offset)
        graph.redirect(node.name, node.refs[0].name)
        graph.remove(node.name)
        folded.append(node.name)
    return folded
