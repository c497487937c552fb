"""Tutorial: run a 4-bit quantized CNN on the integer engine, bit for bit with Keras.

Run:  python tutorials/engine_tutorial.py
(FIXEDQ_TUTORIAL_FAST=1 runs a shortened version; the test suite uses it as a smoke test.)

Steps:
1. Train a small float CNN on the 8x8 scikit-learn digits (1,797 images, no download).
2. Quantize it: 8-bit first layer, 4-bit weights, 4-bit per-tensor activations.
3. Convert it to an integer engine model checked against the ``akida-1.0`` profile.
4. Check that the engine's outputs equal the quantized Keras model's, bit for bit.
5. Save / reload the ``.fqe`` file (loading it needs no TensorFlow) and print event statistics.

The same steps on the command line: ``fixedq convert -m q.keras -t akida-1.0`` then
``fixedq run -m q.fqe -sa test.npz --events``.
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
