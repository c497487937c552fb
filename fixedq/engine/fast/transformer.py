"""Compiled plan steps of the transformer ops: ``layernorm`` (eq. 47), ``madnorm`` (eq. 31),
``attention_softmax`` (eq. 30b, Keras ``MultiHeadAttention``), ``attention`` (eq. 30,
shiftmax) and ``add_pos`` (eq. 33).

Each step runs :mod:`.transformer_kernels` when it can prove, before the kernel runs, that
every integer the kernel computes is exactly the reference's (:mod:`fixedq.engine.layernorm`,
:mod:`fixedq.engine.transformer_ops`), and the reference kernel otherwise (its output narrowed
as every reference step of the plan). What is proven, from the op's constants (when the plan is
built) and from the input dtype's range or, when that is not enough, the batch's per-channel
``max |x|`` (one pass):

- layernorm: ``D^4·max|v|^2 + eps < 2^62`` (the reference's own condition: past it, the
  reference runs and raises), ``30 + norm_frac + log2 D <= 62`` (no int64 wrap anywhere; the
  numerator ``|2·num + r| < 2^(32+f)·sqrt(D) + 2^31``), the normalized ``|z| <= 2·sqrt(D)·2^f
  + 2`` times the multiplier without wrap in the affine's shift; the float-estimate division
  when the numerator is below 2^52.
- attention: the scores ``|q·k| <= max_h sum_c max|q_c|·max|k_c|`` below the limit of the
  exact dtype the reference picks from the op's ``score_bound`` (float32: 2^24, float64: 2^53,
  int64: 2^62; a crafted ``score_bound`` the inputs exceed keeps the reference), likewise
  ``|p·v| <= Nk·|prob_hi|·max|v_c|`` against ``out_bound``; int32 accumulators below 2^31;
  the score and output products and eq. 39's ``e·2^(f+1) + E`` without int64 wrap; for
  shiftmax (eq. 29) ``Nk·max|table| < 2^31`` (the square of eq. 29d's sum), ``k_max <= 29``,
  ``exp_bits + 2 <= 62``, ``max|table| << prob_frac < 2^62`` and a table of at least
  ``2^score_frac`` entries.
- madnorm: ``|c·2D·2^f + den| <= 4D^2·2^f·max|v| + 2D^2·max|v| + eps`` below 2^62 (float
  estimate below 2^52), ``|z| <= D·2^f + 1`` times the multiplier without wrap.
- add_pos: ``(max|x| << align + max|pos|) << left < 2^63``.

Example:
    >>> import numpy as np
    >>> from fixedq.engine.ops import Op
    >>> op = Op("ln", "layernorm", ["x"], {"eps_int": 0, "norm_frac": 4},
    ...         {"in_align": np.zeros(1, np.int64), "multiplier": np.ones(1, np.int64),
    ...          "shift": np.zeros(1, np.int64), "offset": np.zeros(1, np.int64),
    ...          "out_lo": np.array([-128]), "out_hi": np.array([127])})
    >>> LayerNormStep(op)([np.array([[1, 2, 3, 4]], np.int8)]).tolist()
    [[-21, -7, 7, 21]]
"""

from __future__ import annotations

from functools import lru_cache
from types import FunctionType, SimpleNamespace

import numpy as np

from fixedq.engine import kernels as ref
from fixedq.engine.fast import jit, transformer_kernels
from fixedq.engine.fast.plan import _absmax, _reference, _vec, narrow_dtype, shift_parts
from fixedq.engine.layernorm import NEWTON_STEPS

INT32_EXACT = 2**31
INT64_SAFE = 2**62
#: float64 estimate of a quotient within one of it (then one integer correction)
FLOAT_DIV_EXACT = 2**52
#: limit of every partial sum in the dtype the reference's exact_matmul picks for a bound
CLASS_LIMIT = {"float32": ref.FLOAT32_EXACT, "float64": ref.FLOAT64_EXACT, "int64": INT64_SAFE}
HELPERS = ("floor_log2_scalar", "isqrt_scalar", "shiftmax_row")
ACC = {"int32": np.int32, "int64": np.int64}


