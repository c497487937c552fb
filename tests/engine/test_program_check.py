"""check_program / ``fixedq check -m x.fqe``: the check report of engine programs, imported
(a real TFLite full-integer file from TFLiteConverter) and converted."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as tfk

import fixedq
import fixedq.engine as fe
from fixedq.engine.program_check import check_program
from fixedq.interop import import_tflite


def _tflite(path) -> None:
    """conv+relu -> depthwise+relu6 -> add -> mean -> dense, full-integer int8 I/O."""
    tfk.utils.set_random_seed(5)
    inp = tfk.Input((10, 10, 3))
    x = tfk.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2d")(inp)
    y = tfk.layers.DepthwiseConv2D(3, padding="same", activation="relu6")(x)
    z = tfk.layers.GlobalAveragePooling2D()(tfk.layers.Add()([x, y]))
    model = tfk.Model(inp, tfk.layers.Dense(4)(z))
    rng = np.random.default_rng(0)

    def rep():
        for _ in range(30):
            yield [rng.normal(size=(1, 10, 10, 3)).astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    path.write_bytes(conv.convert())


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfl") / "cnn.tflite"
    _tflite(path)
    return path, import_tflite(path)


def _inputs(n=40, seed=1):
    rng = np.random.default_rng(seed)
    q = rng.integers(-128, 128, size=(n, 10, 10, 3))
    return np.concatenate([q, np.full((2, 10, 10, 3), 127), np.full((2, 10, 10, 3), -128)])


def test_imported_program_report_and_outputs_equal_predict(imported):
    _, program = imported
    q = _inputs()
    report, outs = check_program(program, q, batch_size=16, return_outputs=True,
                                 saturation_rate_threshold=1.0)
    want = program.predict(q, output="int", batch_size=64)
    np.testing.assert_array_equal(outs[0], want)
    neural = [o for o in report.ops if o.kind.startswith("neural")]
    assert len(neural) == 3 and all(o.rounding in ("tflite", "half_up") for o in neural)
    for o in neural:  # int8 x int8 into int32: far from saturating
        assert o.accumulator_limit == 2**31 - 1 and o.headroom_bits > 8
        assert o.accumulator_saturations == 0 and o.accumulator_values > 0
    relu = next(o for o in report.ops if "conv2d/Relu" in o.name and o.kind == "neural/conv2d")
    assert relu.output_low == 0  # the ReLU floor (real zero) is not saturation
    assert report.ok and report.num_samples == len(q)
    assert "no problems found" in report.format_table()


def test_saturation_and_target_problems(imported):
    _, program = imported
    q = _inputs()
    strict = check_program(program, q, saturation_rate_threshold=0.0, target="akida-2.0")
    kinds = {p.kind for p in strict.problems}
    assert "output_saturated" in kinds and "target" in kinds
    assert any("rounding 'tflite'" in p.message for p in strict.problems if p.kind == "target")
    sat = [o for o in strict.ops if o.output_saturation_rate]
    assert sat and all(o.output_low + o.output_high > 0 for o in sat)
    assert not strict.ok and strict.target == "akida-2.0"
    assert json.loads(json.dumps(strict.to_dict()))["problems"]


def test_converted_program_with_a_narrow_accumulator():
    keras.utils.set_random_seed(0)
    x = keras.Input((16,))
    h = keras.layers.Dense(8, activation="relu")(x)
    model = keras.Model(x, keras.layers.Dense(3)(h))
    xs = np.random.default_rng(0).normal(size=(64, 16)).astype("float32") * 3
    q = fixedq.quantize(model, fixedq.QuantizationParams(), samples=xs, verbose=False)
    program = fe.convert(q)
    first = next(op for op in program.ops if op.kind == "neural")
    static = check_program(program)
    oc = next(o for o in static.ops if o.name == first.name)
    assert static.ok and oc.accumulator_bound > 0 and oc.headroom_bits > 0
    assert static.num_samples is None and oc.output_values is None
    # a crafted 12-bit accumulator: the static bound and the samples both find it
    first.attrs["acc_lo"], first.attrs["acc_hi"] = -2048, 2047
    report, outs = check_program(program, xs, return_outputs=True)
    np.testing.assert_array_equal(outs[0], program.predict(xs, output="int"))
    kinds = [p.kind for p in report.problems if p.op == first.name]
    assert kinds[:2] == ["accumulator_bound", "accumulator_saturated"]
    oc = next(o for o in report.ops if o.name == first.name)
    assert oc.headroom_bits < 0 and 0 < oc.accumulator_saturations <= oc.accumulator_values


def test_bad_input(imported):
    _, program = imported
    with pytest.raises(TypeError, match="fixedq.engine.Model"):
        check_program(keras.Sequential())
    with pytest.raises(ValueError, match="unknown target"):
        check_program(program, target="akida-9")
    with pytest.raises(ValueError, match="empty"):
        check_program(program, np.zeros((0, 10, 10, 3)))
    with pytest.raises(ValueError, match="expects inputs of shape"):
        check_program(program, np.zeros((2, 9, 10, 3)))
    with pytest.raises(ValueError, match="saturation_rate_threshold"):
        check_program(program, saturation_rate_threshold=2.0)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fixedq_cli.main", "check", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_cli_on_an_imported_program(imported, tmp_path):
    src, program = imported
    out = tmp_path / "cnn.fqe"
    program.save(out)
    np.save(tmp_path / "q.npy", _inputs().astype(np.float32))
    ok = _cli("-m", out, "-sa", tmp_path / "q.npy", "--saturation_rate", "1")
    assert ok.returncode == 0, ok.stderr
    assert "no problems found" in ok.stdout and "rounding" in ok.stdout
    bad = _cli("-m", out, "--target", "akida-2.0", "--json")
    assert bad.returncode == 1, bad.stderr
    report = json.loads(bad.stdout)
    assert report["target"] == "akida-2.0" and report["num_samples"] is None
    assert {p["kind"] for p in report["problems"]} == {"target"}
    # bad input: one line, exit 2
    keras_file = tmp_path / "m.keras"
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(keras_file)
    for args in (["-m", keras_file, "--target", "akida-2.0"],
                 ["-m", src.with_suffix(".fqe")],
                 ["-m", out, "-sa", tmp_path / "missing.npy"]):
        proc = _cli(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    (tmp_path / "corrupt.fqe").write_bytes(out.read_bytes()[:200])
    proc = _cli("-m", tmp_path / "corrupt.fqe")
    assert proc.returncode == 2 and "not a valid" in proc.stderr, proc.stderr
