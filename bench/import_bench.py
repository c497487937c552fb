"""Imported programs vs their source runtimes: parity and time (issue 16.2/16.3).

Run from the repository root: ``python bench/import_bench.py`` (writes the ``import`` section
of docs/benchmarks.md); ``--no-write`` prints it only; ``--repeats N`` sets the repeats.

- TFLite: keras.applications MobileNetV2(alpha=0.35, 96x96, weights=None, 10 classes, no
  softmax) converted by TFLiteConverter (full-integer int8, 32 random calibration images),
  imported with :func:`fixedq.interop.import_tflite`; its int8 outputs on 100 random int8
  images compared with ``tf.lite.Interpreter`` using the reference kernels (the arithmetic the
  importer reproduces), the optimized builtin kernels and the default (XNNPACK) interpreter.
- ONNX: a QDQ CNN (3x32x32 -> conv 16 + relu -> conv 16 -> depthwise -> add -> maxpool ->
  global average pool -> gemm 10, per-channel int8) quantized by
  ``onnxruntime.quantization.quantize_static``, imported with :func:`fixedq.interop.import_onnx`
  and compared with onnxruntime on 100 images.

Times are medians of interleaved runs in one process (``common.interleaved_medians``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from common import interleaved_medians  # noqa: E402
from md_section import replace_section  # noqa: E402

DOC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks.md")
START, END = "<!-- import:start -->", "<!-- import:end -->"
N = 100


def tflite_rows(repeats, rng):
    import tensorflow as tf
    import tf_keras

    from fixedq.interop import import_tflite

    tf_keras.utils.set_random_seed(0)
    model = tf_keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35,
                                              weights=None, classes=10,
                                              classifier_activation=None)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([rng.normal(size=(1, 96, 96, 3)).astype("float32")]
                                           for _ in range(32))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    data = conv.convert()
    t0 = time.perf_counter()
    program = import_tflite(data, name="mobilenet_v2_0.35_96")
    t_import = time.perf_counter() - t0
    q = rng.integers(-128, 128, size=(N, 96, 96, 3)).astype(np.int8)
    kinds = tf.lite.experimental.OpResolverType
    interp = {}
    for label, kind in (("reference", kinds.BUILTIN_REF),
                        ("optimized", kinds.BUILTIN_WITHOUT_DEFAULT_DELEGATES),
                        ("default (XNNPACK)", kinds.AUTO)):
        it = tf.lite.Interpreter(model_content=data, experimental_op_resolver_type=kind)
        d = it.get_input_details()[0]
        it.resize_tensor_input(d["index"], q.shape)
        it.allocate_tensors()

        def run(it=it, d=d):
            it.set_tensor(d["index"], q)
            it.invoke()
            return it.get_tensor(it.get_output_details()[0]["index"]).astype(np.int64)

        interp[label] = run
    got = program.predict(q, output="int", batch_size=N)
    parity = {k: (float(np.mean(got == f())), int(np.abs(got - f()).max()))
              for k, f in interp.items()}
    fns = {"engine": lambda: program.predict(q, output="int", batch_size=N),
           "engine_ref": lambda: reference_kernels(program.predict, q, output="int",
                                                   batch_size=N), **interp}
    times = interleaved_medians(fns, repeats)
    return ("TFLite MobileNetV2 0.35 @ 96 (int8)", len(program.ops), t_import, parity,
            {k: N / v for k, v in times.items()})


def reference_kernels(fn, *args, **kwargs):
    """``fn`` with the compiled kernels switched off (``FIXEDQ_ENGINE_COMPILED=0``): the
    engine's NumPy reference path, which ran every imported program before its rounding
    rules were compiled."""
    old = os.environ.get("FIXEDQ_ENGINE_COMPILED")
    os.environ["FIXEDQ_ENGINE_COMPILED"] = "0"
    try:
        return fn(*args, **kwargs)
    finally:
        if old is None:
            del os.environ["FIXEDQ_ENGINE_COMPILED"]
        else:
            os.environ["FIXEDQ_ENGINE_COMPILED"] = old


def onnx_model(path, rng):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = []

    def init(name, arr):
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))

    init("w1", rng.normal(size=(16, 3, 3, 3)) * 0.3)
    init("b1", rng.normal(size=16) * 0.1)
    init("w2", rng.normal(size=(16, 16, 3, 3)) * 0.1)
    init("b2", rng.normal(size=16) * 0.1)
    init("wd", rng.normal(size=(16, 1, 3, 3)) * 0.3)
    init("bd", rng.normal(size=16) * 0.1)
    init("w3", rng.normal(size=(10, 16)) * 0.3)
    init("b3", rng.normal(size=10) * 0.1)
    node = helper.make_node
    nodes = [node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             node("Relu", ["c1"], ["r1"]),
             node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             node("Conv", ["c2", "wd", "bd"], ["d2"], pads=[1, 1, 1, 1], group=16),
             node("Add", ["d2", "r1"], ["a"]),
             node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             node("GlobalAveragePool", ["p"], ["g"]),
             node("Flatten", ["g"], ["f"]),
             node("Gemm", ["f", "w3", "b3"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def onnx_rows(repeats, rng):
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from fixedq.interop import import_onnx

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": rng.normal(size=(1, 3, 32, 32)).astype(np.float32)}
                            for _ in range(32)])

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "f.onnx"), os.path.join(tmp, "q.onnx")
        onnx_model(src, rng)
        quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        t0 = time.perf_counter()
        program = import_onnx(dst, name="qdq_cnn")
        t_import = time.perf_counter() - t0
        sess = ort.InferenceSession(dst, providers=["CPUExecutionProvider"])
    x = rng.normal(size=(N, 3, 32, 32)).astype(np.float32) * 1.5
    meta = program.meta["onnx"]
    s, zp = np.float32(meta["input"]["scale"]), meta["input"]["zero_point"]
    q = np.clip(np.rint(x / s) + zp, -128, 127)
    out = meta["outputs"][0]
    want = sess.run(None, {"x": x})[0]
    got = program.predict(q, output="int", batch_size=N)
    deq = (got - out["zero_point"]).astype(np.float32) * np.float32(out["scale"])
    lsb = np.rint(np.abs(deq - want) / np.float32(out["scale"]))
    parity = {"onnxruntime": (float(np.mean(lsb == 0)), int(lsb.max()))}
    fns = {"engine": lambda: program.predict(q, output="int", batch_size=N),
           "engine_ref": lambda: reference_kernels(program.predict, q, output="int",
                                                   batch_size=N),
           "onnxruntime": lambda: sess.run(None, {"x": x})}
    times = interleaved_medians(fns, repeats)
    return ("ONNX QDQ CNN 3x32x32 (int8, per-channel)", len(program.ops), t_import, parity,
            {k: N / v for k, v in times.items()})


def section(results, repeats, load) -> str:
    lines = ["## Imported programs vs their source runtimes (`bench/import_bench.py`, "
             "issue 16)", "",
             f"Batch of {N} random int8 inputs (ONNX: float inputs through the model's input "
             f"QuantizeLinear), 2 shared cores, medians of {repeats} interleaved runs. Load "
             f"average (1 min) at start / end: {load[0]:.1f} / {load[1]:.1f}. Parity: share "
             "of output elements equal to the runtime's, and the largest difference in LSB.",
             "", "| model | engine ops | import (s) | runtime | equal | max LSB | runtime "
             "(img/s) | engine (img/s) | engine, reference kernels (img/s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, n_ops, t_imp, parity, speed in results:
        for k, (eq, mx) in parity.items():
            lines.append(f"| {name} | {n_ops} | {t_imp:.2f} | {k} | {100 * eq:.3f} % | {mx} | "
                         f"{speed[k]:.1f} | {speed['engine']:.1f} | "
                         f"{speed['engine_ref']:.1f} |")
    lines += ["", "The importers reproduce TFLite's reference kernels exactly and approximate "
              "onnxruntime's float32 QDQ execution (docs/interop.md). *engine* is the "
              "compiled dense path, which takes each op's rounding rule (eq. 5b/7b/7c) as a "
              "parameter and folds the zero points (eq. 37) into its kernels; *engine, "
              "reference kernels* is the NumPy reference path (`FIXEDQ_ENGINE_COMPILED=0`), "
              "where imported programs ran before. Both give the same integers."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    load0 = os.getloadavg()[0]
    results = [tflite_rows(args.repeats, rng), onnx_rows(args.repeats, rng)]
    body = section(results, args.repeats, (load0, os.getloadavg()[0]))
    print(body)
    if not args.no_write:
        replace_section(DOC, START, END, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