@lru_cache(maxsize=1)
def _compiled():
    try:
        import numba
    except ImportError:  # pragma: no cover - depends on the environment
        return None

    def build(cache):
        opts = {"cache": cache, "nogil": True, "error_model": "numpy"}

        def compiled(name, scope, suffix=""):
            fn = getattr(transformer_kernels, name)
            # a copy reading ``scope`` (compiled helpers, accumulator dtypes) as its globals
            copy = FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__,
                                fn.__closure__)
            copy.__qualname__ = fn.__qualname__ + suffix  # (own name: own cache entry)
            return numba.njit(**opts)(copy)

        scope = dict(vars(transformer_kernels))
        for name in HELPERS:
            scope[name] = compiled(name, scope)
        attention = {}
        for qn, qt in ACC.items():  # one attention kernel per accumulator dtype pair
            for on, ot in ACC.items():
                variant = dict(scope, ACC_Q=qt, ACC_O=ot)
                attention[qn, on] = compiled("attention_rows", variant, f"__{qn}_{on}")
        return SimpleNamespace(layernorm_rows=compiled("layernorm_rows", scope),
                               madnorm_rows=compiled("madnorm_rows", scope),
                               add_pos_rows=compiled("add_pos_rows", scope),
                               attention_rows=attention)

    try:  # on-disk cache next to the module when writable
        return build(True)
    except RuntimeError:  # pragma: no cover - no writable cache location
        return build(False)


def backend():
    """The compiled transformer kernels, or ``None`` (numba missing, or
    ``FIXEDQ_ENGINE_COMPILED=0``)."""
    return _compiled() if jit.requested() else None


def sqrt_up(n: int) -> int:
    """Smallest integer ``>= sqrt(n)``.

    Example:
        >>> [sqrt_up(n) for n in (1, 4, 5, 64, 65)]
        [1, 2, 3, 8, 9]
    """
    r = int(np.sqrt(n))
    while r * r < n:
        r += 1
    while r > 0 and (r - 1) ** 2 >= n:
        r -= 1
    return r


def _dtype_absmax(dt) -> int | None:
    """Largest ``|v|`` of an integer dtype narrower than int64, else ``None``."""
    if dt.kind not in "iu" or dt.itemsize >= 8:
        return None
    info = np.iinfo(dt)
    return max(-int(info.min), int(info.max))


def _channel_max(x: np.ndarray, align: np.ndarray, batch: bool) -> list[int]:
    """Per-channel ``max |x_c << align_c|`` (Python ints): from the dtype's range, or with
    ``batch`` (or an int64 input) from the batch itself."""
    top = None if batch else _dtype_absmax(x.dtype)
    if top is None:
        nb = jit.backend()
        x2 = x.reshape(-1, x.shape[-1])
        m = _absmax(nb, x2) if nb is not None else ref.channel_absmax(x2)
        return [int(v) << int(a) for v, a in zip(m, align, strict=True)]
    return [top << int(a) for a in align]


def _ok_shifts(a) -> bool:
    return a is not None and not np.any(a < 0) and not np.any(a > 62)


def _requant_parts(r, c: int, shift_key: str = "shift"):
    """``(left, s1, up, lo, hi)`` of a half-up requantization by ``r[shift_key]`` with the
    clip ``[out_lo, out_hi]``, or ``None``."""
    parts = shift_parts(r[shift_key], c)
    lo, hi = _vec(r["out_lo"], c), _vec(r["out_hi"], c)
    if parts is None or lo is None or hi is None:
        return None
    return (*parts, lo, hi)


