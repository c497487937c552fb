"""The compiled transformer steps (fixedq/engine/fast/transformer.py) equal the reference
kernels on every element: ``layernorm`` (eq. 47), ``madnorm`` (eq. 31), ``attention_softmax``
(eq. 30b), ``attention`` (eq. 30, shiftmax) and ``add_pos`` (eq. 33) on crafted programs at
worst-case magnitudes, ties, huge and negative shifts, degenerate rows (constant rows, equal or
clipped scores, distances past the table, zero tables), both division paths and both
accumulator widths; past their proven bounds the steps run the reference (and raise where it
raises); a quantized Keras model with position embeddings, MultiHeadAttention and
LayerNormalization is bit-exact through them (masks: the quantized attention has none)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import fixedq
import fixedq.engine as fe
from fixedq.engine.fast import jit
from fixedq.engine.fast.transformer import AddPosStep, AttentionStep, LayerNormStep, MadNormStep
from fixedq.engine.ops import Op, run_op
from fixedq.layers.softmax import EXP_BITS, exp_table
from fixedq.layers.transformers import intops

pytestmark = pytest.mark.skipif(not jit.enabled(), reason="numba (the engine extra) missing")

DTYPES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-(2**15), 2**15 - 1)}


def _worst(rng, shape, dtype):
    """Random integers of ``dtype`` with rows at the extremes, alternating, constant and
    one-hot (the last axis is the normalized / key axis)."""
    lo, hi = DTYPES[dtype] if dtype in DTYPES else (-(2**12), 2**12)
    x = rng.integers(lo, hi + 1, shape)
    flat = x.reshape(-1, shape[-1])
    d = shape[-1]
    pats = [np.full(d, hi), np.full(d, lo), np.tile([lo, hi], d)[:d], np.zeros(d),
            np.r_[hi, np.zeros(d - 1)], np.r_[np.full(d - 1, lo), hi], np.full(d, 1)]
    for i, p in enumerate(pats[:len(flat)]):
        flat[(i * 3) % len(flat)] = p
    return x.astype(dtype if dtype in DTYPES else np.int64)


def _check(step, op, xs, expect="compiled"):
    got = step(xs)
    want = run_op(op, [x.astype(np.int64) for x in xs])
    assert step.last.startswith(expect), step.last
    assert got.shape == want.shape
    np.testing.assert_array_equal(got.astype(np.int64), want)
    return got


# --------------------------------------------------------------------------- layernorm


def _ln_op(rng, d, eps=2**20, nf=12, align=3, shift=(8, 16), mult=2**8, lo=-128, hi=127):
    return Op("ln", "layernorm", ["x"], {"eps_int": eps, "norm_frac": nf}, {
        "in_align": rng.integers(0, align + 1, d),
        "multiplier": rng.integers(-mult, mult + 1, d),
        "shift": rng.integers(shift[0], shift[1] + 1, d),
        "offset": rng.integers(-(2**12), 2**12, d),
        "out_lo": np.full(d, lo), "out_hi": np.full(d, hi)})


@pytest.mark.parametrize("d", [1, 2, 3, 7, 64, 65, 256])
@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "int64"])
def test_layernorm_equals_reference_at_worst_case_magnitudes(d, dtype):
    rng = np.random.default_rng(d)
    eps = int(rng.choice([0, 1, 2**30]))
    op = _ln_op(rng, d, eps=eps, nf=int(rng.integers(0, 17)), lo=-(2**15), hi=2**15 - 1)
    x = _worst(rng, (3, 11, d), dtype)
    top = int(np.abs(x.astype(np.int64) << op.arrays["in_align"]).max())
    if d**4 * top**2 + eps >= 2**62:  # int16 at D = 256: past eq. 47's int64 bound
        with pytest.raises(ValueError, match="leave the exact int64 range"):
            LayerNormStep(op)([x])
        return
    _check(LayerNormStep(op), op, [x])


@pytest.mark.parametrize("shift", [(1, 1), (-3, 0), (40, 62), (0, 62)])
def test_layernorm_ties_negative_and_huge_shifts(shift):
    """shift 1 with multiplier 1 makes every odd ``z`` a tie; negative shifts multiply."""
    rng = np.random.default_rng(5)
    op = _ln_op(rng, 16, shift=shift, mult=1 if shift == (1, 1) else 2**14, lo=-(2**31),
                hi=2**31 - 1)
    _check(LayerNormStep(op), op, [_worst(rng, (40, 16), "int8")])


@pytest.mark.parametrize("nf,exact", [(18, True), (19, False), (26, False)])
def test_layernorm_float_estimate_division_and_its_integer_fallback(nf, exact):
    """D = 4: the numerator bound 2^(32+f)·2 + 2^31 is below 2^52 up to f = 18 (float64
    estimate, largest numerators at int8 extremes), above from 19 (integer division)."""
    rng = np.random.default_rng(nf)
    op = _ln_op(rng, 4, eps=0, nf=nf, align=0, shift=(nf + 4, nf + 10), mult=2**8,
                lo=-(2**20), hi=2**20)
    step = LayerNormStep(op)
    x = np.concatenate([_worst(rng, (50, 4), "int8"),
                        np.array([[-128, 127, 127, 127], [127, -128, -128, -128],
                                  [0, 0, 0, 1], [-1, 0, 0, 0]], np.int8)])
    _check(step, op, [x])
    assert step.consts[4][-3] is exact


def test_layernorm_past_its_bounds_runs_or_raises_as_the_reference():
    rng = np.random.default_rng(0)
    big = _ln_op(rng, 4, nf=40)  # 30 + f + log2 D > 62: reference kernel
    _check(LayerNormStep(big), big, [_worst(rng, (5, 4), "int8")], expect="reference")
    op = _ln_op(rng, 4, eps=0, align=0)
    step = LayerNormStep(op)
    with pytest.raises(ValueError, match="leave the exact int64 range"):
        step([np.array([[0, 0, 0, 2**40]], np.int64)])
    assert step.last == "reference"
    # just inside the bound D^4·max|v|^2 < 2^62 (int64 input: the batch decides)
    _check(step, op, [np.array([[0, 0, 0, 2**26 - 1], [2**26 - 1, 0, -(2**26 - 1), 5]])])


# --------------------------------------------------------------------------- attention


def _att_op(rng, heads, dq, dv, nk, dtypes, align=3, smult=None, sshift=None, acc=31,
            table=None, pf=8, phi=None, out_shift=(3, 12), out=(-128, 127), bounds=None):
    table = exp_table(8, EXP_BITS) if table is None else np.asarray(table, np.int64)
    al = [rng.integers(0, align + 1, heads * c) for c in (dq, dq, dv)]
    top = [max(abs(v) for v in DTYPES.get(t, (-(2**20), 2**20))) for t in dtypes]
    score = dq * (top[0] << int(al[0].max())) * (top[1] << int(al[1].max()))
    phi = (1 << pf) - 1 if phi is None else phi
    obound = nk * phi * (top[2] << int(al[2].max()))
    attrs = {"score_frac": 8, "exp_bits": EXP_BITS, "k_max": 0, "prob_frac": pf,
             "prob_hi": phi, "num_heads": heads,
             "score_bound": score if bounds is None else bounds[0],
             "score_multiplier": int(rng.integers(1, 256)) if smult is None else smult,
             "score_shift": int(rng.integers(6, 20)) if sshift is None else sshift,
             "acc_lo": -(1 << acc), "acc_hi": (1 << acc) - 1,
             "out_bound": obound if bounds is None else bounds[1]}
    arrays = {"align0": al[0], "align1": al[1], "align2": al[2], "exp_table": table,
              "out_shift": rng.integers(out_shift[0], out_shift[1] + 1, heads * dv),
              "out_lo": np.full(heads * dv, out[0]), "out_hi": np.full(heads * dv, out[1])}
    return Op("att", "attention_softmax", ["q", "k", "v"], attrs, arrays)


def _qkv(rng, b, nq, nk, heads, dq, dv, dtypes):
    return [_worst(rng, (b, n, heads * c), t)
            for n, c, t in ((nq, dq, dtypes[0]), (nk, dq, dtypes[1]), (nk, dv, dtypes[2]))]


@pytest.mark.parametrize("b,nq,nk,heads,dq,dv", [(2, 64, 64, 4, 16, 16), (2, 5, 7, 1, 3, 2),
                                                 (1, 1, 1, 2, 1, 1), (3, 9, 3, 3, 4, 5),
                                                 (1, 6, 17, 2, 8, 3)])
@pytest.mark.parametrize("dtypes", [("int8",) * 3, ("uint8", "int8", "uint8"),
                                    ("int8", "int8", "int16")])
def test_attention_equals_reference_on_every_shape(b, nq, nk, heads, dq, dv, dtypes):
    """Cross-attention (Nq != Nk), value width != key width, a last query block of 1-3,
    one key; int32 accumulators (the bound allows)."""
    rng = np.random.default_rng(nq * 7 + nk)
    op = _att_op(rng, heads, dq, dv, nk, dtypes)
    step = AttentionStep(op)
    _check(step, op, _qkv(rng, b, nq, nk, heads, dq, dv, dtypes))
    if dtypes[2] != "int16":  # (int16 values: int64 P·V from 2^31 on)
        assert step.last == "compiled int32/int32"


def test_attention_int64_accumulators_past_2_31():
    """int16 inputs aligned by up to 3 bits: scores up to 8·2^36, ``p·v`` up to
    12·(2^12 - 1)·2^18 (both int64)."""
    rng = np.random.default_rng(3)
    dtypes = ("int16", "int16", "int16")
    op = _att_op(rng, 2, 8, 4, 12, dtypes, smult=1, sshift=30, pf=12, out_shift=(20, 40))
    step = AttentionStep(op)
    _check(step, op, _qkv(rng, 2, 12, 12, 2, 8, 4, dtypes))
    assert step.last == "compiled int64/int64"


@pytest.mark.parametrize("case", ["equal", "clipped", "past_table", "zero_table", "negative",
                                  "tiny_phi", "huge_shift"])
def test_attention_degenerate_rows(case):
    """All scores equal (uniform rows), scores clipped to a narrow accumulator (many ties for
    the maximum), distances past a short table (its last entry), a table of zeros (the sum
    floored to 1), negative score multiplier and shift, prob_hi below 2^f, out shifts of
    -3 / 62."""
    rng = np.random.default_rng(len(case))
    kw = {"equal": {}, "clipped": {"acc": 3, "sshift": 2},
          "past_table": {"table": [2**15, 2**14, 2**12, 7, 0, 1], "sshift": 4},
          "zero_table": {"table": [0, 0, 0]},
          "negative": {"smult": -77, "sshift": -2},
          "tiny_phi": {"phi": 3, "pf": 15},
          "huge_shift": {"out_shift": (-3, 62), "out": (-(2**40), 2**40)}}[case]
    dtypes = ("int8",) * 3
    op = _att_op(rng, 2, 4, 4, 10, dtypes, **kw)
    xs = _qkv(rng, 3, 10, 10, 2, 4, 4, dtypes)
    if case == "equal":
        xs[0][:] = 0
        xs[1][1] = 5
    _check(AttentionStep(op), op, xs)


@pytest.mark.parametrize("pf,exact", [(15, True), (26, True), (27, False), (36, False)])
def test_attention_softmax_division_paths(pf, exact):
    """Eq. 39's numerator ``e·2^(f+1) + E`` (table up to 2^24, 6 keys) is below 2^52 up to
    f = 26 (float64 estimate, corrected), above from f = 27 (integer division)."""
    rng = np.random.default_rng(pf)
    dtypes = ("int8",) * 3
    op = _att_op(rng, 1, 4, 4, 6, dtypes, pf=pf, phi=(1 << min(pf, 30)) - 1,
                 out_shift=(pf, pf + 8), out=(-(2**40), 2**40))
    step = AttentionStep(op)
    xs = _qkv(rng, 4, 5, 6, 1, 4, 4, dtypes)
    _check(step, op, xs)
    assert step._plan(*xs, step.consts[(4, 4)])[1][13] is exact


def test_attention_crafted_bounds_keep_the_reference():
    """A score_bound / out_bound below what the inputs reach puts the reference in float32,
    whose sums may round: the step proves its bound against that dtype's limit and runs the
    reference kernel itself (same integers as the reference, whatever they are)."""
    rng = np.random.default_rng(9)
    dtypes = ("int16", "int16", "int8")
    op = _att_op(rng, 1, 16, 4, 8, dtypes, bounds=(0, 0), smult=1, sshift=30)
    _check(AttentionStep(op), op, _qkv(rng, 2, 8, 8, 1, 16, 4, dtypes),
           expect="reference")


def _shiftmax_op(rng, heads, dq, dv, nk, dtypes, sf=8, eb=15, pf=8, **kw):
    """The ``attention`` op (eq. 30, shiftmax) with the constants quantize gives it."""
    op = _att_op(rng, heads, dq, dv, nk, dtypes, table=intops.exp2_table(sf, eb), pf=pf, **kw)
    op = Op("att", "attention", op.inputs, dict(op.attrs), op.arrays)
    op.attrs.update(score_frac=sf, exp_bits=eb, k_max=intops.shiftmax_k_max(nk, eb))
    return op


@pytest.mark.parametrize("b,nq,nk,heads,dq,dv,sf,eb,pf", [
    (2, 17, 17, 2, 16, 16, 8, 15, 8), (3, 5, 7, 1, 3, 2, 4, 7, 3), (1, 1, 1, 2, 1, 1, 0, 0, 0),
    (2, 9, 3, 3, 4, 5, 12, 20, 20), (1, 6, 50, 2, 8, 3, 16, 8, 14)])
def test_shiftmax_attention_equals_reference(b, nq, nk, heads, dq, dv, sf, eb, pf):
    """Eq. 29 in the kernel: score grids 0-16 bits (tables of 1 to 2^16 entries), exponent
    sums needing k up to k_max, probabilities shifted left (k < prob_frac) and right."""
    rng = np.random.default_rng(nq + sf)
    dtypes = ("int8", "uint8", "int8")
    op = _shiftmax_op(rng, heads, dq, dv, nk, dtypes, sf=sf, eb=eb, pf=pf)
    xs = _qkv(rng, b, nq, nk, heads, dq, dv, dtypes)
    xs[0][0] = 0  # a sample whose scores are all equal
    _check(AttentionStep(op), op, xs)


@pytest.mark.parametrize("case", ["clipped", "negative", "huge_shift"])
def test_shiftmax_attention_degenerate_rows(case):
    rng = np.random.default_rng(len(case) + 1)
    kw = {"clipped": {"acc": 3, "sshift": 2}, "negative": {"smult": -77, "sshift": -2},
          "huge_shift": {"out_shift": (-3, 62), "out": (-(2**40), 2**40)}}[case]
    dtypes = ("int8",) * 3
    op = _shiftmax_op(rng, 2, 4, 4, 10, dtypes, **kw)
    _check(AttentionStep(op), op, _qkv(rng, 3, 10, 10, 2, 4, 4, dtypes))


def test_shiftmax_attention_past_its_bounds_keeps_the_reference():
    """A table shorter than 2^score_frac (damaged: the reference itself fails), k_max past 29
    (eq. 29d's 2^(2k+1) past int64): the reference kernel."""
    rng = np.random.default_rng(2)
    dtypes = ("int8",) * 3
    xs = _qkv(rng, 1, 4, 4, 1, 4, 4, dtypes)
    op = _shiftmax_op(rng, 1, 4, 4, 4, dtypes)
    op.attrs["k_max"] = 30
    _check(AttentionStep(op), op, xs, expect="reference")
    op = _shiftmax_op(rng, 1, 4, 4, 4, dtypes)
    op.arrays["exp_table"] = op.arrays["exp_table"][:100]
    step = AttentionStep(op)
    with pytest.raises(IndexError):
        step(xs)
    assert step.last == "reference"


# --------------------------------------------------------------------------- madnorm


def _mad_op(rng, d, eps=2**10, nf=12, shift=(8, 16), mult=2**8, out=(-128, 127)):
    op = _ln_op(rng, d, eps=eps, nf=nf, shift=shift, mult=mult, lo=out[0], hi=out[1])
    return Op("mad", "madnorm", ["x"], op.attrs, op.arrays)


@pytest.mark.parametrize("d", [1, 2, 7, 32, 65])
@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "int64"])
def test_madnorm_equals_reference_at_worst_case_magnitudes(d, dtype):
    rng = np.random.default_rng(d + 1)
    op = _mad_op(rng, d, eps=int(rng.choice([0, 1, 2**30])), nf=int(rng.integers(0, 17)),
                 out=(-(2**15), 2**15 - 1))
    _check(MadNormStep(op), op, [_worst(rng, (3, 11, d), dtype)])


