"""Streaming models: clear their state, run them over clips frame by frame.

A *streaming* model takes one frame ``(N, H, W, C)`` per call and remembers the past in its
temporal layers' buffers/states (:mod:`fixedq.layers.temporal`, DESIGN.md decision 11).
:func:`reset_buffers` clears every state; :func:`predict_clips` runs clips ``(N, T, H, W, C)``
frame by frame, each batch of clips from a clean state, and returns every frame's output
``(N, T, ...)``.

Example:
    >>> import keras, numpy as np
    >>> from fixedq.layers.temporal import DepthwiseBufferTempConv
    >>> x = keras.Input((2,))
    >>> model = keras.Model(x, DepthwiseBufferTempConv(3, name="fifo")(x))
    >>> is_streaming(model), predict_clips(model, np.ones((1, 4, 2), "float32")).shape
    (True, (1, 4, 2))
"""

from __future__ import annotations

import keras
import numpy as np

from fixedq.progress import Progress


def streaming_layers(model) -> list:
    """Every layer of ``model`` (nested models included) that keeps streaming state."""
    found = []
    for layer in model._flatten_layers(include_self=False) if hasattr(
            model, "_flatten_layers") else model.layers:
        if getattr(layer, "streaming", False) and hasattr(layer, "reset_buffers"):
            found.append(layer)
    return found


def is_streaming(model) -> bool:
    """Whether ``model`` has a layer with streaming state (it takes frames, not clips)."""
    return bool(streaming_layers(model))


def reset_buffers(model) -> None:
    """Clear every FIFO buffer and recurrent state of ``model``: the next frame starts a new
    sequence.

    Example:
        >>> reset_buffers(model)  # doctest: +SKIP
    """
    for layer in streaming_layers(model):
        layer.reset_buffers()


def check_clips(clips, frame_shape, what: str = "clips") -> np.ndarray:
    """``clips`` as a float32 array ``(N, T, *frame_shape[1:])`` with ``N, T >= 1``, else a
    ``ValueError`` naming the shape received and the one expected."""
    arr = np.asarray(clips)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{what} must be a numeric array, got dtype {arr.dtype}")
    want = tuple(frame_shape[1:])
    shape_txt = "(N, T, " + ", ".join("?" if d is None else str(d) for d in want) + ")"
    if arr.ndim != len(want) + 2 or any(w is not None and w != g
                                        for w, g in zip(want, arr.shape[2:], strict=True)):
        raise ValueError(f"{what} must have shape {shape_txt} (a batch of clips of frames of "
                         f"the streaming model), got {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{what} of shape {arr.shape} are empty: need N >= 1 clips of "
                         "T >= 1 frames")
    return arr.astype("float32", copy=False)


def predict_clips(model: keras.Model, clips, batch_size: int = 32,
                  verbose: bool = False) -> np.ndarray:
    """Run a streaming ``model`` over ``clips`` ``(N, T, ...)`` frame by frame.

    Every batch of clips starts from a clean state (:func:`reset_buffers`) and the state is
    cleared again at the end. Returns ``(N, T, ...)``: the output after each frame.
    """
    arr = check_clips(clips, model.inputs[0].shape)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    n, steps = arr.shape[:2]
    out = None
    bar = Progress(f"{model.name}: predict clips", total=n, unit="clips", enabled=verbose)
    try:
        for start in range(0, n, batch_size):
            reset_buffers(model)
            batch = arr[start:start + batch_size]
            for t in range(steps):
                y = np.asarray(model.predict_on_batch(batch[:, t]))
                if out is None:
                    out = np.empty((n, steps, *y.shape[1:]), y.dtype)
                out[start:start + len(batch), t] = y
            bar.update(min(n, start + batch_size))
    finally:
        reset_buffers(model)
        bar.close()
    return out
