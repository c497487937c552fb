"""Event-based (SNN-style) execution: non-zero activations are events.

An *event* is a non-zero integer input activation of an op. For a neural op, each event
triggers synaptic operations: it is multiplied by the weights it connects to and scattered into
the accumulators of the outputs it reaches. :func:`run_neural_events` computes conv2d and dense
layers that way (work proportional to the number of events); its accumulators are integer sums
of the same terms as the dense path, computed exactly (same static bound, same dtype rule), so
the outputs are identical. Other neural types (depthwise, transpose) fall back to the dense
kernel and are still counted.

Statistics per op (:func:`record`, ``Model.event_stats``):

- ``events``: non-zero input activations; ``inputs``: input activations; ``sparsity``.
- ``synops``: synaptic operations an event-driven execution needs (event x reachable outputs);
  ``dense_macs``: multiply-accumulates of the dense execution.

Example:
    >>> import numpy as np
    >>> from fixedq.engine.ops import Op
    >>> op = Op("fc", "neural", ["x"], {"type": "dense", "accum_dtype": "float32"},
    ...         {"kernel": np.array([[1, 2], [3, 4]])})
    >>> acc, synops = event_linear(op, np.array([[0, 5]]))
    >>> acc.tolist(), synops
    ([[15, 20]], 2)
"""

from __future__ import annotations

import numpy as np

from fixedq.engine import kernels
from fixedq.engine.ops import aligned_input, neural_output

EVENT_TYPES = ("conv2d", "dense")


def supports(op) -> bool:
    """Whether ``op`` has an event-driven kernel."""
    return op.kind == "neural" and op.attrs["type"] in EVENT_TYPES


def _scatter_rows(acc: np.ndarray, rows: np.ndarray, contrib: np.ndarray) -> None:
    """``acc[rows[k]] += contrib[k]`` for row indices sorted ascending (exact, vectorized)."""
    if rows.size == 0:
        return
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    acc[rows[starts]] += np.add.reduceat(contrib, starts, axis=0)


def _dtype(op):
    d = op.attrs["accum_dtype"]
    return np.int64 if d == "int64" else np.dtype(d)


def _dense_events(op, x):
    kernel = op.arrays["kernel"]
    dt = _dtype(op)
    flat = x.reshape(-1, x.shape[-1])
    rows, cols = np.nonzero(flat)
    vals = flat[rows, cols].astype(dt)
    acc = np.zeros((flat.shape[0], kernel.shape[1]), dtype=dt)
    _scatter_rows(acc, rows, vals[:, None] * kernel[cols].astype(dt))
    synops = int(rows.size) * kernel.shape[1]
    return acc.astype(np.int64).reshape(*x.shape[:-1], kernel.shape[1]), synops


