"""import_tflite: real full-integer .tflite files from TFLiteConverter against tf.lite.Interpreter.

Every model is a small tf-keras model converted in the test (post-training full-integer
quantization with a representative dataset, ``inference_input_type=tf.int8``); the imported
engine program must give the interpreter's int8 outputs on every element, with TFLite's
reference kernels (``OpResolverType.BUILTIN_REF``: the arithmetic the importer reproduces,
docs/interop.md). Bad files fail with one ``ValueError`` naming the problem.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tfk = pytest.importorskip("tf_keras")

import fixedq.engine  # noqa: E402
from fixedq.interop import import_tflite  # noqa: E402
from fixedq.interop.tflite_import import read_tflite  # noqa: E402

REF = tf.lite.experimental.OpResolverType.BUILTIN_REF
#: The default interpreter: int8 CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED / ADD / MEAN
#: go to the XNNPACK delegate (``kernels="xnnpack"``).
AUTO = tf.lite.experimental.OpResolverType.AUTO


def convert(model, shape, n=40, scale=1.0, int8_io=True, seed=0) -> bytes:
    rng = np.random.default_rng(seed)

    def rep():
        for _ in range(n):
            yield [(rng.normal(size=(1, *shape)) * scale).astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if int8_io:
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    return conv.convert()


def interpret(data: bytes, x: np.ndarray, resolver=REF) -> list[np.ndarray]:
    it = tf.lite.Interpreter(model_content=data, experimental_op_resolver_type=resolver)
    d = it.get_input_details()[0]
    it.resize_tensor_input(d["index"], x.shape)
    it.allocate_tensors()
    it.set_tensor(d["index"], x.astype(d["dtype"]))
    it.invoke()
    outs = sorted(it.get_output_details(), key=lambda o: o["name"])
    return [it.get_tensor(o["index"]).astype(np.int64) for o in outs]


def int8_inputs(shape, n=200, seed=1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = rng.integers(-128, 128, size=(n, *shape))
    extremes = np.stack([np.full(shape, -128), np.full(shape, 127),
                         np.indices(shape).sum(axis=0) % 2 * 255 - 128])
    return np.concatenate([q, extremes])


def engine_outputs(program, q) -> list[np.ndarray]:
    out = program.predict(q, output="int", batch_size=64)
    outs = out if isinstance(out, list) else [out]
    order = np.argsort([o["name"] for o in program.outputs], kind="stable")
    return [outs[i] for i in order]


def assert_all_equal(program, data: bytes, q, resolver=REF) -> None:
    ref = interpret(data, q, resolver)
    got = engine_outputs(program, q)
    assert len(got) == len(ref)
    for g, r in zip(got, ref, strict=True):
        assert g.shape == r.shape
        diff = np.abs(g - r)
        assert not diff.any(), f"{int((diff > 0).sum())} of {diff.size} differ (max {diff.max()})"


@pytest.fixture(scope="module")
def cnn():
    """conv+relu, depthwise+relu6, add, max/avg pooling (same, 3x3 stride 2), concat, mean,
    flatten, dense+relu, dense; two outputs."""
    tfk.utils.set_random_seed(3)
    inp = tfk.Input((12, 12, 3))
    x = tfk.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    y = tfk.layers.DepthwiseConv2D(3, padding="same", activation="relu6")(x)
    z = tfk.layers.Add()([x, y])
    a = tfk.layers.MaxPooling2D(2)(z)
    b = tfk.layers.AveragePooling2D(3, strides=2, padding="same")(z)
    c = tfk.layers.Concatenate()([a, tfk.layers.AveragePooling2D(2)(z)])
    c = tfk.layers.Conv2D(6, 3, strides=2, padding="valid")(c)
    g = tfk.layers.GlobalAveragePooling2D()(c)
    f = tfk.layers.Dense(7, activation="relu")(tfk.layers.Flatten()(b))
    out1 = tfk.layers.Dense(5, name="logits")(tfk.layers.Concatenate()([g, f]))
    out2 = tfk.layers.Dense(3, name="aux")(f)
    model = tfk.Model(inp, [out1, out2])
    return convert(model, (12, 12, 3), scale=2.0)


def test_cnn_equals_the_reference_interpreter_on_every_element(cnn):
    program = import_tflite(cnn)
    kinds = {op.kind for op in program.ops}
    assert {"neural", "add", "maxpool", "avgpool", "concat", "gap", "reshape"} <= kinds
    rules = {(op.kind, op.attrs.get("type")): op.attrs.get("rounding") for op in program.ops
             if op.kind in ("neural", "add", "gap", "avgpool")}
    assert rules == {("neural", "conv2d"): "tflite", ("neural", "depthwise"): "tflite",
                     ("neural", "dense"): "half_up", ("add", None): "tflite",
                     ("gap", None): "tflite", ("avgpool", None): "half_away"}
    assert_all_equal(program, cnn, int8_inputs((12, 12, 3)))


def test_mobilenet_v2_equals_the_reference_interpreter():
    tfk.utils.set_random_seed(4)
    model = tfk.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None,
                                         classes=10, classifier_activation=None)
    # two inner tensors are outputs too: the logits of this untrained net agree under every
    # TFLite arithmetic, its inner tensors do not (the reference differs from XNNPACK there)
    model = tfk.Model(model.input, [model.get_layer("block_2_add").output,
                                    model.get_layer("block_10_project_BN").output,
                                    model.output])
    data = convert(model, (32, 32, 3), n=16)
    program = import_tflite(data)
    names = [program.ops[i].kind for i in range(len(program.ops))]
    assert names.count("neural") == 53  # 52 convs (PADs folded into 4 of them) + the dense
    q = int8_inputs((32, 32, 3), n=40)
    assert_all_equal(program, data, q)
    xnn = import_tflite(data, kernels="xnnpack")
    assert_all_equal(xnn, data, q, AUTO)
    assert count_differing(program, data, q, AUTO) > 0


def count_differing(program, data: bytes, q, resolver) -> int:
    ref = interpret(data, q, resolver)
    return sum(int((g != r).sum()) for g, r in zip(engine_outputs(program, q), ref,
                                                   strict=True))


def test_cnn_xnnpack_kernels_equal_the_default_interpreter_on_every_element(cnn):
    program = import_tflite(cnn, kernels="xnnpack")
    rules = {(op.kind, op.attrs.get("type")): op.attrs.get("rounding") for op in program.ops
             if op.kind in ("neural", "add", "gap", "avgpool")}
    assert rules == {("neural", "conv2d"): "fp32", ("neural", "depthwise"): "fp32",
                     ("neural", "dense"): "fp32", ("add", None): "half_up",
                     ("gap", None): "fp32", ("avgpool", None): "half_away"}
    q = int8_inputs((12, 12, 3))
    assert_all_equal(program, cnn, q, AUTO)
    # the two arithmetics really differ on this model (so both assertions can fail)
    assert count_differing(import_tflite(cnn), cnn, q, AUTO) > 0
    assert count_differing(program, cnn, q, REF) > 0


def test_xnnpack_dense_and_add_rules_on_their_own():
    """XNNPACK's dense (fp32) and int8 add (lrintf multipliers of the float32 ratios, one
    half-up shift) are visible as such: the conv, add and dense outputs are all model outputs,
    and the reference arithmetic differs from the default interpreter on some of them."""
    tfk.utils.set_random_seed(1)
    inp = tfk.Input((6, 6, 8))
    c = tfk.layers.Conv2D(8, 1, name="a_conv")(inp)
    a = tfk.layers.Add(name="b_add")([c, inp])
    d = tfk.layers.Dense(48, name="c_d1")(tfk.layers.Flatten()(a))
    d = tfk.layers.Dense(32, activation="relu", name="d_d2")(d)
    data = convert(tfk.Model(inp, [c, a, d]), (6, 6, 8), scale=2.0)
    q = int8_inputs((6, 6, 8), n=600)
    assert_all_equal(import_tflite(data, kernels="xnnpack"), data, q, AUTO)
    assert count_differing(import_tflite(data), data, q, AUTO) > 0


def test_kernels_argument_is_checked(cnn):
    with pytest.raises(ValueError, match=r"kernels must be one of \['reference', 'xnnpack'\], "
                       r"got 'XNNPACK'"):
        import_tflite(cnn, kernels="XNNPACK")


def test_logistic_is_an_exact_table_and_softmax_is_within_one_lsb():
    tfk.utils.set_random_seed(7)
    inp = tfk.Input((6,))
    logits = tfk.layers.Dense(16)(inp)
    model = tfk.Model(inp, [tfk.layers.Activation("sigmoid", name="sig")(logits),
                            tfk.layers.Softmax(name="prob")(logits)])
    data = convert(model, (6,), scale=3.0)
    program = import_tflite(data)
    assert {"table", "softmax"} <= {op.kind for op in program.ops}
    q = int8_inputs((6,), n=3000)
    ref = interpret(data, q)
    got = engine_outputs(program, q)
    kinds = {program.outputs[i]["tensor"]: program.ops[[o.name for o in program.ops].index(
        program.outputs[i]["tensor"])].kind for i in range(2)}
    order = sorted(program.outputs, key=lambda o: o["name"])
    for g, r, o in zip(got, ref, order, strict=True):
        diff = np.abs(g - r)
        if kinds[o["tensor"]] == "table":  # LOGISTIC: TFLite's own 256-entry table
            assert not diff.any()
        else:  # SOFTMAX: equal except near rounding ties of TFLite's approximation
            assert diff.max() <= 1 and np.mean(diff == 0) >= 0.999, (diff > 0).sum()


def test_float_io_model_imports_between_quantize_and_dequantize():
    tfk.utils.set_random_seed(5)
    inp = tfk.Input((6, 6, 2))
    x = tfk.layers.Conv2D(4, 3, activation="relu")(inp)
    model = tfk.Model(inp, tfk.layers.Dense(3)(tfk.layers.Flatten()(x)))
    data = convert(model, (6, 6, 2), int8_io=False)
    program = import_tflite(data)
    meta = program.meta["tflite"]
    assert meta["float_input"] and meta["outputs"][0]["dequantized"]
    x = np.random.default_rng(0).normal(size=(50, 6, 6, 2)).astype(np.float32) * 2
    it = tf.lite.Interpreter(model_content=data, experimental_op_resolver_type=REF,
                             experimental_preserve_all_tensors=True)
    it.resize_tensor_input(it.get_input_details()[0]["index"], x.shape)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    by_name = {t["name"]: t["index"] for t in it.get_tensor_details()}
    q_in = it.get_tensor(by_name[meta["input"]["tensor"]]).astype(np.int64)
    q_out = it.get_tensor(by_name[program.outputs[0]["tensor"]]).astype(np.int64)
    np.testing.assert_array_equal(program.predict(q_in, output="int"), q_out)
    # the float output is the dequantized int8 output
    scale, zp = meta["outputs"][0]["scale"], meta["outputs"][0]["zero_point"]
    got = np.float32(scale) * (q_out - zp).astype(np.float32)
    np.testing.assert_array_equal(got, it.get_tensor(it.get_output_details()[0]["index"]))


def test_saved_program_runs_with_events_and_the_cli(cnn, tmp_path):
    src = tmp_path / "cnn.tflite"
    src.write_bytes(cnn)
    out = tmp_path / "cnn.fqe"
    proc = subprocess.run([sys.executable, "-m", "fixedq_cli.main", "import", "-m", src, "-o",
                           out], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "cnn.fqe" in proc.stdout
    program = fixedq.engine.load(out)
    q = int8_inputs((12, 12, 3), n=30)
    direct = engine_outputs(import_tflite(src), q)
    for a, b in zip(engine_outputs(program, q), direct, strict=True):
        np.testing.assert_array_equal(a, b)
    events = program.predict(q, output="int", mode="event")
    for a, b in zip(events, program.predict(q, output="int"), strict=True):
        np.testing.assert_array_equal(a, b)
    stats = program.event_stats(q[:8])
    assert {s["kind"] for s in stats} >= {"neural", "add", "gap"}
    assert all(s["name"] for s in stats)
    np.save(tmp_path / "q.npy", q.astype(np.float32))
    run = subprocess.run([sys.executable, "-m", "fixedq_cli.main", "run", "-m", out, "-sa",
                          tmp_path / "q.npy", "--events", "--json"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    logits = program.predict(q, output="int")
    logits = logits[[o["name"] for o in program.outputs].index(report["output"])]
    assert report["predictions"] == logits.reshape(len(q), -1).argmax(axis=1).tolist()
    assert report["events"]


def test_cli_kernels_option(cnn, tmp_path):
    src = tmp_path / "cnn.tflite"
    src.write_bytes(cnn)
    out = tmp_path / "cnn_xnn.fqe"
    proc = subprocess.run([sys.executable, "-m", "fixedq_cli.main", "import", "-m", src, "-o",
                           out, "--kernels", "xnnpack"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    program = fixedq.engine.load(out)
    assert {op.attrs.get("rounding") for op in program.ops if op.kind == "neural"} == {"fp32"}
    assert_all_equal(program, cnn, int8_inputs((12, 12, 3), n=30), AUTO)
    bad = subprocess.run([sys.executable, "-m", "fixedq_cli.main", "import", "-m", src, "-o",
                          tmp_path / "x.fqe", "--kernels", "fast"], capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "--kernels" in bad.stderr
    assert not (tmp_path / "x.fqe").exists()
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"not used")
    wrong = subprocess.run([sys.executable, "-m", "fixedq_cli.main", "import", "-m", onnx_file,
                            "-o", tmp_path / "y.fqe", "--kernels", "xnnpack"],
                           capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2
    assert "--kernels applies to .tflite models only" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1 and not (tmp_path / "y.fqe").exists()


def test_target_profiles_list_what_would_not_map(cnn):
    from fixedq.engine.targets import TARGETS, violations

    program = import_tflite(cnn)
    for name in ("akida-1.0", "akida-2.0"):
        problems = violations(program, TARGETS[name])
        rounding = [p for p in problems if "requantization rounding 'tflite'" in p]
        assert rounding and all(p.startswith("'") for p in problems)
    assert any("8-bit activations" in p for p in violations(program, TARGETS["akida-1.0"]))


def test_bad_files_are_one_clear_error(cnn, tmp_path):
    with pytest.raises(ValueError, match="not a TFLite model"):
        import_tflite(b"PK\x03\x04 this is a zip")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        import_tflite(cnn[: len(cnn) // 3])
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(cnn[:200])
    out = tmp_path / "bad.fqe"
    proc = subprocess.run([sys.executable, "-m", "fixedq_cli.main", "import", "-m", bad, "-o",
                           out], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("fixedq import: error:")]
    assert len(errors) == 1 and "truncated or corrupt TFLite file" in errors[0]
    assert not out.exists()


def test_float_and_unsupported_models_are_refused():
    tfk.utils.set_random_seed(6)
    inp = tfk.Input((4, 4, 2))
    x = tfk.layers.Conv2D(3, 3, padding="same", activation="tanh")(inp)
    model = tfk.Model(inp, x)
    float_data = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    with pytest.raises(ValueError, match="float TFLite model"):
        import_tflite(float_data)
    with pytest.raises(ValueError, match="TANH is not supported"):
        import_tflite(convert(model, (4, 4, 2)))
    inp = tfk.Input((5, 5, 2))
    x = tfk.layers.ZeroPadding2D(((2, 0), (0, 1)))(inp)
    model = tfk.Model(inp, tfk.layers.Conv2D(3, 3)(x))
    with pytest.raises(ValueError, match="PAD"):
        import_tflite(convert(model, (5, 5, 2)))


def test_rounding_attr_is_validated_in_files(cnn, tmp_path):
    program = import_tflite(cnn)
    path = tmp_path / "p.fqe"
    program.save(path)
    assert fixedq.engine.load(path).ops[1].attrs["rounding"] == "tflite"
    op = next(o for o in program.ops if o.kind == "maxpool")
    op.attrs["rounding"] = "half_even"
    program.save(path)
    with pytest.raises(ValueError, match=r"attrs\.rounding.*no rounding on a 'maxpool' op"):
        fixedq.engine.load(path)
    op.attrs.pop("rounding")
    program.ops[1].attrs["rounding"] = "nearest"
    program.save(path)
    with pytest.raises(ValueError, match=r"attrs\.rounding: expected one of"):
        fixedq.engine.load(path)


def test_reader_uses_tensorflows_schema(cnn):
    model = read_tflite(cnn)
    assert type(model).__name__ == "ModelT" and len(model.subgraphs) == 1


def test_xnnpack_add_outside_xnnpacks_scale_range_is_refused():
    from fixedq.interop.tflite_import import xnnpack_add_arrays

    with pytest.raises(ValueError, match=r"ADD: input/output scale ratio 9\.99999\d*e-05 "
                       r"is outside XNNPACK's \[2\^-10, 2\^8\)"):
        xnnpack_add_arrays(1e-4, 0.5, 1.0)
    with pytest.raises(ValueError, match="outside XNNPACK's"):
        xnnpack_add_arrays(0.5, 300.0, 1.0)
