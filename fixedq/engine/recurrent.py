"""The ``recurrent`` kernel: one frame of the integer complex diagonal recurrence (eq. 41).

State ``(s_re, s_im)``: int64 arrays of the frame's shape, ``state_bits`` wide (``|s| <=
state_hi``). :class:`fixedq.engine.streaming.StreamingModel` keeps it between frames;
:func:`run_first_frame` (the kind's entry in :data:`fixedq.engine.ops.KERNELS`) runs one frame
from a zero state.

Example:
    >>> import numpy as np
    >>> from fixedq.engine.ops import Op
    >>> op = Op("r", "recurrent", ["x"], {"coef_frac": 2}, {
    ...     "a_re": np.array([0]), "a_im": np.array([4]), "in_shift": np.array([0]),
    ...     "out_shift": np.array([0]), "state_hi": np.array([127]),
    ...     "out_lo": np.array([-128]), "out_hi": np.array([127])})   # A = i
    >>> state, outs = None, []
    >>> for _ in range(4):
    ...     y, state = recurrent_step(op, np.array([[1]]), state)
    ...     outs.append(int(y[0, 0]))
    >>> outs
    [1, 1, 0, 0]
"""

from __future__ import annotations

import numpy as np

from fixedq.tensors.rounding import shift_round


def recurrent_step(op, u: np.ndarray, state):
    """One frame: ``(output, (s_re, s_im))`` from input integers ``u`` (int64, the op's input
    grid) and the previous state (``None``: zeros)."""
    r = op.arrays
    if state is None or state[0].shape != u.shape:
        state = (np.zeros(u.shape, np.int64), np.zeros(u.shape, np.int64))
    s_re, s_im = state
    fa = int(op.attrs["coef_frac"])
    a_re, a_im, hi = r["a_re"], r["a_im"], r["state_hi"]
    u_s = shift_round(u, r["in_shift"])
    n_re = np.clip(shift_round(a_re * s_re - a_im * s_im, fa) + u_s, -hi, hi)
    n_im = np.clip(shift_round(a_re * s_im + a_im * s_re, fa), -hi, hi)
    y = np.clip(shift_round(n_re, r["out_shift"]), r["out_lo"], r["out_hi"])
    return y, (n_re, n_im)


def run_first_frame(op, xs):
    """One frame from a zero state (stateless use)."""
    from fixedq.engine.ops import aligned_input  # (ops imports this module)

    return recurrent_step(op, aligned_input(op, xs[0]), None)[0]
