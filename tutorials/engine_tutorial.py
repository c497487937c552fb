"""Tutorial: run a 4-bit quantized CNN on the integer engine, bit for bit with Keras.

Run:  python tutorials/engine_tutorial.py
(FIXEDQ_TUTORIAL_FAST=1 runs a shortened version; the test suite uses it as a smoke test.)

Steps:
1. Train a small float CNN on the 8x8 scikit-learn digits (1,797 images, no download).
2. Quantize it: 8-bit first layer, 4-bit weights, 4-bit per-tensor activations.
3. Convert it to an integer engine model checked against the ``akida-1.0`` profile.
4. Check that the engine's outputs equal the quantized Keras model's, bit for bit.
5. Save / reload the ``.fqe`` file (loading it needs no TensorFlow) and print event statistics.
6. Export the engine program to ONNX; onnxruntime's outputs equal the engine's.
7. Import the same float CNN quantized by TFLiteConverter (int8): the imported program's outputs
   equal the TFLite interpreter's, and it gets event statistics like any engine program.

The same steps on the command line: ``fixedq convert -m q.keras -t akida-1.0`` then
``fixedq run -m q.fqe -sa test.npz --events``, ``fixedq export -m q.fqe`` and
``fixedq import -m model_int8.tflite``.
"""

import os
import tempfile

import keras
import numpy as np
from sklearn.datasets import load_digits

import fixedq
import fixedq.engine as fe
from fixedq.engine.events import format_stats

FAST = os.environ.get("FIXEDQ_TUTORIAL_FAST") == "1"
EPOCHS = 2 if FAST else 15
keras.utils.set_random_seed(0)

# 1. Data and a float CNN ----------------------------------------------------------------------
digits = load_digits()
x = (digits.images[..., None] / 16.0).astype("float32")  # (1797, 8, 8, 1) in [0, 1]
y = digits.target
x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]
if FAST:
    x_test, y_test = x_test[:200], y_test[:200]

inp = keras.Input((8, 8, 1), name="image")
h = keras.layers.Conv2D(16, 3, padding="same", name="conv1")(inp)
h = keras.layers.ReLU(name="relu1")(h)
h = keras.layers.MaxPooling2D(name="pool1")(h)
h = keras.layers.Conv2D(32, 3, padding="same", name="conv2")(h)
h = keras.layers.ReLU(name="relu2")(h)
h = keras.layers.Flatten(name="flatten")(h)
out = keras.layers.Dense(10, name="logits")(h)
model = keras.Model(inp, out, name="digits_cnn")
model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
model.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0)
float_acc = model.evaluate(x_test, y_test, verbose=0)[1]
print(f"float model accuracy:        {100 * float_acc:.2f}%")

# 2. Quantize: 8-bit first layer, 4-bit weights and per-tensor activations ----------------------
qparams = fixedq.QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4,
                                    per_tensor_activations=True)
qmodel = fixedq.quantize(model, qparams, samples=x_train[:512 if FAST else 1024],
                         verbose=False)
q_out = qmodel.predict(x_test, verbose=0)
q_acc = float(np.mean(q_out.argmax(axis=1) == y_test))
print(f"4-bit quantized (Keras):     {100 * q_acc:.2f}%")

# 3. Convert to the integer engine, checking the akida-1.0 hardware profile --------------------
engine = fe.convert(qmodel, target="akida-1.0")
print(engine.summary())

# 4. Bit-exactness: every output element equal, dense and event-driven -------------------------
e_out = engine.predict(x_test, batch_size=100)
ev_out = engine.predict(x_test, batch_size=100, mode="event")
exact = np.array_equal(e_out, q_out) and np.array_equal(ev_out, q_out)
e_acc = float(np.mean(e_out.argmax(axis=1) == y_test))
print(f"integer engine:              {100 * e_acc:.2f}%")
print(f"engine == quantized Keras, bit for bit: {'yes' if exact else 'NO'}")
if not exact:
    raise SystemExit("the engine does not reproduce the quantized Keras model")

# 5. Save / reload the engine file, then event statistics --------------------------------------
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "digits_cnn.fqe")
    engine.save(path)
    print(f"saved {os.path.basename(path)}: {os.path.getsize(path)} bytes")
    reloaded = fe.load(path)
assert np.array_equal(reloaded.predict(x_test, batch_size=100), e_out)
print("reloaded engine model gives the same outputs")
print(format_stats(reloaded.event_stats(x_test, batch_size=100)))

# 6. Export the engine program to ONNX: onnxruntime gives the engine's outputs ------------------
try:
    import onnxruntime as ort

    from fixedq.interop import export_onnx
except ImportError:  # pip install "fixedq[onnx]"
    ort = None
    print("(onnx / onnxruntime not installed: skipping the ONNX steps)")
if ort is not None:
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = os.path.join(tmp, "digits_cnn.onnx")
        export_onnx(engine, onnx_path)
        sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        o_out = sess.run(None, {sess.get_inputs()[0].name: x_test})[0]
    print(f"onnxruntime == engine on every element: {np.array_equal(o_out, e_out)}")
    if not np.array_equal(o_out, e_out):
        raise SystemExit("onnxruntime does not reproduce the engine")

# 7. Import a model quantized by TFLite: the same float CNN, full-integer TFLite ---------------
# TFLiteConverter quantizes with its own scales and zero points; fixedq.interop.import_tflite
# reads the .tflite file into an engine program with TFLite's integer arithmetic, so the
# engine's int8 outputs equal the TFLite interpreter's (reference kernels), and the program
# gets the engine's tools (summary, event statistics, fixedq run). CLI: fixedq import -m x.tflite
import tensorflow as tf  # noqa: E402

from fixedq.interop import import_tflite  # noqa: E402

with tempfile.TemporaryDirectory() as tmp:
    model.export(os.path.join(tmp, "saved"), verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(os.path.join(tmp, "saved"))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([s[None]] for s in x_train[:200])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    tflite_bytes = converter.convert()
imported = import_tflite(tflite_bytes, name="digits_cnn_tflite")
print(imported.summary())
meta = imported.meta["tflite"]
scale, zero = meta["input"]["scale"], meta["input"]["zero_point"]
q_test = np.clip(np.round(x_test / scale) + zero, -128, 127).astype(np.int8)  # int8 input
interpreter = tf.lite.Interpreter(
    model_content=tflite_bytes,
    experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_REF)
interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], q_test.shape)
interpreter.allocate_tensors()
interpreter.set_tensor(interpreter.get_input_details()[0]["index"], q_test)
interpreter.invoke()
t_out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
i_out = imported.predict(q_test, output="int", batch_size=100)
print(f"imported TFLite program == TFLite interpreter (int8, every element): "
      f"{np.array_equal(i_out, t_out)}")
if not np.array_equal(i_out, t_out):
    raise SystemExit("the imported program does not reproduce the TFLite interpreter")
print(f"TFLite int8 accuracy:        {100 * np.mean(i_out.argmax(axis=1) == y_test):.2f}%")
print(format_stats(imported.event_stats(q_test, batch_size=100)))
# The check report of its integers (CLI: fixedq check -m imported.fqe -sa q.npy --target ...):
# accumulator headroom per op, saturation on the samples, and what would not map to akida-2.0.
imported_report = fe.check_program(imported, q_test[:500], target="akida-2.0")
print(imported_report.format_table())
if not any(p.kind == "target" for p in imported_report.problems):
    raise SystemExit("an int8 TFLite program should not fit akida-2.0 as it is (rounding)")
