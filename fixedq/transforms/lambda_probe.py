"""Identify what an opaque ``keras.layers.Lambda`` computes by probing it with random inputs.

A Lambda wraps arbitrary Python, so it is never trusted by name: :func:`identify_lambda` calls
the layer's function on random inputs of the recorded input shape (two different batch sizes,
unknown dimensions filled in) and compares the result, exactly and including the output
shape, with a short list of candidates: ReLU, ReLU6, a transpose of the non-batch axes, a
reshape of the non-batch axes, an element-wise sum of two or more inputs. It returns a fresh
layer only when one candidate matches every probe with identical parameters.

Example:
    >>> import keras
    >>> layer = keras.layers.Lambda(lambda t: keras.ops.transpose(t, (0, 2, 1)))
    >>> type(identify_lambda(layer, [(None, 3, 4)], name="t")).__name__
    'Permute'
"""

from __future__ import annotations

import itertools

import keras
import numpy as np

__all__ = ["identify_lambda"]

_BATCHES = (2, 3)
_FILL = (5, 7)  # values for unknown non-batch dimensions, one per probe


def _probe_input(shape: tuple, probe: int, rng: np.random.Generator) -> np.ndarray:
    concrete = [_BATCHES[probe]] + [_FILL[probe] if d is None else d for d in shape[1:]]
    x = rng.uniform(-10.0, 10.0, size=concrete).astype("float32")
    flat = x.reshape(-1)
    if flat.size >= 2:  # make sure both the relu and the relu6 kinks are exercised
        flat[0], flat[1] = 8.5, -3.5
    return x


def _run(layer: keras.layers.Layer, xs: list[np.ndarray], as_list: bool) -> np.ndarray | None:
    tensors = [keras.ops.convert_to_tensor(x) for x in xs]
    try:
        y = layer.call(tensors if as_list else tensors[0])
        y = keras.ops.convert_to_numpy(y)
    except Exception:  # noqa: BLE001 - opaque user code: any failure means "no match"
        return None
    if not isinstance(y, np.ndarray) or y.dtype != np.float32:
        return None
    return y


def _shape_agrees(recorded: tuple, actual: tuple) -> bool:
    if len(recorded) != len(actual):
        return False
    return all(d is None or d == e for d, e in zip(recorded[1:], actual[1:], strict=True))


def _candidates(xs: list[np.ndarray], y: np.ndarray) -> set[tuple]:
    """Every candidate ``(kind, parameter)`` that reproduces ``y`` exactly from ``xs``."""
    found: set[tuple] = set()
    if len(xs) > 1:
        if all(x.shape == xs[0].shape for x in xs) and y.shape == xs[0].shape:
            total = xs[0]
            for x in xs[1:]:
                total = total + x
            if np.array_equal(y, total):
                found.add(("add", len(xs)))
        return found
    x = xs[0]
    if y.shape == x.shape:
        if np.array_equal(y, np.maximum(x, 0.0)):
            found.add(("relu", None))
        if np.array_equal(y, np.clip(x, 0.0, 6.0)):
            found.add(("relu6", None))
    if y.ndim == x.ndim and y.ndim > 2:
        for perm in itertools.permutations(range(1, x.ndim)):
            if perm == tuple(range(1, x.ndim)):
                continue
            moved = np.transpose(x, (0, *perm))
            if moved.shape == y.shape and np.array_equal(moved, y):
                found.add(("transpose", perm))
    if y.shape[:1] == x.shape[:1] and y.size == x.size and y.shape != x.shape:
        if np.array_equal(y, x.reshape(y.shape)):
            found.add(("reshape", tuple(y.shape[1:])))
    return found


def identify_lambda(
    layer: keras.layers.Layer,
    input_shapes: list[tuple],
    name: str,
    as_list: bool = False,
    output_shape: tuple | None = None,
    dtype=None,
) -> keras.layers.Layer | None:
    """A fresh layer computing exactly what ``layer`` computes, or ``None`` if not identified.

    Args:
        layer: the (read-only) Lambda layer to probe; only its ``call`` is used.
        input_shapes: shapes of its inputs, batch first (``None`` for unknown dimensions).
        name: name for the replacement layer.
        as_list: the Lambda is called on a list of tensors (required for ``add``).
        output_shape: the recorded output shape; the probes must agree with its known dims.
        dtype: dtype policy (or its config) for the replacement layer.

    Returns:
        ``keras.layers.ReLU``, ``Permute``, ``Reshape`` or ``Add``, or ``None``.
    """
    if not input_shapes or any(len(s) < 2 for s in input_shapes):
        return None
    if not as_list and len(input_shapes) != 1:
        return None
    rng = np.random.default_rng(1234)
    agreed: set[tuple] | None = None
    for probe in range(len(_BATCHES)):
        xs = [_probe_input(s, probe, rng) for s in input_shapes]
        y = _run(layer, xs, as_list)
        if y is None:
            return None
        if output_shape is not None and not _shape_agrees(output_shape, y.shape):
            return None
        found = _candidates(xs, y)
        agreed = found if agreed is None else agreed & found
        if not agreed:
            return None
    kinds = {kind for kind, _ in agreed}
    # ReLU6 and ReLU agree only if no probe value exceeded 6, which _probe_input prevents.
    for kind in ("relu", "relu6", "transpose", "reshape", "add"):
        if kind not in kinds:
            continue
        param = next(p for k, p in agreed if k == kind)
        if kind == "relu":
            return keras.layers.ReLU(name=name, dtype=dtype)
        if kind == "relu6":
            return keras.layers.ReLU(max_value=6.0, name=name, dtype=dtype)
        if kind == "transpose":
            return keras.layers.Permute(param, name=name, dtype=dtype)
        if kind == "reshape":
            return keras.layers.Reshape(param, name=name, dtype=dtype)
        return keras.layers.Add(name=name, dtype=dtype)
    return None
