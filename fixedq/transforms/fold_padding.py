"""Rewrite 3: merge ``ZeroPadding2D`` + ``padding="valid"`` convolution into one ``"same"`` conv.

TensorFlow's ``"same"`` padding pads each spatial axis of length ``n`` by
``total = max((ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)`` zeros, ``total // 2`` before and
the rest after (the extra zero of an odd total goes to the bottom/right). When the explicit
``ZeroPadding2D`` amounts are exactly those, the pair computes the same thing as the conv alone
with ``padding="same"``. With stride 1 the total is ``(k - 1) * d`` whatever ``n`` is, so
unknown spatial sizes are fine; with a larger stride the size must be known.

Applies to ``Conv2D``, ``DepthwiseConv2D`` and ``SeparableConv2D`` in the same data format as the
padding layer. A padding layer that feeds other layers too is kept for them.

Example:
    >>> pads_same(8, kernel=3, stride=2, dilation=1)
    (0, 1)
    >>> pads_same(8, kernel=3, stride=1, dilation=1)
    (1, 1)
"""

from __future__ import annotations

import keras

from fixedq.transforms.graph import Graph, Ref
from fixedq.transforms.report import Change

__all__ = ["fold_padding", "pads_same"]

NAME = "fold_padding"


def pads_same(size: int | None, kernel: int, stride: int, dilation: int) -> tuple[int, int] | None:
    """(before, after) zeros TensorFlow's ``"same"`` adds on one axis; ``None`` if unknowable."""
    effective = (kernel - 1) * dilation + 1
    if size is None:
        if stride != 1:
            return None
        total = effective - 1
    else:
        out = -(-size // stride)
        total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _padding_amounts(config: dict) -> tuple[tuple[int, int], tuple[int, int]]:
    pad = config["padding"]
    if isinstance(pad, int):
        return (pad, pad), (pad, pad)
    first, second = pad
    return _pair(first), _pair(second)


def _format(config: dict) -> str:
    return config.get("data_format") or keras.config.image_data_format()


def fold_padding(graph: Graph) -> list[Change]:
    """Merge exactly-equivalent ``ZeroPadding2D`` + valid convs in ``graph`` (in place)."""
    convs = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
    changes = []
    for pad in graph:
        if pad.cls is not keras.layers.ZeroPadding2D:
            continue
        data_format = _format(pad.config)
        shape = graph.input_shape(pad)
        if shape is None or len(shape) != 4:
            continue
        spatial = shape[1:3] if data_format == "channels_last" else shape[2:4]
        wanted = _padding_amounts(pad.config)
        for conv in graph.consumers(pad.name):
            config = conv.config
            if (
                conv.cls not in convs
                or len(conv.refs) != 1
                or str(config.get("padding", "")).lower() != "valid"
                or _format(config) != data_format
            ):
                continue
            kernel = _pair(config["kernel_size"])
            strides = _pair(config["strides"])
            dilation = _pair(config.get("dilation_rate", 1))
            same = tuple(
                pads_same(spatial[i], kernel[i], strides[i], dilation[i]) for i in range(2)
            )
            if same != wanted:
                continue
            conv.config = {**config, "padding": "same"}
            conv.args = (Ref(pad.refs[0].name, pad.refs[0].index),)
            changes.append(
                Change(NAME, (pad.name, conv.name), f"padding {wanted} merged as padding='same'")
            )
        if not graph.consumers(pad.name) and not graph.is_output(pad.name):
            graph.remove(pad.name)
    return changes