def _conv_events(op, x):
    a = op.attrs
    kernel = op.arrays["kernel"]
    kh, kw, _, cout = kernel.shape
    s, d = a["strides"], a["dilation_rate"]
    n, h, w, _ = x.shape
    ho, pb, _ = kernels.conv_geometry(h, kh, s[0], a["padding"], d[0])
    wo, pl, _ = kernels.conv_geometry(w, kw, s[1], a["padding"], d[1])
    dt = _dtype(op)
    bn, bi, bj, bc = np.nonzero(x)
    vals = x[bn, bi, bj, bc].astype(dt)
    k = kernel.astype(dt)
    acc = np.zeros((n * ho * wo, cout), dtype=dt)
    synops = 0
    for ta in range(kh):
        ri = bi + pb - ta * d[0]
        ok_r = (ri >= 0) & (ri % s[0] == 0) & (ri // s[0] < ho)
        for tb in range(kw):
            rj = bj + pl - tb * d[1]
            ok = ok_r & (rj >= 0) & (rj % s[1] == 0) & (rj // s[1] < wo)
            if not np.any(ok):
                continue
            rows = (bn[ok] * ho + ri[ok] // s[0]) * wo + rj[ok] // s[1]
            _scatter_rows(acc, rows, vals[ok, None] * k[ta, tb][bc[ok]])
            synops += int(rows.size) * cout
    return acc.astype(np.int64).reshape(n, ho, wo, cout), synops


def event_linear(op, x: np.ndarray) -> tuple[np.ndarray, int]:
    """Event-driven linear part of a conv2d/dense op: ``(accumulators, synaptic ops)``."""
    if op.attrs["type"] == "dense":
        return _dense_events(op, x)
    return _conv_events(op, x)


def run_neural_events(op, x: np.ndarray, stats: dict | None = None) -> np.ndarray:
    """Run a neural op event-driven; output identical to the dense path."""
    acc, synops = event_linear(op, aligned_input(op, x))
    if stats is not None:
        stats[op.name]["synops"] += synops
        stats[op.name]["event_driven"] = True
    return neural_output(op, acc)


def _synops_estimate(op, x: np.ndarray) -> int:
    """Synaptic ops an event-driven run of ``op`` would need on input ``x`` (exact for conv2d,
    depthwise and dense; transpose counts every tap of every event)."""
    t = op.attrs["type"]
    kernel = op.arrays["kernel"]
    if t == "dense":
        return int(np.count_nonzero(x)) * kernel.shape[1]
    if t == "transpose":
        return int(np.count_nonzero(x)) * kernel.shape[0] * kernel.shape[1] * kernel.shape[2]
    a = op.attrs
    kh, kw = kernel.shape[:2]
    fan_out = kernel.shape[3]
    cnt = np.count_nonzero(x, axis=-1)[..., None]
    n, h, w, _ = cnt.shape
    ho, *ph = kernels.conv_geometry(h, kh, a["strides"][0], a["padding"], a["dilation_rate"][0])
    wo, *pw = kernels.conv_geometry(w, kw, a["strides"][1], a["padding"],
                                    a["dilation_rate"][1])
    cp = np.pad(cnt, ((0, 0), tuple(ph), tuple(pw), (0, 0)))
    total = 0
    for _, view in kernels._taps(cp, (kh, kw), a["strides"], a["dilation_rate"], (ho, wo)):
        total += int(view.sum())
    return total * fan_out


def dense_macs(op, x: np.ndarray) -> int:
    """Multiply-accumulates of the dense execution of a neural op on input ``x``."""
    t = op.attrs["type"]
    k = op.arrays["kernel"].shape
    n = x.shape[0]
    lin = int(np.prod(op.attrs.get("linear_shape", [0])))
    if t == "dense":
        return int(np.prod(x.shape[:-1])) * k[0] * k[1]
    if t == "conv2d":
        return n * lin * k[0] * k[1] * k[2]
    if t == "depthwise":
        return n * lin * k[0] * k[1]
    return int(x.size) * k[0] * k[1] * k[2]


def record(stats: dict, op, xs: list[np.ndarray], event_mode: bool = False) -> None:
    """Accumulate the event statistics of ``op`` on inputs ``xs`` into ``stats[op.name]``.

    Synaptic ops of ops that will run event-driven are counted by :func:`run_neural_events`.
    """
    entry = stats.setdefault(op.name, {"events": 0, "inputs": 0, "synops": 0, "dense_macs": 0,
                                       "event_driven": False})
    entry["events"] += int(sum(np.count_nonzero(x) for x in xs))
    entry["inputs"] += int(sum(x.size for x in xs))
    entry["sparsity"] = 1.0 - entry["events"] / entry["inputs"] if entry["inputs"] else 0.0
    if op.kind == "neural":
        x = aligned_input(op, xs[0])
        entry["dense_macs"] += dense_macs(op, x)
        if not (event_mode and supports(op)):
            entry["synops"] += _synops_estimate(op, x)


def format_stats(rows: list[dict]) -> str:
    """A text table of ``Model.event_stats`` rows."""
    lines = [f"{'op':24} {'kind':8} {'events':>12} {'sparsity':>9} {'synops':>14} "
             f"{'dense MACs':>14}"]
    for r in rows:
        lines.append(f"{r['name'][:24]:24} {r['kind']:8} {r['events']:>12} "
                     f"{r['sparsity']:>9.3f} {r['synops']:>14} {r['dense_macs']:>14}")
    return "\n".join(lines)
