"""The ``rounding`` attribute of the requantizing engine ops (eq. 5b/7b).

Every requantizing kind, with every rule, computes exactly what :mod:`fixedq.tensors.rounding`
defines (on ties in particular); an absent attribute is the default half up, bit-identical to
the pre-attribute ops; the dense and event paths and a saved/loaded file agree; the ONNX export
refuses a non-default rule naming the op.
"""

from __future__ import annotations

import numpy as np
import pytest

import fixedq.engine as fe
from fixedq.engine.model import Model
from fixedq.engine.ops import Op, run_op
from fixedq.tensors.rounding import ROUNDINGS, requantize, shift_round

RULES = ("half_up", "half_even", "half_away")


def ties(n=64, seed=0) -> np.ndarray:
    """Values with many exact ties for shifts 1..3 (odd multiples of 1/2, 1/4, 1/8)."""
    rng = np.random.default_rng(seed)
    return rng.integers(-40, 41, size=(n, 4)) * 2 + rng.integers(0, 2, size=(n, 4))


def lims():
    return {"out_lo": np.array([-10**6]), "out_hi": np.array([10**6])}


@pytest.mark.parametrize("rule", ROUNDINGS)
def test_every_requantizing_kind_follows_its_rule(rule):
    x = ties()
    shift = np.array([1, 2, 3, 1])
    mult = np.array([3, 5, 7, 1])
    cases = {
        "shift": ({"shift": shift, **lims()}, [x], shift_round(x, shift, rule)),
        "affine": ({"multiplier": mult, "offset": np.array([1, -1, 0, 2]), "shift": shift,
                    **lims()}, [x], shift_round(x * mult + np.array([1, -1, 0, 2]), shift,
                                                rule)),
        "concat": ({"shift0": shift, "shift1": shift, **lims()}, [x, -x],
                   np.concatenate([shift_round(x, shift, rule), shift_round(-x, shift, rule)],
                                  axis=1)),
        "add": ({"align0": np.array([0]), "align1": np.array([1]), "shift": shift, **lims()},
                [x, x], shift_round(x + 2 * x, shift, rule)),
        "gap": ({"multiplier": mult, "shift": shift, **lims()}, [x[:, None, None, :]],
                requantize(x, mult, shift, -10**6, 10**6, rule)),
    }
    for kind, (arrays, xs, want) in cases.items():
        attrs = {"rounding": rule, "axis": 1} if kind == "concat" else {"rounding": rule}
        got = run_op(Op("y", kind, [f"x{i}" for i in range(len(xs))], attrs, arrays), xs)
        np.testing.assert_array_equal(got, want, err_msg=f"{kind} {rule}")


def test_rules_differ_on_ties_only():
    x = np.array([5, -5, 6, -6, 7, -7])  # /2: 2.5 -2.5 3 -3 3.5 -3.5
    op = Op("y", "shift", ["x"], {}, {"shift": np.array([1]), **lims()})
    default = run_op(op, [x]).tolist()
    assert default == [3, -2, 3, -3, 4, -3]
    got = {}
    for rule in RULES:
        op.attrs["rounding"] = rule
        got[rule] = run_op(op, [x]).tolist()
    assert got["half_up"] == default
    assert got["half_even"] == [2, -2, 3, -3, 4, -4]
    assert got["half_away"] == [3, -3, 3, -3, 4, -4]
    op.attrs["rounding"] = "fp32"  # eq. 7c: float32 arithmetic, ties to even
    assert run_op(op, [x]).tolist() == got["half_even"]


@pytest.mark.parametrize("bad", ["xnnpack", "float32", "FP32"])
def test_fp32_rule_is_validated_by_name(bad, tmp_path):
    program = _neural_program("fp32")
    path = tmp_path / "p.fqe"
    program.save(path)
    assert fe.load(path).ops[1].attrs["rounding"] == "fp32"
    program.ops[1].attrs["rounding"] = bad
    program.save(path)
    with pytest.raises(ValueError, match=r"attrs\.rounding: expected one of .*'fp32'"):
        fe.load(path)


def _neural_program(rule: str | None) -> Model:
    rng = np.random.default_rng(1)
    kernel = rng.integers(-7, 8, size=(3, 3, 2, 4))
    attrs = {"type": "conv2d", "strides": [1, 1], "dilation_rate": [1, 1], "padding": "same",
             "acc_lo": -(2**31), "acc_hi": 2**31 - 1, "accum_bound": 3 * 3 * 2 * 7 * 128,
             "accum_dtype": "float32", "weight_bits": 4}
    if rule is not None:
        attrs["rounding"] = rule
    ops = [Op("x", "input", [], {}, {"frac": np.array([0]), "lo": np.array([-128]),
                                     "hi": np.array([127])}),
           Op("c", "neural", ["x"], attrs,
              {"kernel": kernel, "bias": np.array([3, -2, 0, 1]),
               "multiplier": np.array([1 << 30, 3 << 28, 1 << 29, 5 << 27]),
               "shift": np.array([33, 33, 32, 34]), "out_lo": np.array([-128]),
               "out_hi": np.array([127])})]
    return Model(ops, [{"tensor": "c", "name": "c", "frac": [0]}], (None, 6, 6, 2))


@pytest.mark.parametrize("rule", [None, *ROUNDINGS])
def test_neural_rule_dense_event_file(rule, tmp_path):
    program = _neural_program(rule)
    q = np.random.default_rng(2).integers(-128, 128, size=(40, 6, 6, 2)).astype(np.float32)
    op = program.ops[1]
    acc = run_op(Op("lin", "neural", ["x"], {**op.attrs, "rounding": "half_up"},
                    {**op.arrays, "multiplier": np.ones(4, np.int64),
                     "shift": np.zeros(4, np.int64), "out_lo": np.array([-(2**40)]),
                     "out_hi": np.array([2**40])}), [q.astype(np.int64)])
    want = requantize(acc, op.arrays["multiplier"], op.arrays["shift"], -128, 127,
                      rule or "half_up")
    dense = program.predict(q, output="int")
    np.testing.assert_array_equal(dense, want)
    np.testing.assert_array_equal(program.predict(q, output="int", mode="event"), want)
    path = tmp_path / "p.fqe"
    program.save(path)
    np.testing.assert_array_equal(fe.load(path).predict(q, output="int"), want)
    # the compiled path takes the rule as a parameter (tests/engine/test_fast_rounding.py);
    # the NumPy path's float64 requantization is half up only: the int64 reference there
    from fixedq.engine.fast import jit

    assert jit.enabled() and program.fast_plan().steps[1].fast
    if rule not in (None, "half_up"):
        from fixedq.engine.kernels import NeuralPlan

        assert not NeuralPlan(op).float_requant


def test_onnx_export_refuses_other_rules():
    pytest.importorskip("onnx")
    from fixedq.interop import to_onnx

    with pytest.raises(ValueError, match=r"op 'c' \(neural\) cannot be exported to ONNX: "
                                         r"rounding 'tflite'"):
        to_onnx(_neural_program("tflite"))
    assert to_onnx(_neural_program("half_up")).graph.node
