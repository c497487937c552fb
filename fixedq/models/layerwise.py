"""Run a functional Keras model one operation at a time on fixed frames, on demand.

The layer-by-layer passes of ``quantize`` (weight rounding, bias correction) change layer ``i``
from its inputs as the model computes them *after* layers ``0..i-1`` were changed. Building a
prefix model per layer and running it on all frames costs ``O(layers^2)`` forward work and holds
every intermediate map of the prefix. :class:`LayerwiseRun` instead computes each operation
once, when a later request needs it (so it always uses the weights as they are at that moment),
and drops every tensor as soon as its last consumer has run: the work is one forward pass, the
memory the live tensors of the frames. The values are those of the model's own call on the
same frames (the same operations on the same inputs); ``chunk`` runs every operation on
sub-batches of frames to bound the memory of one operation.

Example:
    >>> import keras, numpy as np
    >>> x = keras.Input((3,))
    >>> hidden = keras.layers.Dense(4, name="a")
    >>> model = keras.Model(x, keras.layers.Dense(2, name="b")(hidden(x)))
    >>> run = LayerwiseRun(model, np.ones((5, 3), "float32"))
    >>> [tuple(c.shape) for c in run.value(model.get_layer("b").input)]
    [(5, 4)]
"""

from __future__ import annotations

import math
from collections import Counter

import keras
import numpy as np

#: Bytes one operation may touch per call (its input, output and temporaries, estimated as
#: :data:`BYTES_PER_ELEMENT` per element of the widest tensor of the model) before the frames
#: are split into sub-batches.
OP_BUDGET = 128 * 2**20
BYTES_PER_ELEMENT = 32


def _nodes(model: keras.Model) -> list:
    """The model's nodes (not its inputs), in the order the model runs them."""
    by_depth = getattr(model, "_nodes_by_depth", None)
    if by_depth is None:
        raise ValueError(f"layer-by-layer passes need a functional keras.Model, got "
                         f"{type(model).__name__}")
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]
            if node.operation is not None and not node.is_input]


def widest(model: keras.Model) -> int:
    """Elements per sample of the widest tensor of ``model`` (inputs and every node output).

    Example:
        >>> x = keras.Input((8, 8, 3))
        >>> widest(keras.Model(x, keras.layers.Conv2D(16, 3, padding="same")(x)))
        1024
    """
    sizes = [math.prod(d or 1 for d in t.shape[1:]) for t in model.inputs]
    for node in _nodes(model):
        sizes += [math.prod(d or 1 for d in t.shape[1:]) for t in node.outputs]
    return max(sizes)


def live_elements(model: keras.Model) -> int:
    """Peak elements per sample held while the model runs in order, each tensor dropped after
    its last consumer (what :class:`LayerwiseRun` holds when served in model order).

    Example:
        >>> x = keras.Input((8, 8, 3))
        >>> live_elements(keras.Model(x, keras.layers.Conv2D(16, 3, padding="same")(x)))
        1216
    """
    nodes = _nodes(model)
    uses = Counter(id(t) for node in nodes for t in node.input_tensors)
    live = {id(t): math.prod(d or 1 for d in t.shape[1:]) for t in model.inputs}
    peak = sum(live.values())
    for node in nodes:
        for t in node.outputs:
            live[id(t)] = math.prod(d or 1 for d in t.shape[1:])
        peak = max(peak, sum(live.values()))
        for t in node.input_tensors:
            uses[id(t)] -= 1
            if uses[id(t)] <= 0:
                live.pop(id(t), None)
    return peak


def chunk_for(model: keras.Model, frames: int, budget: int | None = None) -> int:
    """Frames per sub-batch so one operation stays within ``budget`` bytes (default
    :data:`OP_BUDGET`; all frames if they fit).

    Example:
        >>> x = keras.Input((112, 112, 96))
        >>> chunk_for(keras.Model(x, keras.layers.ReLU()(x)), 256)
        3
    """
    budget = OP_BUDGET if budget is None else budget
    per_frame = BYTES_PER_ELEMENT * widest(model)
    return max(1, min(int(frames), int(budget // per_frame)))


class LayerwiseRun:
    """Values of a functional model's tensors on ``frames``, computed on demand (see module).

    Args:
        model: a functional Keras model with one input.
        frames: the input samples (an array; kept as ``chunk``-sized sub-batches).
        chunk: frames per call of each operation (default: all at once).
    """

    def __init__(self, model: keras.Model, frames: np.ndarray, chunk: int | None = None):
        if len(model.inputs) != 1:
            raise ValueError(f"layer-by-layer passes support models with one input; "
                             f"{model.name!r} has {len(model.inputs)}")
        nodes = _nodes(model)
        self._producer = {id(t): node for node in nodes for t in node.outputs}
        self._uses = Counter(id(t) for node in nodes for t in node.input_tensors)
        chunk = len(frames) if chunk is None else max(1, int(chunk))
        frames = np.asarray(frames)
        self._values = {id(model.inputs[0]): [keras.ops.convert_to_tensor(frames[i:i + chunk])
                                              for i in range(0, len(frames), chunk)]}
        self._parts = len(self._values[id(model.inputs[0])])
        self._done: set[int] = set()
        self.model = model

    @property
    def held(self) -> int:
        """How many tensors are held now (each as its sub-batches)."""
        return len(self._values)

    def value(self, tensor) -> list:
        """The sub-batches of ``tensor`` (a KerasTensor of the model), computing what it needs.

        The tensor stays held until its last consumer in the model has run."""
        if id(tensor) in self._values:
            return self._values[id(tensor)]
        if id(tensor) not in self._producer:
            raise ValueError(f"tensor {tensor!r} is not computed by model {self.model.name!r}")
        stack = [self._producer[id(tensor)]]
        while stack:
            node = stack[-1]
            if id(node) in self._done:
                stack.pop()
                continue
            missing = [t for t in node.input_tensors if id(t) not in self._values]
            if missing:
                for t in missing:
                    producer = self._producer.get(id(t))
                    if producer is None or id(producer) in self._done:
                        raise RuntimeError(f"tensor {t!r} of model {self.model.name!r} was "
                                           "released before its last use")
                    stack.append(producer)
                continue
            self._run(node)
            stack.pop()
        return self._values[id(tensor)]

    def _run(self, node) -> None:
        inputs = node.input_tensors
        results = []
        for c in range(self._parts):
            args, kwargs = node.arguments.fill_in({id(t): self._values[id(t)][c]
                                                   for t in inputs})
            results.append(keras.tree.flatten(node.operation(*args, **kwargs)))
        self._done.add(id(node))
        for t in inputs:
            self._uses[id(t)] -= 1
            if self._uses[id(t)] <= 0:
                self._values.pop(id(t), None)
        for k, t in enumerate(node.outputs):
            self._values[id(t)] = [r[k] for r in results]