class LayerNormStep:
    """``layernorm`` (eq. 47 and its affine) through :func:`layernorm_rows`."""

    def __init__(self, op):
        self.op = op
        self.consts: dict[int, tuple | None] = {}
        #: what the last batch ran: "compiled" or "reference"
        self.last = ""

    def _build(self, d: int):
        a, r = self.op.attrs, self.op.arrays
        align, mult, offset = (_vec(r[k], d) for k in ("in_align", "multiplier", "offset"))
        parts = _requant_parts(r, d)
        eps, nf = int(a["eps_int"]), int(a["norm_frac"])
        if parts is None or mult is None or offset is None or not _ok_shifts(align) \
                or eps < 0 or nf < 0 or 30 + nf + (d - 1).bit_length() > 62:
            return None
        left = parts[0]
        root = sqrt_up(d)
        num = (1 << (32 + nf)) * root + (1 << 31)  # |2·num + r| below this
        zmax = 2 * root * (1 << nf) + 2  # |z| at most this
        if num >= INT64_SAFE or any((zmax * abs(int(m)) + abs(int(o))) << int(s) >= 2**63
                                    for m, o, s in zip(mult, offset, left, strict=True)):
            return None
        lo, hi = parts[3], parts[4]
        return (align, eps, nf, mult, offset, *parts, num < FLOAT_DIV_EXACT, NEWTON_STEPS,
                narrow_dtype(lo, hi))

    def _fits(self, x, align, eps) -> bool:
        """The reference's condition ``D^4·max|v|^2 + eps < 2^62`` (dtype, else batch)."""
        d = x.shape[-1]
        for batch in (False, True):
            top = max(_channel_max(x, align, batch), default=0)
            if d**4 * top * top + eps < INT64_SAFE:
                return True
            if _dtype_absmax(x.dtype) is None:
                return False
        return False

    def __call__(self, xs):
        x, nb = xs[0], backend()
        self.last = "reference"
        if nb is None or x.ndim < 2 or x.size == 0:
            return _reference(self.op, xs)
        d = x.shape[-1]
        if d not in self.consts:
            self.consts[d] = self._build(d)
        k = self.consts[d]
        if k is None or not self._fits(x, k[0], k[1]):
            return _reference(self.op, xs)  # (raises past the bound)
        self.last = "compiled"
        rows = np.ascontiguousarray(x).reshape(-1, d)
        out = np.empty(rows.shape, k[-1])
        nb.layernorm_rows(rows, *k[:-1], out)
        return out.reshape(x.shape)