@pytest.mark.parametrize("nf,shift", [(12, (1, 1)), (0, (-3, 0)), (20, (40, 62)), (26, (30, 40)),
                                      (40, (50, 62))])
def test_madnorm_ties_shifts_and_both_division_paths(nf, shift):
    """shift 1 and multiplier +-1: ties; f = 26 at int16 extremes puts the numerators past
    2^52 (integer division); f = 40 past 2^62 (the reference)."""
    rng = np.random.default_rng(nf)
    op = _mad_op(rng, 16, nf=nf, shift=shift, mult=1 if shift == (1, 1) else 2**6,
                 out=(-(2**40), 2**40))
    step = MadNormStep(op)
    _check(step, op, [_worst(rng, (30, 16), "int16")],
           expect="reference" if nf == 40 else "compiled")


# --------------------------------------------------------------------------- add_pos


def _pos_op(rng, t, c, shift, pos_bits=20, out=(-128, 127)):
    return Op("pos", "add_pos", ["x"], {}, {
        "pos": rng.integers(-(2**pos_bits), 2**pos_bits + 1, (t, c)),
        "in_align": rng.integers(0, 9, c), "shift": rng.integers(shift[0], shift[1] + 1, c),
        "out_lo": np.full(c, out[0]), "out_hi": np.full(c, out[1])})


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "int64"])
@pytest.mark.parametrize("shift", [(1, 1), (-4, 0), (0, 62), (30, 62)])
def test_add_pos_equals_reference(dtype, shift):
    """Ties (shift 1), left shifts, shifts up to 62, embeddings at +-2^20."""
    rng = np.random.default_rng(len(dtype) + shift[1])
    op = _pos_op(rng, 5, 6, shift, out=(-(2**40), 2**40))
    _check(AddPosStep(op), op, [_worst(rng, (4, 5, 6), dtype)])


