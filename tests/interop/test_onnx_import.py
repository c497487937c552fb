"""import_onnx: QDQ models written by onnxruntime.quantization.quantize_static, against
onnxruntime.

The float models are built with ``onnx.helper`` in the test, quantized with ``quantize_static``
(QDQ, per-channel weights; 8-bit, 16-bit activations, 4-bit weights at opset 21) and run by
onnxruntime's CPU provider. onnxruntime computes QDQ Conv/Add/pooling in float32 between
DequantizeLinear and QuantizeLinear, so the exact integer program agrees with it except where
a value lies within float32 error of a rounding boundary: the tests assert the bounds
docs/interop.md states (8-bit: >= 99.9 % of elements equal, none more than 1 LSB away).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnxruntime.quantization import (  # noqa: E402
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)

import fixedq.engine  # noqa: E402
from fixedq.interop import import_onnx  # noqa: E402

SHAPE = (3, 12, 12)


def float_model(path, opset=17, seed=0):
    """conv+relu, conv, depthwise conv, add, maxpool, 3x3 avgpool, global avgpool, gemm."""
    rng = np.random.default_rng(seed)
    inits = []

    def init(name, arr):
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))

    init("w1", rng.normal(size=(8, 3, 3, 3)) * 0.3)
    init("b1", rng.normal(size=8) * 0.1)
    init("w2", rng.normal(size=(8, 8, 3, 3)) * 0.2)
    init("b2", rng.normal(size=8) * 0.1)
    init("wd", rng.normal(size=(8, 1, 3, 3)) * 0.3)
    init("bd", rng.normal(size=8) * 0.1)
    init("w3", rng.normal(size=(5, 8)) * 0.3)
    init("b3", rng.normal(size=5) * 0.1)
    node = helper.make_node
    nodes = [node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             node("Relu", ["c1"], ["r1"]),
             node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             node("Conv", ["c2", "wd", "bd"], ["d2"], pads=[1, 1, 1, 1], group=8),
             node("Add", ["d2", "r1"], ["a"]),
             node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             node("AveragePool", ["p"], ["ap"], kernel_shape=[3, 3], strides=[1, 1]),
             node("GlobalAveragePool", ["p"], ["g"]),
             node("Flatten", ["g"], ["f"]),
             node("Gemm", ["f", "w3", "b3"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, *SHAPE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5]),
         helper.make_tensor_value_info("ap", TensorProto.FLOAT, [None, 8, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset >= 21 else 8
    onnx.save(model, path)


class Reader(CalibrationDataReader):
    def __init__(self, seed=1, n=30):
        rng = np.random.default_rng(seed)
        self.data = iter([{"x": rng.normal(size=(1, *SHAPE)).astype(np.float32)}
                          for _ in range(n)])

    def get_next(self):
        return next(self.data, None)


def qdq_model(tmp_path, act=QuantType.QInt8, weight=QuantType.QInt8, opset=17):
    src, dst = tmp_path / "float.onnx", tmp_path / "qdq.onnx"
    float_model(src, opset)
    quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=act, weight_type=weight)
    return dst


def compare(path, lo, hi, n=300):
    """(fraction equal, max |diff| in LSB, elements) of every output, onnxruntime vs engine."""
    program = import_onnx(path)
    x = np.random.default_rng(2).normal(size=(n, *SHAPE)).astype(np.float32) * 1.5
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"x": x})
    meta = program.meta["onnx"]
    scale, zp = np.float32(meta["input"]["scale"]), meta["input"]["zero_point"]
    q = np.clip(np.rint(x / scale) + zp, lo, hi)  # QuantizeLinear: x / scale, half to even
    outs = program.predict(q, output="int", batch_size=100)
    stats = []
    for got, want, m in zip(outs, ref, meta["outputs"], strict=True):
        deq = (got - m["zero_point"]).astype(np.float32) * np.float32(m["scale"])
        lsb = np.rint(np.abs(deq - want) / np.float32(m["scale"]))
        stats.append((float(np.mean(lsb == 0)), int(lsb.max()), lsb.size))
    return program, stats


def test_int8_qdq_model_matches_onnxruntime_within_the_documented_bound(tmp_path):
    program, stats = compare(qdq_model(tmp_path), -128, 127)
    kinds = [op.kind for op in program.ops]
    assert kinds.count("neural") == 4 and {"add", "maxpool", "avgpool", "gap"} <= set(kinds)
    assert all(op.attrs.get("rounding") == "half_even" for op in program.ops
               if op.kind in ("neural", "add", "avgpool", "gap"))
    for equal, worst, _ in stats:
        assert equal >= 0.999 and worst <= 1, stats


def test_int4_weights_at_opset_21_and_16_bit_activations(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    path4 = qdq_model(tmp_path / "a", weight=QuantType.QInt4, opset=21)
    ints = {onnx.TensorProto.DataType.Name(t.data_type) for t in onnx.load(path4).graph.initializer}
    assert "INT4" in ints
    program, stats = compare(path4, -128, 127)
    assert np.abs(program.ops[2].arrays["kernel"]).max() <= 8
    for equal, worst, _ in stats:
        assert equal >= 0.999 and worst <= 1, stats
    _, stats16 = compare(qdq_model(tmp_path / "b", act=QuantType.QInt16, opset=21),
                         -(2**15), 2**15 - 1)
    for equal, worst, _ in stats16:  # float32 error is a larger part of a 16-bit LSB
        assert equal >= 0.95 and worst <= 2, stats16


def test_cli_import_and_run(tmp_path):
    src = qdq_model(tmp_path)
    out = tmp_path / "qdq.fqe"
    proc = subprocess.run([sys.executable, "-m", "fixedq_cli.main", "import", "-m", src, "-o",
                           out], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    program = fixedq.engine.load(out)
    q = np.random.default_rng(3).integers(-128, 128, size=(20, *SHAPE))
    direct = import_onnx(src).predict(q, output="int")
    for a, b in zip(program.predict(q, output="int"), direct, strict=True):
        np.testing.assert_array_equal(a, b)
    assert program.event_stats(q[:4])
    np.save(tmp_path / "q.npy", q.astype(np.float32))
    run = subprocess.run([sys.executable, "-m", "fixedq_cli.main", "run", "-m", out, "-sa",
                          tmp_path / "q.npy"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "20 samples" in run.stdout


def test_bad_onnx_models_are_one_clear_error(tmp_path):
    src = qdq_model(tmp_path)
    data = src.read_bytes()
    with pytest.raises(ValueError, match="not a readable ONNX model|not an ONNX model"):
        import_onnx(data[: len(data) // 2])
    qop = tmp_path / "qop.onnx"
    quantize_static(tmp_path / "float.onnx", qop, Reader(), quant_format=QuantFormat.QOperator,
                    per_channel=True)
    with pytest.raises(ValueError, match="QOperator-format ONNX model"):
        import_onnx(qop)
    with pytest.raises(ValueError, match="must feed exactly one QuantizeLinear"):
        import_onnx(tmp_path / "float.onnx")
    model = onnx.load(src)
    model.graph.node.append(helper.make_node("Sigmoid", ["y"], ["s"]))
    with pytest.raises(ValueError, match="Sigmoid is not supported"):
        import_onnx(model.SerializeToString())
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(data[:100])
    out = tmp_path / "bad.fqe"
    proc = subprocess.run([sys.executable, "-m", "fixedq_cli.main", "import", "-m", bad, "-o",
                           out], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and not out.exists()
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("fixedq import: error:")]