class AttentionStep:
    """``attention_softmax`` (eq. 30b) and ``attention`` (eq. 30, shiftmax) through
    :func:`attention_rows`."""

    def __init__(self, op):
        a, r = op.attrs, op.arrays
        self.op = op
        self.heads = int(a["num_heads"])
        self.table = np.ascontiguousarray(np.asarray(r["exp_table"], np.int64).ravel())
        self.smult, sshift = int(a["score_multiplier"]), int(a["score_shift"])
        self.sparts = None
        self.shiftmax = np.zeros(0, np.int64)
        if op.kind == "attention":  # eq. 29's constants, checked in _plan
            self.shiftmax = np.array([int(a["score_frac"]), int(a["exp_bits"]) + 2,
                                      int(a["k_max"]), int(a["prob_frac"])], np.int64)
        if -62 <= sshift <= 62 and np.asarray(r["exp_table"]).ndim == 1 and self.table.size:
            self.sparts = tuple(int(p[0]) for p in shift_parts(np.array([sshift]), 1))
        self.acc = (int(a["acc_lo"]), int(a["acc_hi"]))
        self.pf, self.phi = int(a["prob_frac"]), int(a["prob_hi"])
        self.limits = (CLASS_LIMIT[ref.exact_dtype(int(a["score_bound"]))],
                       CLASS_LIMIT[ref.exact_dtype(int(a["out_bound"]))])
        self.consts: dict[tuple, tuple | None] = {}
        #: what the last batch ran: "reference" or "compiled <score acc>/<output acc>"
        self.last = ""

    def _build(self, cq: int, cv: int):
        r = self.op.arrays
        al = [_vec(r[f"align{i}"], c) for i, c in enumerate((cq, cq, cv))]
        parts = _requant_parts(r, cv, "out_shift")
        if parts is None or not all(_ok_shifts(v) for v in al) or self.pf > 60:
            return None
        return (*al, parts)

    def _bounds(self, q, k, v, al, batch):
        """``(score bound, output bound)`` from the dtypes or the batch."""
        h, cq = self.heads, q.shape[-1]
        qm, km, vm = (_channel_max(t, a, batch) for t, a in zip((q, k, v), al, strict=True))
        dq = cq // h
        score = max(sum(qm[c] * km[c] for c in range(i * dq, (i + 1) * dq)) for i in range(h))
        return score, k.shape[1] * abs(self.phi) * max(vm)

    def _plan(self, q, k, v, consts):
        """Kernel arguments for this batch, or ``None`` (the reference)."""
        a0, a1, a2, (oleft, os1, oup, olo, ohi) = consts
        al = (a0, a1, a2)
        for batch in (False, True):
            score, obound = self._bounds(q, k, v, al, batch)
            if score < self.limits[0] and obound < self.limits[1]:
                break
            if batch or all(_dtype_absmax(t.dtype) is None for t in (q, k, v)):
                return None
        sleft, ss1, sup = self.sparts
        sprod = (score * abs(self.smult)) << sleft
        lo, hi = self.acc
        sabs = max(abs(min(max(b, lo), hi)) for b in (-(sprod >> ss1) - 1, (sprod >> ss1) + 1))
        tmax = int(np.abs(self.table).max())
        nk, pf1 = k.shape[1], 1 << (self.pf + 1)
        num = tmax * pf1 + nk * tmax
        if self.shiftmax.size:
            sf, eb2, kmax, pfrac = (int(t) for t in self.shiftmax)
            if nk * tmax >= INT32_EXACT or kmax > 29 or eb2 > 62 or sf > 24 or \
                    self.table.size < (1 << sf) or tmax << pfrac >= INT64_SAFE:
                return None
            num = 0  # (no division)
        if sprod >= 2**63 or 2 * sabs >= 2**63 or num >= INT64_SAFE or any(
                obound << int(s) >= 2**63 for s in oleft):
            return None
        acc = tuple("int32" if bound < INT32_EXACT else "int64" for bound in (score, obound))
        return acc, (a0, a1, a2, self.heads, self.smult, sleft, ss1, sup, lo, hi, self.table,
                     pf1, self.phi, num < FLOAT_DIV_EXACT, self.shiftmax, oleft, os1, oup,
                     olo, ohi)

    def __call__(self, xs):
        nb = backend()
        self.last = "reference"
        if nb is None or self.sparts is None or len(xs) != 3:
            return _reference(self.op, xs)
        q, k, v = xs
        h = self.heads
        if not (q.ndim == k.ndim == v.ndim == 3 and q.shape[0] == k.shape[0] == v.shape[0]
                and k.shape[1] == v.shape[1] and q.shape[2] == k.shape[2]
                and q.shape[2] % h == 0 and v.shape[2] % h == 0 and q.size and k.size
                and v.size):
            return _reference(self.op, xs)
        key = (q.shape[2], v.shape[2])
        if key not in self.consts:
            self.consts[key] = self._build(*key)
        got = None if self.consts[key] is None else self._plan(q, k, v, self.consts[key])
        if got is None:
            return _reference(self.op, xs)
        acc, args = got
        self.last = f"compiled {acc[0]}/{acc[1]}"
        out = np.empty((q.shape[0], q.shape[1], v.shape[2]), narrow_dtype(args[-2], args[-1]))
        # one input dtype for the kernel (int16, else int64): fewer compiled variants, at the
        # price of a copy of the (small) inputs
        dt = np.int16 if all(t.dtype.kind in "iu" and t.dtype.itemsize <= 2 and
                             t.dtype != np.uint16 for t in xs) else np.int64
        q, k, v = (np.ascontiguousarray(t, dtype=dt) for t in xs)
        nb.attention_rows[acc](q, k, v, *args, out)
        return out


