"""The ``buffer_conv`` kernel: one frame of a temporal convolution over an integer FIFO.

``acc = b_q + sum_j sum_c window[j, c] * w_q[j, c, o]`` over the window of the last ``k``
aligned input frames (oldest first, zeros before the first frame), then the neural
requantization (docs/numerics.md eq. 40). :class:`fixedq.engine.streaming.StreamingModel`
keeps the FIFO between frames; :func:`run_first_frame` (the kind's entry in
:data:`fixedq.engine.ops.KERNELS`) runs one frame from a clean state.

Example:
    >>> import numpy as np
    >>> from fixedq.engine.ops import Op
    >>> op = Op("t", "buffer_conv", ["x"], {"kernel_size": 2, "depthwise": True,
    ...         "accum_dtype": "int64", "acc_lo": -2**31, "acc_hi": 2**31 - 1},
    ...         {"kernel": np.array([[1], [10]]), "bias": np.array([0]),
    ...          "multiplier": np.array([1]), "shift": np.array([0]),
    ...          "out_lo": np.array([-128]), "out_hi": np.array([127])})
    >>> y, fifo = buffer_conv_step(op, np.array([[1]]), None)
    >>> y.tolist(), buffer_conv_step(op, np.array([[2]]), fifo)[0].tolist()
    ([[10]], [[21]])
"""

from __future__ import annotations

import numpy as np

from fixedq.engine import kernels


def buffer_conv_step(op, x: np.ndarray, fifo: np.ndarray | None,
                     event: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One frame of a ``buffer_conv`` op: ``(output, new FIFO)``.

    ``x``: input integers ``(N, ..., C)`` (before the alignment ``in_align``); ``fifo``:
    ``(N, k - 1, ..., C)`` of the previous inputs, or ``None`` (zeros). With ``event``, only
    pixels with a non-zero window are computed.
    """
    from fixedq.engine.ops import aligned_input, neural_output  # (ops imports this module)

    k = int(op.attrs["kernel_size"])
    if fifo is None or fifo.shape[0] != x.shape[0] or fifo.shape[2:] != x.shape[1:]:
        fifo = np.zeros((x.shape[0], k - 1, *x.shape[1:]), np.int64)
    raw = np.concatenate([fifo, x[:, None]], axis=1).astype(np.int64, copy=False)
    window = aligned_input(op, raw)  # (N, k, ..., C), oldest first
    kernel = op.arrays["kernel"]
    dtype = op.attrs.get("accum_dtype", "int64")
    if op.attrs.get("depthwise"):
        acc = (window * kernel.reshape((1, k) + (1,) * (x.ndim - 2) + (-1,))).sum(axis=1)
    else:
        c, f = kernel.shape[1], kernel.shape[2]
        stacked = np.moveaxis(window, 1, -2).reshape((*x.shape[:-1], k * c))
        flat = stacked.reshape(-1, k * c)
        if event:
            rows = np.flatnonzero(np.any(flat != 0, axis=1))
            acc = np.zeros((flat.shape[0], f), np.int64)
            if rows.size:
                acc[rows] = kernels.dense(flat[rows], kernel.reshape(k * c, f), dtype)
        else:
            acc = kernels.dense(flat, kernel.reshape(k * c, f), dtype)
        acc = acc.reshape((*x.shape[:-1], f))
    return neural_output(op, np.asarray(acc, np.int64)), raw[:, 1:]


def run_first_frame(op, xs):
    """One frame from a clean FIFO (stateless use; streaming programs run through
    :class:`fixedq.engine.streaming.StreamingModel`)."""
    return buffer_conv_step(op, xs[0], None)[0]
