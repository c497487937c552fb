"""Streaming engine programs: ops with state (DESIGN.md decision 11), run frame by frame.

A program with a stateful op kind (:data:`KINDS`) is a :class:`StreamingModel`. Its state --
one integer FIFO per ``buffer_conv`` op, of the last ``kernel_size - 1`` aligned input frames
-- lives in the model (``Model.states``) and is explicit:

- ``predict(clips)`` takes ``(N, T, *frame)`` and returns every frame's output ``(N, T,
  ...)``; each batch of clips starts from a clean state (and leaves it clean). Frames
  ``(N, *frame)`` are taken as ``N`` one-frame clips.
- ``reset()`` clears the state; ``step(frames)`` runs one frame per sample and keeps the
  state (live use). A state of another batch size reads as zeros.
- ``mode="event"`` runs a buffer conv on its active pixels only (a pixel of the window with
  any non-zero input); ``event_stats(clips)`` counts events per op over every frame.

The FIFO stores the input integers of the op (their ``value_bits``: 8 bits for 8-bit
activations) before the alignment to the op's ``in_frac``; the accumulation is
docs/numerics.md eq. 40. ``predict``/``step`` run on the compiled plan when numba is installed
(:mod:`fixedq.engine.fast.stateful`: the same state, the same integers); ``event_stats`` and
``FIXEDQ_ENGINE_COMPILED=0`` run the reference kernels below.

Example:
    >>> import numpy as np
    >>> from fixedq.engine.ops import Op
    >>> op = Op("t", "buffer_conv", ["x"], {"kernel_size": 2, "depthwise": True,
    ...         "accum_dtype": "int64", "acc_lo": -2**31, "acc_hi": 2**31 - 1},
    ...         {"kernel": np.array([[1], [10]]), "bias": np.array([0]),
    ...          "multiplier": np.array([1]), "shift": np.array([0]),
    ...          "out_lo": np.array([-128]), "out_hi": np.array([127])})
    >>> model = StreamingModel([Op("x", "input", [], {}, {"frac": np.array([0]),
    ...     "lo": np.array([-128]), "hi": np.array([127])}), op], [{"tensor": "t",
    ...     "frac": [0], "name": "t"}], (None, 1))
    >>> model.predict(np.array([[[1.0], [2.0]]])).tolist()   # one clip of two frames
    [[[10.0], [21.0]]]
"""

from __future__ import annotations

import numpy as np

from fixedq.engine.buffer_conv import buffer_conv_step
from fixedq.engine.model import Model, dequantize
from fixedq.engine.ops import Op, aligned_input, reject_nan
from fixedq.engine.recurrent import recurrent_step
from fixedq.progress import Progress

#: Stateful op kinds (their kernels are in :data:`fixedq.engine.ops.KERNELS`).
KINDS = ("buffer_conv", "recurrent")


def _record(stats: dict, op: Op, x: np.ndarray, fifo_nonzero: np.ndarray) -> None:
    """Events of a buffer conv: the new frame's non-zero inputs; ``synops``: each non-zero
    value of the window times the outputs it reaches; ``dense_macs``: the full window."""
    entry = stats.setdefault(op.name, {"events": 0, "inputs": 0, "synops": 0, "dense_macs": 0,
                                       "event_driven": False, "event_kernel": None})
    k = int(op.attrs["kernel_size"])
    outs = 1 if op.attrs.get("depthwise") else int(op.arrays["kernel"].shape[-1])
    entry["events"] += int(np.count_nonzero(x))
    entry["inputs"] += int(x.size)
    entry["sparsity"] = 1.0 - entry["events"] / entry["inputs"] if entry["inputs"] else 0.0
    entry["synops"] += int(fifo_nonzero) * outs
    entry["dense_macs"] += int(x.size) * k * outs


def _record_recurrent(stats: dict, op: Op, x: np.ndarray) -> None:
    """A recurrence updates every state each frame: 4 multiplies per value."""
    entry = stats.setdefault(op.name, {"events": 0, "inputs": 0, "synops": 0, "dense_macs": 0,
                                       "event_driven": False, "event_kernel": None})
    entry["events"] += int(np.count_nonzero(x))
    entry["inputs"] += int(x.size)
    entry["sparsity"] = 1.0 - entry["events"] / entry["inputs"] if entry["inputs"] else 0.0
    entry["synops"] += 4 * int(x.size)
    entry["dense_macs"] += 4 * int(x.size)