class MadNormStep:
    """``madnorm`` (eq. 31 and its affine) through :func:`madnorm_rows`."""

    def __init__(self, op):
        self.op = op
        self.consts: dict[int, tuple | None] = {}
        #: what the last batch ran: "compiled" or "reference"
        self.last = ""

    def _build(self, d: int):
        a, r = self.op.attrs, self.op.arrays
        align, mult, offset = (_vec(r[k], d) for k in ("in_align", "multiplier", "offset"))
        parts = _requant_parts(r, d)
        eps, nf = int(a["eps_int"]), int(a["norm_frac"])
        if parts is None or mult is None or offset is None or not _ok_shifts(align) \
                or eps < 0 or not 0 <= nf <= 62:
            return None
        zmax = d * (1 << nf) + 1  # |z| at most this
        if any((zmax * abs(int(m)) + abs(int(o))) << int(s) >= 2**63
               for m, o, s in zip(mult, offset, parts[0], strict=True)):
            return None
        return align, eps, nf, mult, offset, parts, narrow_dtype(parts[3], parts[4])

    def __call__(self, xs):
        x, nb = xs[0], backend()
        self.last = "reference"
        if nb is None or x.ndim < 2 or x.size == 0:
            return _reference(self.op, xs)
        d = x.shape[-1]
        if d not in self.consts:
            self.consts[d] = self._build(d)
        k = self.consts[d]
        if k is None:
            return _reference(self.op, xs)
        align, eps, nf, mult, offset, parts, dt = k
        for batch in (False, True):
            top = max(_channel_max(x, align, batch), default=0)
            num = 4 * d * d * (1 << nf) * top + 2 * d * d * top + eps
            if num < INT64_SAFE or _dtype_absmax(x.dtype) is None:
                break
        if num >= INT64_SAFE:
            return _reference(self.op, xs)
        self.last = "compiled"
        rows = np.ascontiguousarray(x).reshape(-1, d)
        out = np.empty(rows.shape, dt)
        nb.madnorm_rows(rows, align, eps, nf, mult, offset, *parts, num < FLOAT_DIV_EXACT, out)
        return out.reshape(x.shape)


class AddPosStep:
    """``add_pos`` (eq. 33) through :func:`add_pos_rows` when ``pos`` is one ``(T, C)`` table
    of the input's tokens and channels."""

    def __init__(self, op):
        self.op = op
        self.pos = np.ascontiguousarray(np.asarray(op.arrays["pos"], np.int64))
        self.consts: dict[int, tuple | None] = {}
        #: what the last batch ran: "compiled" or "reference"
        self.last = ""

    def _build(self, c: int):
        r = self.op.arrays
        align, parts = _vec(r["in_align"], c), _requant_parts(r, c)
        if parts is None or not _ok_shifts(align):
            return None
        return align, parts, narrow_dtype(parts[3], parts[4])

    def __call__(self, xs):
        x, nb = xs[0], backend()
        self.last = "reference"
        if nb is None or x.ndim != 3 or x.size == 0 or self.pos.shape != x.shape[1:]:
            return _reference(self.op, xs)
        c = x.shape[-1]
        if c not in self.consts:
            self.consts[c] = self._build(c)
        k = self.consts[c]
        if k is None:
            return _reference(self.op, xs)
        align, parts, dt = k
        top = max(_channel_max(x, align, False), default=0) + int(np.abs(self.pos).max())
        if top << int(parts[0].max(initial=0)) >= 2**63:
            return _reference(self.op, xs)
        self.last = "compiled"
        out = np.empty(x.shape, dt)
        nb.add_pos_rows(np.ascontiguousarray(x), align, self.pos, *parts, out)
        return out


#: op kind -> step class
STEPS = {"layernorm": LayerNormStep, "madnorm": MadNormStep, "attention_softmax": AttentionStep,
         "attention": AttentionStep, "add_pos": AddPosStep}