def test_add_pos_past_int64_or_other_shapes_runs_the_reference():
    rng = np.random.default_rng(1)
    op = _pos_op(rng, 3, 4, (-45, -45))  # ((x << a) + pos) << 45 may pass 2^63
    _check(AddPosStep(op), op, [_worst(rng, (2, 3, 4), "int16")], expect="reference")
    op = _pos_op(rng, 1, 4, (2, 5))  # one position for every token (broadcast)
    _check(AddPosStep(op), op, [_worst(rng, (2, 3, 4), "int8")], expect="reference")


# --------------------------------------------------------------------------- Keras model


def test_quantized_keras_attention_model_is_exact_through_the_compiled_steps():
    keras.utils.set_random_seed(0)
    L = keras.layers
    x = keras.Input((6, 8))
    x1 = x + L.Embedding(6, 8)(keras.ops.arange(6))
    y = L.LayerNormalization(epsilon=1e-6)(x1)
    h = L.Add()([x1, L.MultiHeadAttention(2, 4)(y, y)])
    y = L.Dense(8)(L.Dense(12, activation="gelu")(L.LayerNormalization()(h)))
    model = keras.Model(x, L.Dense(3)(L.GlobalAveragePooling1D()(L.Add()([h, y]))))
    rng = np.random.default_rng(0)
    calib = rng.normal(size=(32, 6, 8)).astype("float32")
    q = fixedq.quantize(model, samples=calib, verbose=False)
    engine = fe.convert(q)
    # far outside the calibrated range too: saturation everywhere, still bit-exact
    probe = np.concatenate([calib[:8], 50 * np.sign(calib[:4]), np.zeros_like(calib[:2]),
                            np.full_like(calib[:2], 1e4)])
    np.testing.assert_array_equal(engine.predict(probe), q.predict(probe, verbose=0))
    plan = engine.fast_plan()
    ran = {op.kind: step.last for op, step in zip(engine.ops, plan.steps, strict=True)
           if op.kind in ("layernorm", "attention_softmax", "add_pos")}
    assert set(ran) == {"layernorm", "attention_softmax", "add_pos"}
    assert all(v.startswith("compiled") for v in ran.values()), ran
