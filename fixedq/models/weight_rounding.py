"""Weight rounding optimization: choose each integer weight to minimize the layer's output error.

Nearest rounding (eq. 14) minimizes the error of every weight on its own; at 4 bits and below
the *output* error ``(w_q·s - w)·x`` of a layer is what matters, and the errors of the weights
that read correlated inputs can cancel. For each quantized layer with weights at
``weight_bits <= max_bits``, in execution order, this module takes the layer's inputs ``X`` *as
the quantized model computes them* (the earlier layers already optimized) on ``frames``
calibration samples, forms the input second-moment matrix ``H = X^T X / n`` (per input
patch: ``kh·kw·cin`` for Conv2D, ``k·cin`` for Conv1D, ``kh·kw`` per channel for
DepthwiseConv2D, ``cin`` for Dense: the op's ``weight_rows`` layout in the registry;
with ``center=True`` the covariance, i.e. the error left after bias correction removes the mean
shift) and, per output channel with scale ``s``, minimizes the quadratic

    E(q) = (q - w/s)^T H (q - w/s)        q integer in [-(2^(b-1)-1), 2^(b-1)-1]

1. ``method="gptq"``: GPTQ / OBQ-style greedy rounding, columns in order of decreasing
   ``H_jj``, the rounding error of each column compensated on the not-yet-rounded ones through
   the Cholesky factor of ``H^-1`` (with ``damp·mean(diag H)`` added to the diagonal);
2. then ``sweeps`` passes of exact coordinate descent on ``E``: any single ``±1`` change that
   lowers ``E`` is taken (AdaRound's objective, solved greedily);
3. per channel the result is kept only if its ``E`` is below that of nearest rounding, so on
   the calibration frames no channel gets worse.

``method="local"`` skips step 1 (coordinate descent from nearest rounding).

The weight scale is untouched: the element(s) with the largest ``|w|`` of each channel stay at
``±(2^(b-1)-1)``. The chosen integers are held by the layer's weight quantizer itself (its
``kernel_offset``, added after nearest rounding: :func:`set_integer_kernel`), so the quantized
Keras model and the integer engine stay bit-exact, and QAT starts from the optimized integers
with the original float weights (``keep_latent=False``: every other weight on its grid point
``q·s``). The integers are recorded in the layer's q-config entry
(``weight_rounding``: options and the int8 kernel in base64) and re-applied by
``quantize(model, q_config=cfg)`` bit for bit.

Example:
    >>> qmodel = quantize(model, qp4, samples=x, weight_rounding=True)  # doctest: +SKIP
    >>> qmodel = quantize(model, qp4, samples=x,
    ...                   weight_rounding={"frames": 512, "sweeps": 4})  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import math
import warnings
from dataclasses import asdict, dataclass

import keras
import numpy as np
from keras import ops

from fixedq.layers.neural import QuantizedNeuralLayer
from fixedq.layers.params import dataclass_from_dict
from fixedq.models import layerwise
from fixedq.ops import registry
from fixedq.progress import Progress

METHODS = ("gptq", "local")


def rows_layout(layer) -> str | None:
    """How weight rounding reads ``layer`` (its op's :attr:`~fixedq.ops.OpSpec.weight_rows`:
    ``"dense"``, ``"conv2d"``, ``"conv1d"`` or ``"depthwise"``); ``None``: the layer is left
    at nearest rounding (no op, or an op without a rows layout, e.g. transposed convs).

    Example:
        >>> from fixedq.layers.neural import QuantizedDense
        >>> rows_layout(QuantizedDense(4)), rows_layout(keras.layers.Dense(4))
        ('dense', None)
    """
    spec = registry.for_layer(layer)
    return None if spec is None else spec.weight_rows


@dataclass(frozen=True)
class WeightRounding:
    """Options of the weight rounding optimization (see the module docstring).

    Attributes:
        method: ``"gptq"`` (greedy with error compensation, then local search) or ``"local"``
            (local search from nearest rounding).
        frames: calibration samples used to measure each layer's inputs.
        max_bits: only layers with ``weight_bits <= max_bits`` are optimized.
        sweeps: coordinate-descent passes after the greedy step (0: none).
        damp: relative dampening of ``H`` for the greedy step.
        center: minimize the output error's variance (what bias correction leaves) instead of
            its second moment.
        target: ``"quantized"`` reconstructs ``w·x_q`` (the float weights on the quantized
            model's inputs); ``"float"`` reconstructs the float model's ``w·x_f``, so the
            weights also compensate the error of the quantized inputs (the least-squares
            target ``w* = (H + λ)^-1 (X_q^T X_f w / n + λ w)`` is rounded in the ``H``
            metric, ``λ = damp·mean(diag H)``).
        keep_latent: keep the original float weights (the layer's ``kernel_offset`` holds the
            chosen integers; QAT starts from them) instead of moving them onto the grid points.

    Example:
        >>> WeightRounding(frames=128).max_bits
        4
    """

    method: str = "gptq"
    frames: int = 256
    max_bits: int = 4
    sweeps: int = 2
    damp: float = 0.1
    center: bool = False
    target: str = "float"
    keep_latent: bool = True

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"weight_rounding method must be one of {METHODS}, "
                             f"got {self.method!r}")
        for name, lo, hi in (("frames", 1, None), ("max_bits", 2, 8), ("sweeps", 0, None)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo \
                    or (hi is not None and value > hi):
                span = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
                raise ValueError(f"weight_rounding {name} must be an integer {span}, "
                                 f"got {value!r}")  # (integers are recorded as int8)
        if isinstance(self.damp, bool) or not isinstance(self.damp, (int, float)) \
                or not 0 <= float(self.damp) < 1:
            raise ValueError(f"weight_rounding damp must be a number in [0, 1), "
                             f"got {self.damp!r}")
        if self.target not in ("quantized", "float"):
            raise ValueError(f"weight_rounding target must be 'quantized' or 'float', "
                             f"got {self.target!r}")
        for name in ("center", "keep_latent"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"weight_rounding {name} must be true or false, "
                                 f"got {getattr(self, name)!r}")

    @classmethod
    def get(cls, value, qparams=None) -> WeightRounding | None:
        """``None``/``False`` (off), ``True``, a method name, a dict, an instance, or
        ``"auto"``: on with the defaults when any weight width of ``qparams`` is 4 or less.

        Example:
            >>> WeightRounding.get({"method": "local"}).method
            'local'
        """
        if isinstance(value, str) and value == "auto":
            low = qparams is not None and min(qparams.weight_bits,
                                              qparams.input_weight_bits) <= 4
            return cls() if low else None
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls(method=value)
        if isinstance(value, dict):
            return dataclass_from_dict(cls, value, "weight_rounding")
        raise TypeError(f"weight_rounding must be a bool, 'auto', a method name {METHODS}, a "
                        f"dict or a WeightRounding, got {type(value).__name__}")

    def to_config(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- layer inputs


def _same_pads(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    eff = (k - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def _geometry(layer: QuantizedNeuralLayer):
    """``((kh, kw), (sh, sw), (dh, dw))`` of a conv layer; a 1-D conv is a ``(1, k)`` conv
    over a ``(1, steps)`` image."""
    if rows_layout(layer) == "conv1d":
        return ((1, layer.kernel_size[0]), (1, layer.strides[0]),
                (1, layer.dilation_rate[0]))
    return tuple(layer.kernel_size), tuple(layer.strides), tuple(layer.dilation_rate)


def _grid(layer: QuantizedNeuralLayer, x: np.ndarray):
    """``(x padded as the conv reads it (float64, NHWC), out height, out width)``."""
    x = np.asarray(x, np.float64)
    if rows_layout(layer) == "conv1d":
        x = x[:, None]
    (kh, kw), (sh, sw), (dh, dw) = _geometry(layer)
    if layer.padding == "same":
        ph, pw = _same_pads(x.shape[1], kh, sh, dh), _same_pads(x.shape[2], kw, sw, dw)
        if any(ph + pw):
            x = np.pad(x, ((0, 0), ph, pw, (0, 0)))
    oh = (x.shape[1] - (kh - 1) * dh - 1) // sh + 1
    ow = (x.shape[2] - (kw - 1) * dw - 1) // sw + 1
    return x, oh, ow


def patches(layer: QuantizedNeuralLayer, x: np.ndarray, sel: np.ndarray | None = None
            ) -> np.ndarray:
    """Input patches of a conv layer: ``(N·H'·W', kh, kw, C)`` (float64), as the conv reads;
    with a boolean ``sel`` over those rows only the selected ones (built directly, in order).

    Example:
        >>> patches(conv_layer, x).shape  # doctest: +SKIP
        (N * H_out * W_out, 3, 3, C)
    """
    (kh, kw), (sh, sw), (dh, dw) = _geometry(layer)
    x, oh, ow = _grid(layer, x)
    if sel is not None:
        n, rest = np.divmod(np.flatnonzero(sel), oh * ow)
        r, c = np.divmod(rest, ow)
        out = np.empty((len(n), kh, kw, x.shape[3]))
        for i in range(kh):
            for j in range(kw):
                out[:, i, j, :] = x[n, r * sh + i * dh, c * sw + j * dw, :]
        return out
    if (kh, kw, sh, sw) == (1, 1, 1, 1):  # a 1x1 conv reads its input as it is
        return x.reshape(-1, 1, 1, x.shape[3])
    out = np.empty((x.shape[0], oh, ow, kh, kw, x.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out[:, :, :, i, j, :] = x[:, i * dh:i * dh + (oh - 1) * sh + 1:sh,
                                      j * dw:j * dw + (ow - 1) * sw + 1:sw, :]
    return out.reshape(-1, kh, kw, x.shape[3])


def _rows_of(layer: QuantizedNeuralLayer, x: np.ndarray, sel: np.ndarray | None = None
             ) -> np.ndarray:
    """``(groups, n, d)`` input rows of ``layer`` for inputs ``x`` (one group unless
    depthwise); with a boolean ``sel`` over the rows, only the selected ones."""
    layout = rows_layout(layer)
    if layout == "dense":
        rows = np.asarray(x, np.float64).reshape(1, -1, x.shape[-1])
        return rows if sel is None else rows[:, sel]
    if layout == "depthwise":
        return _depthwise_rows(layer, x, sel)
    p = patches(layer, x, sel)
    return p.reshape(1, p.shape[0], -1)


def _depthwise_rows(layer: QuantizedNeuralLayer, x: np.ndarray, sel: np.ndarray | None
                    ) -> np.ndarray:
    """``(C, n, kh*kw)`` rows of a depthwise conv with the values of :func:`patches`.

    A view of a channel-major array whose rows are contiguous along ``n``, so each channel's
    ``X^T X`` is one BLAS call (a strided view of the patches took numpy's non-BLAS loop:
    34 s for 25 frames of 112x112x96; this takes 3 s)."""
    (kh, kw), (sh, sw), (dh, dw) = _geometry(layer)
    x, oh, ow = _grid(layer, x)
    height, width = x.shape[1], x.shape[2]
    xt = np.ascontiguousarray(x.transpose(3, 0, 1, 2)).reshape(x.shape[3], -1)  # (C, N·H·W)
    idx = np.flatnonzero(sel) if sel is not None else np.arange(x.shape[0] * oh * ow)
    n, rest = np.divmod(idx, oh * ow)
    r, c = np.divmod(rest, ow)
    out = np.empty((x.shape[3], kh * kw, len(idx)))  # (C, taps, n): rows of taps contiguous
    for i in range(kh):
        for j in range(kw):
            flat = (n * height + r * sh + i * dh) * width + c * sw + j * dw
            np.take(xt, flat, axis=1, out=out[:, i * kw + j, :])
    return out.transpose(0, 2, 1)


def _rows_per_sample(layer: QuantizedNeuralLayer, x: np.ndarray) -> int:
    """Rows one sample like ``x[0]`` gives (without building them)."""
    if rows_layout(layer) == "dense":
        return math.prod(x.shape[1:-1])
    _, oh, ow = _grid(layer, x[:1, ..., :1])
    return oh * ow


#: Work budget of :func:`input_moments` in multiply-adds per layer (``rows * groups * d^2``,
#: well under a second of BLAS on 2 cores): a layer whose calibration frames give more patch rows
#: than ``max(MOMENT_BUDGET / (groups * d^2), MIN_ROWS_PER_DIM * d)`` uses a seeded random
#: subset of that many rows (only those rows are built). The bench models (d <= 96, <= 50,176
#: rows, depthwise groups <= 64) are never subsampled; a 3x3 depthwise conv on 112x112x96 with
#: 20 frames keeps about half of its rows.
MOMENT_BUDGET = 1e9
MIN_ROWS_PER_DIM = 4
#: Bytes of float64 input patches :class:`Moments` builds at a time: fewer than ``chunk``
#: samples per piece when one sample's patches are large (e.g. 1 sample of a 3x3 depthwise
#: conv on 112x112x96: 87 MB); the bench models (28x28 inputs) keep pieces of 16.
PATCH_BUDGET = 64 * 2**20


def _row_fraction(layer: QuantizedNeuralLayer, x: np.ndarray, frames: int | None = None
                  ) -> float:
    """Fraction of patch rows :func:`input_moments` keeps (1: all) from ``frames`` samples
    like ``x[:1]``, see :data:`MOMENT_BUDGET`."""
    probe = _rows_of(layer, x[:1])
    groups, d = probe.shape[0], probe.shape[-1]
    total = probe.shape[1] * (len(x) if frames is None else frames)
    cap = max(MOMENT_BUDGET / (groups * d * d), MIN_ROWS_PER_DIM * d)
    return 1.0 if total <= cap else cap / total


class Moments:
    """Streamed :func:`input_moments`: feed a layer's inputs in any sub-batches with
    :meth:`add`, read :meth:`result`. ``frames`` is the total number of samples that will be
    fed (it sets the row subsampling of :data:`MOMENT_BUDGET`); the samples are processed in
    pieces of ``chunk`` whatever the sub-batches, so the result is the same for any split.

    Example:
        >>> acc = Moments(dense_layer, frames=4)  # doctest: +SKIP
        >>> acc.add(x[:3]); acc.add(x[3:]); acc.result().shape  # doctest: +SKIP
        (1, 3, 3)
    """

    def __init__(self, layer: QuantizedNeuralLayer, frames: int, center: bool = False,
                 with_float: bool = False, chunk: int = 16):
        self.layer, self.frames, self.center = layer, int(frames), center
        self.with_float, self.chunk = with_float, int(chunk)
        self.keep: float | None = None
        self.rng = np.random.default_rng(0)
        self.parts: list | None = None
        self.n = 0
        self.pending: list[tuple[np.ndarray, np.ndarray | None]] = []
        self.pending_len = 0

    def add(self, x: np.ndarray, x_float: np.ndarray | None = None) -> None:
        """Feed the inputs ``x`` (and the float model's ``x_float``) of more samples."""
        x = np.asarray(x)
        if self.keep is None:
            self.keep = _row_fraction(self.layer, x[:1], self.frames)
            probe = _rows_of(self.layer, x[:1])
            self.chunk = max(1, min(self.chunk, int(PATCH_BUDGET // (8 * probe.size))))
        self.pending.append((x, None if x_float is None else np.asarray(x_float)))
        self.pending_len += len(x)
        while self.pending_len >= self.chunk:
            self._take(self.chunk)

    def _take(self, count: int) -> None:
        xs, fs, got = [], [], 0
        while got < count:
            x, xf = self.pending[0]
            take = min(count - got, len(x))
            xs.append(x[:take])
            fs.append(None if xf is None else xf[:take])
            if take == len(x):
                self.pending.pop(0)
            else:
                self.pending[0] = (x[take:], None if xf is None else xf[take:])
            got += take
        self.pending_len -= count
        x = xs[0] if len(xs) == 1 else np.concatenate(xs)
        xf = None
        if self.with_float:
            xf = fs[0] if len(fs) == 1 else np.concatenate(fs)
        self._accumulate(x, xf)

    def _accumulate(self, x: np.ndarray, x_float: np.ndarray | None) -> None:
        sel = None
        if self.keep < 1:  # the same draws as selecting from all rows, without building them
            sel = self.rng.random(len(x) * _rows_per_sample(self.layer, x)) < self.keep
        rows = _rows_of(self.layer, x, sel)
        rows_t = rows.transpose(0, 2, 1)  # (matmul runs in BLAS; einsum here did not)
        parts = [rows_t @ rows, rows.sum(axis=1)]
        if x_float is not None:
            rows_f = _rows_of(self.layer, x_float, sel)
            parts += [rows_t @ rows_f, rows_f.sum(axis=1)]
        if self.parts is None:
            self.parts = parts
        else:
            self.parts = [a + b for a, b in zip(self.parts, parts, strict=True)]
        self.n += rows.shape[1]

    def result(self):
        """``H`` (``(groups, d, d)``), or ``(H, C)`` when fed with float inputs; once (the
        accumulated sums become the result)."""
        if self.pending_len:
            self._take(self.pending_len)
        if self.parts is None:
            why = "result() was already read" if self.n else "no inputs were fed"
            raise ValueError(f"layer {self.layer.name!r}: {why}")
        n = max(self.n, 1)
        total, first, *rest = self.parts
        self.parts = None  # the sums become the result in place (d = 4608: 170 MB each)
        h = total
        h /= n
        if self.center:
            h -= np.einsum("gd,ge->gde", first / n, first / n)
        if not rest:
            return h
        cross, first_f = rest
        c = cross
        c /= n
        if self.center:
            c -= np.einsum("gd,ge->gde", first / n, first_f / n)
        return h, c


def input_moments(layer: QuantizedNeuralLayer, x: np.ndarray, center: bool = False,
                  x_float: np.ndarray | None = None, chunk: int = 16):
    """``(groups, d, d)``: the input second moment(s) ``X^T X / n`` of ``layer`` on ``x``.

    Conv2D / Dense: one group shared by all output channels (``d = kh·kw·cin`` or ``cin``);
    DepthwiseConv2D: one ``kh·kw`` group per input channel. ``center``: the covariance.
    With ``x_float`` (the float model's inputs of the layer, same samples) returns
    ``(H, C)`` with the cross moment ``C = X^T X_f / n``. Streamed over ``chunk`` samples at a
    time (patches are ``kh·kw`` times the input); :class:`Moments` takes the samples in
    sub-batches.

    Example:
        >>> input_moments(dense_layer, np.ones((4, 3))).shape  # doctest: +SKIP
        (1, 3, 3)
    """
    acc = Moments(layer, len(x), center, x_float is not None, chunk)
    acc.add(x, x_float)
    return acc.result()


# --------------------------------------------------------------------------- the optimization


def _energy(q: np.ndarray, w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``(q - w)^T H (q - w)`` per row of ``q``/``w`` (``(m, d)``)."""
    r = q - w
    return ((r @ h) * r).sum(axis=1)  # (BLAS; einsum did not use it)


def _gptq(w: np.ndarray, h: np.ndarray, qmax: int, fixed: np.ndarray, damp: float):
    """Greedy rounding with error compensation (rows of ``w`` share ``h``)."""
    d = w.shape[1]
    h = h.copy()
    diag = np.diag(h).copy()
    dead = diag <= 0
    h[dead, dead] = 1.0
    h[np.diag_indices(d)] += damp * max(float(np.mean(np.diag(h))), 1e-30)
    order = np.argsort(-np.diag(h), kind="stable")
    hp = h[np.ix_(order, order)]
    del h  # large layers (d = 4608): keep at most three d x d arrays alive
    try:
        hp = np.linalg.inv(hp)
        u = np.linalg.cholesky(hp).T  # upper: H^-1 = U^T U
    except np.linalg.LinAlgError:
        return None
    del hp
    work = w[:, order].copy()
    fix = fixed[:, order]
    target = np.clip(np.floor(w[:, order] + 0.5), -qmax, qmax)  # nearest at fixed positions
    q = np.zeros_like(work)
    for j in range(d):
        col = np.clip(np.floor(work[:, j] + 0.5), -qmax, qmax)
        col = np.where(fix[:, j], target[:, j], col)
        q[:, j] = col
        err = (work[:, j] - col) / u[j, j]
        work[:, j:] -= err[:, None] * u[j, j:][None, :]
    out = np.empty_like(q)
    out[:, order] = q
    return out


def _local(q: np.ndarray, w: np.ndarray, h: np.ndarray, qmax: int, fixed: np.ndarray,
           sweeps: int) -> np.ndarray:
    """Coordinate descent on ``(q - w)^T H (q - w)`` with single ``±1`` steps."""
    q = q.copy()
    g = (q - w) @ h  # gradient / 2 per row
    diag = np.diag(h)
    for _ in range(sweeps):
        changed = False
        for j in range(q.shape[1]):
            if diag[j] <= 0:
                continue
            best = np.zeros(len(q))
            gain = np.zeros(len(q))
            for step in (-1.0, 1.0):
                delta = 2.0 * step * g[:, j] + diag[j]
                ok = (np.abs(q[:, j] + step) <= qmax) & ~fixed[:, j] & (delta < gain - 1e-12
                                                                        * diag[j])
                best = np.where(ok, step, best)
                gain = np.where(ok, delta, gain)
            moved = np.flatnonzero(best)
            if moved.size:  # only the rows that moved change their gradient (same values)
                changed = True
                q[moved, j] += best[moved]
                g[moved] += best[moved, None] * h[j][None, :]
        if not changed:
            break
    return q


def optimize_rows(w: np.ndarray, h: np.ndarray, qmax: int, options: WeightRounding,
                  fixed: np.ndarray | None = None, target: np.ndarray | None = None):
    """Integer rows ``q`` for real rows ``w`` (in units of the scale, ``|w| <= qmax``).

    Returns ``(q, nearest)`` as int64 arrays; each row of ``q`` has an energy no higher than
    its nearest rounding. The ``fixed`` positions (default: where ``|w|`` reaches ``qmax``,
    the elements the scale comes from) keep their nearest rounding ``±qmax``. ``target``
    (default ``w``): the real rows whose ``H``-distance is minimized (nearest rounding stays
    that of ``w``).

    Example:
        >>> h = np.array([[1.0, 0.9], [0.9, 1.0]])
        >>> q, q0 = optimize_rows(np.array([[0.4, 0.4], [7.0, 0.3]]), h, 7, WeightRounding())
        >>> q.tolist(), q0.tolist()   # row 0: [1, 0] and [0, 1] tie; both beat [0, 0]
        ([[0, 1], [7, 0]], [[0, 0], [7, 0]])
    """
    w = np.asarray(w, np.float64)
    nearest = np.clip(np.floor(w + 0.5), -qmax, qmax)
    if fixed is None:
        fixed = np.abs(w) >= qmax - 1e-9
    target = w if target is None else np.where(fixed, nearest, target)
    q = nearest
    if options.method == "gptq":
        greedy = _gptq(target, h, qmax, fixed, options.damp)
        if greedy is not None:
            q = greedy
    q = _local(q, target, h, qmax, fixed, options.sweeps)
    better = _energy(q, target, h) < _energy(nearest, target, h)
    q = np.where(better[:, None], q, nearest)
    return q.astype(np.int64), nearest.astype(np.int64)


def _rows(layer, kernel: np.ndarray) -> np.ndarray:
    """Kernel -> ``(groups, m, d)`` rows that share one moment matrix per group."""
    if rows_layout(layer) == "depthwise":  # (kh, kw, C, mult) -> (C, mult, kh*kw)
        kh, kw, c, mult = kernel.shape
        return kernel.reshape(kh * kw, c, mult).transpose(1, 2, 0)
    return kernel.reshape(-1, kernel.shape[-1]).T[None]  # (1, out, d)


def _unrows(layer, rows: np.ndarray, shape) -> np.ndarray:
    if rows_layout(layer) == "depthwise":
        kh, kw, c, mult = shape
        return rows.transpose(2, 0, 1).reshape(shape)
    return rows[0].T.reshape(shape)


def _ls_target(rows: np.ndarray, h: np.ndarray, c: np.ndarray, damp: float) -> np.ndarray:
    """Rows ``w* = (H + λ)^-1 (C w + λ w)``: least squares of ``X_q w* ≈ X_f w``, regularized
    toward ``w`` with ``λ = damp·mean(diag H)``."""
    d = h.shape[0]
    lam = damp * max(float(np.mean(np.diag(h))), 1e-30) + 1e-12
    a = h.copy()  # H + λI with one d x d temporary (d = 4608: 170 MB)
    a[np.diag_indices(d)] += lam
    return np.linalg.solve(a, c @ rows.T + lam * rows.T).T


def optimize_layer(layer: QuantizedNeuralLayer, x: np.ndarray, options: WeightRounding,
                   x_float: np.ndarray | None = None):
    """Integer kernel for ``layer`` given its inputs ``x`` (or their streamed :class:`Moments`);
    ``(w_q, nearest, h)`` (int64).

    With ``x_float`` (and ``options.target == "float"``) the float model's output is the
    target."""
    w_q, scale, *_ = layer.quantized_weights()
    scale = np.asarray(ops.convert_to_numpy(scale), np.float64)
    eff = np.asarray(ops.convert_to_numpy(layer.effective_kernel()), np.float64)
    w = eff / scale
    if isinstance(x, Moments):  # already streamed
        moments, use_float = x.result(), x.with_float
    else:
        use_float = x_float is not None and options.target == "float"
        moments = input_moments(layer, x, options.center, x_float if use_float else None)
    h, c = moments if use_float else (moments, None)
    rows, fixed = _rows(layer, w), _rows(layer, _tops(layer, eff))
    q = np.empty(rows.shape, np.int64)
    if rows.shape[0] > 1:  # depthwise: every channel's small problem at once
        q[:] = _optimize_groups(rows, h, c, layer.qmax, options, fixed)
        return _unrows(layer, q, w.shape), np.asarray(ops.convert_to_numpy(w_q), np.int64), h
    targets = [None if c is None else _ls_target(rows[g], h[g], c[g], options.damp)
               for g in range(rows.shape[0])]
    moments = c = None  # C is no longer needed: free it before the rounding
    for g in range(rows.shape[0]):
        q[g], _ = optimize_rows(rows[g], h[g], layer.qmax, options, fixed[g], targets[g])
    return _unrows(layer, q, w.shape), np.asarray(ops.convert_to_numpy(w_q), np.int64), h


def _optimize_groups(w: np.ndarray, h: np.ndarray, c: np.ndarray | None, qmax: int,
                     options: WeightRounding, fixed: np.ndarray) -> np.ndarray:
    """:func:`optimize_rows` (with :func:`_ls_target` when ``c`` is given) for ``G`` groups at
    once: ``w``/``fixed`` ``(G, m, d)``, ``h``/``c`` ``(G, d, d)``; the same steps group by
    group, vectorized over the groups (a depthwise layer has one small problem per channel)."""
    w = np.asarray(w, np.float64)
    eye = np.eye(w.shape[2])
    nearest = np.clip(np.floor(w + 0.5), -qmax, qmax)
    target = w
    if c is not None:
        lam = options.damp * np.maximum(np.mean(np.einsum("gii->gi", h), axis=1), 1e-30) + 1e-12
        rhs = c @ w.transpose(0, 2, 1) + lam[:, None, None] * w.transpose(0, 2, 1)
        target = np.linalg.solve(h + lam[:, None, None] * eye, rhs).transpose(0, 2, 1)
        target = np.where(fixed, nearest, target)
    q = nearest
    if options.method == "gptq":
        q = _gptq_groups(target, h, qmax, fixed, options.damp, nearest)
    q = _local_groups(q, target, h, qmax, fixed, options.sweeps)
    energy = lambda v: (((v - target) @ h) * (v - target)).sum(axis=-1)  # noqa: E731
    better = energy(q) < energy(nearest)
    return np.where(better[..., None], q, nearest).astype(np.int64)


def _gptq_groups(w, h, qmax, fixed, damp, nearest):
    """:func:`_gptq` over a leading group axis (a group whose ``H`` fails keeps ``nearest``)."""
    g_, m, d = w.shape
    h = h.copy()
    diag = np.einsum("gii->gi", h).copy()
    dead = diag <= 0
    idx = np.arange(d)
    h[:, idx, idx] = np.where(dead, 1.0, diag)
    h += (damp * np.maximum(np.mean(np.einsum("gii->gi", h), axis=1), 1e-30))[:, None, None] \
        * np.eye(d)
    order = np.argsort(-np.einsum("gii->gi", h), axis=1, kind="stable")
    hp = np.take_along_axis(np.take_along_axis(h, order[:, :, None], 1), order[:, None, :], 2)
    ok = np.ones(g_, bool)
    u = np.zeros_like(hp)
    try:
        u = np.linalg.cholesky(np.linalg.inv(hp)).transpose(0, 2, 1)
    except np.linalg.LinAlgError:
        for k in range(g_):
            try:
                u[k] = np.linalg.cholesky(np.linalg.inv(hp[k])).T
            except np.linalg.LinAlgError:
                ok[k] = False
                u[k] = np.eye(d)
    work = np.take_along_axis(w, order[:, None, :], 2).copy()
    fix = np.take_along_axis(fixed, order[:, None, :], 2)
    tgt = np.clip(np.floor(work + 0.5), -qmax, qmax)
    q = np.zeros_like(work)
    for j in range(d):
        col = np.clip(np.floor(work[:, :, j] + 0.5), -qmax, qmax)
        col = np.where(fix[:, :, j], tgt[:, :, j], col)
        q[:, :, j] = col
        err = (work[:, :, j] - col) / u[:, j, j][:, None]
        work[:, :, j:] -= err[:, :, None] * u[:, None, j, j:]
    out = np.empty_like(q)
    np.put_along_axis(out, np.broadcast_to(order[:, None, :], q.shape), q, 2)
    return np.where(ok[:, None, None], out, nearest)


def _local_groups(q, w, h, qmax, fixed, sweeps):
    """:func:`_local` over a leading group axis."""
    q = q.copy()
    g = (q - w) @ h
    diag = np.einsum("gii->gi", h)
    for _ in range(sweeps):
        changed = False
        for j in range(q.shape[2]):
            dj = diag[:, j][:, None]
            best = np.zeros(q.shape[:2])
            gain = np.zeros(q.shape[:2])
            for step in (-1.0, 1.0):
                delta = 2.0 * step * g[:, :, j] + dj
                ok = ((np.abs(q[:, :, j] + step) <= qmax) & ~fixed[:, :, j]
                      & (delta < gain - 1e-12 * dj) & (dj > 0))
                best = np.where(ok, step, best)
                gain = np.where(ok, delta, gain)
            if np.any(best != 0):
                changed = True
                q[:, :, j] += best
                g += best[:, :, None] * h[:, j, None, :]
        if not changed:
            break
    return q


def _tops(layer, eff: np.ndarray) -> np.ndarray:
    """Where each output channel reaches its ``max|w|`` (the elements its scale comes from)."""
    mag = np.abs(eff)
    return mag >= np.max(mag, axis=layer.scale_axes, keepdims=True)


# --------------------------------------------------------------------------- storing


def set_integer_kernel(layer: QuantizedNeuralLayer, w_q: np.ndarray,
                       keep_latent: bool = True) -> None:
    """Make ``layer`` compute with the integer weights ``w_q`` (any values in ``[-qmax, qmax]``).

    The integers are held by the layer's weight quantizer itself
    (:meth:`QuantizedNeuralLayer.set_integer_kernel`: ``kernel_offset = w_q - nearest``), so
    nothing is reverse-engineered and the per-channel scale never moves. With ``keep_latent``
    the float kernel is left as it is (QAT starts from the original float weights, the integers
    follow ``nearest + offset``); otherwise every weight except each channel's maximum (the
    scale's source) first becomes its grid point ``q·s`` (the offsets are then zero wherever
    float32 reproduces the grid point). Values are in effective units (divided by a folded
    ``kernel_unit`` if any).

    Example:
        >>> set_integer_kernel(layer, w_q)  # doctest: +SKIP
    """
    w_q = np.asarray(w_q, np.int64)
    shape = tuple(layer.kernel.shape)
    if w_q.shape != shape or np.any(np.abs(w_q) > layer.qmax):
        raise ValueError(f"layer {layer.name!r}: integer kernel must have shape {shape} and "
                         f"values in [-{layer.qmax}, {layer.qmax}]")
    _, scale, *_ = layer.quantized_weights()
    scale = np.asarray(ops.convert_to_numpy(scale), np.float64)
    if not keep_latent:
        _snap_to_grid(layer, w_q, scale)
    layer.set_integer_kernel(w_q)
    got_scale = np.asarray(ops.convert_to_numpy(layer.quantized_weights()[1]))
    if not (np.array_equal(layer.integer_kernel(), w_q) and np.array_equal(got_scale, scale)):
        raise RuntimeError(f"layer {layer.name!r}: the integer kernel or the scale moved")


def _snap_to_grid(layer: QuantizedNeuralLayer, w_q: np.ndarray, scale: np.ndarray) -> None:
    """Float kernel on the grid points ``w_q·s`` where that keeps each channel's ``max|w|``
    (the scale): the maxima keep their stored value, over-the-max elements step back an ulp."""
    eff = np.asarray(ops.convert_to_numpy(layer.effective_kernel()), np.float64)
    top = _tops(layer, eff) & (eff != 0)
    kernel = layer.kernel.numpy()
    new = w_q * scale
    if layer.kernel_unit is not None:
        new = new / layer.unit_array()
    new = new.astype(kernel.dtype)
    if layer.kernel_unit is None:
        # a grid point ±qmax·s may round (float32) one ulp above the channel's max: use the max
        # element's own stored value there, so max|w| and with it the scale stay the same
        top_val = np.max(np.where(top, np.abs(kernel), 0), axis=layer.scale_axes,
                         keepdims=True)
        new = np.where(np.abs(w_q) == layer.qmax, np.sign(w_q) * top_val, new)
    kernel = np.where(top, kernel, new).astype(kernel.dtype)
    limit = np.max(np.abs(eff), axis=layer.scale_axes, keepdims=True)
    for _ in range(4):  # with a folded kernel_unit: step over-the-max elements back by an ulp
        layer.kernel.assign(kernel)
        over = ~top & (np.abs(np.asarray(ops.convert_to_numpy(layer.effective_kernel()),
                                         np.float64)) > limit)
        if not np.any(over):
            break
        kernel = np.where(over, np.nextafter(kernel, np.zeros_like(kernel)), kernel)


def encode(w_q: np.ndarray) -> str:
    """int8 bytes of ``w_q`` (C order) in base64.

    Example:
        >>> decode(encode(np.array([[1, -7]])), (1, 2)).tolist()
        [[1, -7]]
    """
    return base64.b64encode(np.asarray(w_q, np.int8).tobytes()).decode("ascii")


def decode(text: str, shape) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), np.int8)
    if raw.size != math.prod(shape):
        raise ValueError(f"{raw.size} recorded weights for a kernel of shape {tuple(shape)}")
    return raw.astype(np.int64).reshape(shape)


def apply_recorded_rounding(layer: QuantizedNeuralLayer, entry: dict) -> None:
    """Re-apply the integer kernel recorded in a q-config ``entry`` (``weight_rounding``)."""
    record = entry.get("weight_rounding")
    if record is None:
        return
    if not isinstance(record, dict) or not isinstance(record.get("kernel"), str):
        raise ValueError(f"q_config: layer {layer.name!r} weight_rounding must be a dict with a "
                         f"base64 'kernel', got {str(record)[:80]!r}")
    if record.get("weight_bits") != layer.weight_bits:
        warnings.warn(f"quantize: layer {layer.name!r} now has {layer.weight_bits}-bit weights; "
                      f"its recorded weight_rounding (for {record.get('weight_bits')} bits) is "
                      "dropped and nearest rounding is used", stacklevel=2)
        entry.pop("weight_rounding")
        return
    try:
        w_q = decode(record["kernel"], tuple(layer.kernel.shape))
        set_integer_kernel(layer, w_q, bool(record.get("keep_latent", True)))
    except (ValueError, TypeError, base64.binascii.Error) as err:
        raise ValueError(f"q_config: layer {layer.name!r} weight_rounding does not fit this "
                         f"model: {err}") from err


# --------------------------------------------------------------------------- the pass


def _reconstruction(layer, h, w_q) -> float:
    """Mean output energy ``sum_o (w_q - w/s)_o^T H (w_q - w/s)_o · s_o^2`` (diagnostics)."""
    _, scale, *_ = layer.quantized_weights()
    scale = np.asarray(ops.convert_to_numpy(scale), np.float64)
    eff = np.asarray(ops.convert_to_numpy(layer.effective_kernel()), np.float64)
    err = _rows(layer, w_q * scale - eff)
    return float(sum(((err[g] @ h[g]) * err[g]).sum() for g in range(len(err))))


def output_error(layer, x, w_q) -> float:
    """``sum over outputs of E[((w_q·s - w)·x)^2]`` of ``layer`` on inputs ``x``.

    Example:
        >>> output_error(layer, x, layer_integer_kernel)  # doctest: +SKIP
    """
    return _reconstruction(layer, input_moments(layer, x, False), np.asarray(w_q, np.int64))


#: Bytes the cached layer inputs of the frames may take in :func:`optimize_rounding` (the live
#: tensors of the quantized and the float model, float32): more frames than fit are not used.
#: The bench models (28x28 inputs) keep all 256 default frames; MobileNetV2 1.0 @ 224 keeps
#: 21 (bench/studies/frame_cap_study.py: what fewer frames cost on the bench models).
CACHE_BUDGET = 320 * 2**20


def frame_cap(models, budget: int | None = None) -> int:
    """How many frames :func:`optimize_rounding` / bias correction may cache for ``models``
    (run side by side): ``budget`` (default :data:`CACHE_BUDGET`) over their peak live float32
    elements per frame.

    Example:
        >>> x = keras.Input((224, 224, 3))
        >>> frame_cap([keras.Model(x, keras.layers.Conv2D(32, 3, strides=2)(x))])
        153
    """
    budget = CACHE_BUDGET if budget is None else budget
    per_frame = 4 * sum(layerwise.live_elements(m) for m in models if m is not None)
    return max(1, int(budget // max(per_frame, 1)))


def optimize_rounding(qmodel: keras.Model, frames: np.ndarray, options: WeightRounding,
                      verbose: bool = True, float_model: keras.Model | None = None
                      ) -> dict[str, dict]:
    """Optimize the integer weights of ``qmodel``'s low-bit layers in place (execution order).

    ``float_model`` (the float model ``qmodel`` was made from, after the same graph rewrites,
    layer names matching) is needed for ``target="float"``. The models run once, one operation
    at a time (:class:`fixedq.models.layerwise.LayerwiseRun`): each layer's inputs come from
    the layers before it as already optimized. At most :func:`frame_cap` of the ``frames`` are
    used (memory: :data:`CACHE_BUDGET`).

    Returns ``{layer: {"before": E_nearest, "after": E_opt, "changed": n}}`` with the output
    energies on the frames; each optimized layer's q-config gets ``weight_rounding``.
    """
    layers = [ly for ly in qmodel.layers if rows_layout(ly) is not None
              and ly.weight_bits <= options.max_bits]
    done = [ly.name for ly in layers if ly.qconfig.get("weight_rounding") is not None]
    if done:
        raise ValueError(f"layers {done} already carry a weight_rounding from the q_config; "
                         "remove those entries to compute new ones")
    if options.target == "float" and float_model is None:
        raise ValueError("weight_rounding target='float' needs the float model")
    float_names = {ly.name for ly in float_model.layers} if float_model is not None else set()
    report: dict[str, dict] = {}
    if not layers:
        return report
    use_float = options.target == "float" and float_model is not None
    models = [qmodel, float_model if use_float else None]
    frames = np.asarray(frames)[:frame_cap(models)]
    chunk = min(layerwise.chunk_for(m, len(frames)) for m in models if m is not None)
    qrun = layerwise.LayerwiseRun(qmodel, frames, chunk)
    frun = layerwise.LayerwiseRun(float_model, frames, chunk) if use_float else None
    bar = Progress("weight rounding", total=len(layers), unit="layers", enabled=verbose)
    for i, layer in enumerate(layers):
        x_parts = qrun.value(layer.input)
        f_parts = None
        if frun is not None and layer.name in float_names:
            f_parts = frun.value(float_model.get_layer(layer.name).input)
            if tuple(f_parts[0].shape) != tuple(x_parts[0].shape):
                f_parts = None
        acc = Moments(layer, len(frames), options.center, f_parts is not None)
        for k, part in enumerate(x_parts):
            acc.add(ops.convert_to_numpy(part),
                    None if f_parts is None else ops.convert_to_numpy(f_parts[k]))
        w_q, nearest, h = optimize_layer(layer, acc, options)
        report[layer.name] = {"before": _reconstruction(layer, h, nearest),
                              "after": _reconstruction(layer, h, w_q),
                              "changed": int(np.count_nonzero(w_q != nearest))}
        set_integer_kernel(layer, w_q, options.keep_latent)
        layer.qconfig["weight_rounding"] = {"method": options.method, "target": options.target,
                                            "keep_latent": options.keep_latent,
                                            "weight_bits": layer.weight_bits,
                                            "kernel": encode(w_q)}
        bar.update(i + 1, f"{layer.name}, {len(frames)} frames")
    bar.close()
    return report
