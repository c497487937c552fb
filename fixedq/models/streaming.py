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


def clip_batches(samples, frame_shape, num_samples: int, batch_size: int | None, epochs: int):
    """Batches of clips ``(B, T, *frame)`` from a NumPy array of clips (frames ``(N, *frame)``
    are one-frame clips); at most ``num_samples`` clips per epoch."""
    arr = np.asarray(samples) if isinstance(samples, np.ndarray) else None
    if arr is None:
        raise TypeError("a streaming model is calibrated on clips given as a NumPy array "
                        f"(N, T, *frame), got {type(samples).__name__}")
    if arr.ndim == len(frame_shape):
        arr = arr[:, None]
    arr = check_clips(arr, frame_shape, "samples")[:num_samples]
    bs = int(batch_size or 32)
    for _ in range(epochs):
        for start in range(0, len(arr), bs):
            yield arr[start:start + bs]


def calibrate_clips(model: keras.Model, samples, layer_names, num_samples: int,
                    batch_size: int | None, epochs: int, verbose: bool, histograms: bool,
                    bins: int) -> dict:
    """:func:`fixedq.models.calibrate.calibrate` for a streaming ``model``: the samples are
    clips, streamed frame by frame from a clean state per batch of clips; the statistics
    cover every frame. Same arguments and result (``{name: RangeStats}``)."""
    from fixedq.models.calibrate import RangeStats

    input_name = model.inputs[0]._keras_history.operation.name
    names = [n for n in layer_names if n != input_name]
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    stats: dict = {}
    frame_shape = model.inputs[0].shape
    passes = ("ranges", "histograms") if histograms else ("ranges",)
    bar = Progress("calibrating (clips)", total=None, unit="frames", enabled=verbose)
    done = 0
    try:
        for which in passes:
            for clips in clip_batches(samples, frame_shape, num_samples, batch_size, epochs):
                reset_buffers(model)
                for t in range(clips.shape[1]):
                    frame = clips[:, t]
                    outs = probe.predict_on_batch(frame) if names else []
                    outs = [outs] if len(names) == 1 else list(outs)
                    for name, out in zip([input_name, *names], [frame, *outs], strict=True):
                        out = np.asarray(out, np.float64)
                        if which == "histograms":
                            stats[name].add_histogram(out, bins)
                        elif name not in stats:
                            axes = tuple(range(out.ndim - 1))
                            lo, hi = out.min(axis=axes), out.max(axis=axes)
                            stats[name] = RangeStats(lo, hi, [hi], [-lo])
                        else:
                            stats[name].update(out)
                    done += len(frame)
                    bar.update(done)
    finally:
        reset_buffers(model)
        bar.close()
    return stats


def streaming_quantize_options(bias_correction, weight_rounding):
    """Bias correction and weight rounding read samples as frames: for streaming models
    ``"auto"`` turns them off and an explicit request is a ``ValueError``."""
    for name, value in (("bias_correction", bias_correction),
                        ("weight_rounding", weight_rounding)):
        if not (value is None or value is False or value == "auto"):
            raise ValueError(f"{name}={value!r} is not supported for streaming models (it reads "
                             "frames without their past); use None or 'auto'")
    return None, None


@keras.saving.register_keras_serializable(package="fixedq")
class UnrolledClips(keras.layers.Layer):
    """Runs a streaming model over every frame of a clip inside one call (training on clips).

    Each call starts from zero state and hands the state from frame to frame as tensors
    (:func:`fixedq.layers.temporal.state.unrolled`), so gradients flow through time; the
    streaming model's own state variables are not touched. Built by :func:`unroll_clips`.
    """

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.supports_jit = False

    def call(self, clips, training=None):
        from fixedq.layers.temporal.state import unrolled

        with unrolled():
            outs = [self.model(clips[:, t], training=training) for t in range(clips.shape[1])]
        return keras.ops.stack(outs, axis=1)

    def compute_output_shape(self, input_shape):
        out = self.model.compute_output_shape((input_shape[0], *input_shape[2:]))
        return (out[0], input_shape[1], *out[1:])

    def get_config(self):
        return {**super().get_config(),
                "model": keras.saving.serialize_keras_object(self.model)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        return cls(**config)


def unroll_clips(model: keras.Model, steps: int) -> keras.Model:
    """A model over clips ``(N, steps, *frame)`` -> ``(N, steps, ...)`` that shares the layers
    (and weights) of streaming ``model``: ``fit`` it on clips to train the streaming model
    through time (float training or QAT of a quantized streaming model).

    Example:
        >>> trainer = unroll_clips(qmodel, steps=8)        # doctest: +SKIP
        >>> trainer.compile("adam", "sparse_categorical_crossentropy")  # doctest: +SKIP
        >>> trainer.fit(clips, per_frame_labels, epochs=2)  # doctest: +SKIP
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer (frames per clip), got {steps!r}")
    frame = tuple(model.inputs[0].shape[1:])
    x = keras.Input((int(steps), *frame), name=f"{model.name}_clips")
    return keras.Model(x, UnrolledClips(model, name=f"{model.name}_unrolled")(x),
                       name=f"{model.name}_over_clips")