class StreamingModel(Model):
    """An engine model with stateful ops; see the module docstring."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        #: op name -> its state (the FIFO ``(N, k - 1, ..., C)`` of aligned input integers)
        self.states: dict[str, np.ndarray] = {}

    @property
    def frame_shape(self) -> tuple:
        """The shape of one frame batch, ``(None, H, W, C)``."""
        return self.input_shape

    def reset(self) -> None:
        """Clear every state: the next frame starts a new sequence."""
        self.states.clear()

    def _run(self, op: Op, xs, mode: str, stats):
        if op.kind not in KINDS:
            return super()._run(op, xs, mode, stats)
        x = xs[0]
        off = op.arrays.get("in_offset0")
        if off is not None:
            x = x + off
        x = aligned_input(op, x)
        if op.kind == "recurrent":
            state = self.states.get(op.name)
            y, new = recurrent_step(op, x, state)
            if stats is not None:
                _record_recurrent(stats, op, x)
            self.states[op.name] = new
            out_off = op.arrays.get("out_offset")
            return y if out_off is None else y - out_off
        want = op.attrs.get("frame_shape")
        if want is not None and list(x.shape[1:]) != list(want):
            raise ValueError(f"op {op.name!r} (buffer_conv) expects frames of shape "
                             f"(N, {', '.join(map(str, want))}), got {x.shape}")
        fifo = self.states.get(op.name)
        y, new = buffer_conv_step(op, xs[0] if off is None else xs[0] + off, fifo,
                                  event=mode == "event")
        if stats is not None:
            window_nz = np.count_nonzero(x) + (np.count_nonzero(fifo) if fifo is not None
                                               and fifo.shape[0] == x.shape[0] else 0)
            _record(stats, op, x, window_nz)
            stats[op.name]["event_driven"] = mode == "event"
            stats[op.name]["event_kernel"] = "active-pixels" if mode == "event" else None
        self.states[op.name] = new
        out_off = op.arrays.get("out_offset")
        return y if out_off is None else y - out_off

    def check_clips(self, x) -> np.ndarray:
        """``x`` as clips ``(N, T, *frame)`` (frames ``(N, *frame)`` become one-frame clips),
        in the input dtype; a ``ValueError`` naming the shape otherwise."""
        arr = np.asarray(x)
        if arr.dtype.kind not in "iuf":
            raise TypeError(f"model {self.name!r} expects a numeric array (float or integer), "
                            f"got dtype {arr.dtype}")
        frame = self.input_shape[1:]
        if arr.ndim == len(frame) + 1:
            arr = arr[:, None]
        txt = "(N, T, " + ", ".join("?" if d is None else str(d) for d in frame) + ")"
        if arr.ndim != len(frame) + 2 or any(w is not None and w != g
                                             for w, g in zip(frame, arr.shape[2:], strict=True)):
            raise ValueError(f"streaming model {self.name!r} expects clips of shape {txt} "
                             f"(or one frame per sample), got {np.shape(x)}")
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise ValueError(f"clips of shape {arr.shape} are empty: need N >= 1 clips of "
                             "T >= 1 frames")
        with np.errstate(over="ignore"):
            return arr.astype(self.input_dtype, copy=False)

    def step(self, frames, output: str = "float", mode: str = "dense"):
        """Run one frame per sample ``(N, *frame)``, keeping the state for the next call."""
        arr = self.check_input(frames)
        reject_nan(arr)
        outs = self.run_batch(arr, mode, None)
        return self._finish(outs, output)

    def _finish(self, outs, output):
        if output == "float":
            outs = [dequantize(r, o["frac"]) for r, o in zip(outs, self.outputs, strict=True)]
        elif output != "int":
            raise ValueError(f"output must be one of ('float', 'int'), got {output!r}")
        return outs[0] if len(outs) == 1 else outs

    def _clips(self, x, batch_size, mode, stats, verbose, times=None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if mode not in ("dense", "event"):
            raise ValueError(f"mode must be one of ('dense', 'event'), got {mode!r}")
        arr = self.check_clips(x)
        reject_nan(arr)
        n, steps = arr.shape[:2]
        results = None
        bar = Progress(f"{self.name}: predict clips", total=n, unit="clips", enabled=verbose)
        try:
            for start in range(0, n, batch_size):
                self.reset()
                batch = arr[start:start + batch_size]
                for t in range(steps):
                    outs = self._run_batch(np.ascontiguousarray(batch[:, t]), mode, stats,
                                           True, times)
                    if results is None:
                        results = [np.empty((n, steps, *o.shape[1:]), np.int64) for o in outs]
                    for r, o in zip(results, outs, strict=True):
                        r[start:start + len(batch), t] = o
                bar.update(min(n, start + batch_size))
        finally:
            self.reset()
            bar.close()
        return results, np.ndim(x) == len(self.input_shape)

    def predict(self, x, batch_size: int = 32, output: str = "float", mode: str = "dense",
                verbose: bool = False):
        """Per-frame outputs ``(N, T, ...)`` of clips ``(N, T, *frame)``, every batch of clips
        from a clean state; frames ``(N, *frame)`` give ``(N, ...)`` (one-frame clips)."""
        if output not in ("float", "int"):
            raise ValueError(f"output must be one of ('float', 'int'), got {output!r}")
        results, frames = self._clips(x, batch_size, mode, None, verbose)
        if frames:
            results = [r[:, 0] for r in results]
        return self._finish(results, output)

    def profile(self, x, batch_size: int = 32, mode: str = "dense") -> list[dict]:
        """Per-op wall time of ``predict(x)`` over every frame of clips ``x`` (frames: one-frame
        clips), rows as :meth:`fixedq.engine.Model.profile` gives them."""
        if mode not in ("dense", "event"):
            raise ValueError(f"mode must be one of ('dense', 'event'), got {mode!r}")
        times: dict[str, float] = {}
        self._clips(x, batch_size, mode, None, False, times)
        total = sum(times.values()) or 1.0
        return [{"name": op.name, "kind": op.kind, "type": op.attrs.get("type", ""),
                 "seconds": times.get(op.name, 0.0),
                 "share": times.get(op.name, 0.0) / total} for op in self.ops]

    def event_stats(self, x, batch_size: int = 32, mode: str = "event") -> list[dict]:
        """Per-op event statistics over every frame of clips ``x``."""
        stats: dict = {}
        self._clips(x, batch_size, mode, stats, False)
        return [dict(name=op.name, kind=op.kind, **stats[op.name])
                for op in self.ops[1:] if op.name in stats]


def is_streaming_program(ops) -> bool:
    """Whether a list of engine ops has a stateful op (the program streams)."""
    return any(op.kind in KINDS for op in ops)


def as_streaming(model: Model) -> Model:
    """``model`` as a :class:`StreamingModel` when it has stateful ops (else unchanged)."""
    if isinstance(model, StreamingModel) or not is_streaming_program(model.ops):
        return model
    return StreamingModel(model.ops, model.outputs, model.input_shape, model.input_dtype,
                          model.name, model.target, model.meta)
