"""Tutorial: smooth activations and softmax in integers (integer tables, docs/numerics.md
eqs. 38-39).

Run:  python tutorials/activations_tutorial.py
(FIXEDQ_TUTORIAL_FAST=1 runs a shortened version; the test suite uses it as a smoke test.)

Steps:
1. Train a small float CNN on the 8x8 scikit-learn digits that uses what MobileNet/EfficientNet
   -style networks use: swish and hard_swish (fused ``activation=``), a sigmoid gate, GELU,
   LeakyReLU, and a softmax output.
2. Quantize it at 8 bits: every activation becomes an integer table over its input integers,
   the softmax an exp table + exact sum + one integer division. Nothing falls back to float.
3. Look at one table: its entries are within 1/2 output LSB of the float function.
4. Convert to the integer engine: outputs equal to the quantized Keras model, bit for bit.
"""

import os
import warnings

import keras
import numpy as np
from sklearn.datasets import load_digits

import fixedq
import fixedq.engine as fe
from fixedq.layers import QuantizedActivation, QuantizedSoftmax
from fixedq.layers.table import QuantizedTable

FAST = os.environ.get("FIXEDQ_TUTORIAL_FAST") == "1"
EPOCHS = 2 if FAST else 20
keras.utils.set_random_seed(0)
L = keras.layers

# 1. Data and a float CNN with smooth activations ----------------------------------------------
digits = load_digits()
x = (digits.images[..., None] / 16.0).astype("float32")
y = digits.target
x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]

inp = keras.Input((8, 8, 1), name="image")
h = L.Conv2D(16, 3, padding="same", activation="swish", name="conv1")(inp)
h = L.DepthwiseConv2D(3, padding="same", activation="hard_swish", name="dw")(h)
gate = L.Conv2D(16, 1, activation="sigmoid", name="gate")(h)
h = L.Conv2D(16, 1, name="conv2")(L.Concatenate(name="cat")([h, gate]))
h = L.LeakyReLU(negative_slope=0.1, name="leaky")(h)
h = L.Dense(32, activation="gelu", name="fc1")(L.Flatten(name="flat")(h))
out = L.Dense(10, activation="softmax", name="probs")(h)
model = keras.Model(inp, out, name="smooth_cnn")
model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0)
print(f"float model accuracy:   {100 * model.evaluate(x_test, y_test, verbose=0)[1]:.2f}%")

# 2. Quantize at 8 bits: no layer may fall back to float -----------------------------------------
with warnings.catch_warnings():
    warnings.simplefilter("error")
    qmodel = fixedq.quantize(model, samples=x_train[:512], verbose=False)
tables = [layer for layer in qmodel.layers if isinstance(layer, QuantizedTable)]
print("integer tables:", ", ".join(f"{t.name} ({getattr(t, 'function', 'leaky')})"
                                   for t in tables))
assert isinstance(qmodel.layers[-2], QuantizedSoftmax)
q_out = qmodel.predict(x_test, verbose=0)
print(f"8-bit quantized (Keras): {100 * np.mean(q_out.argmax(1) == y_test):.2f}%")

# 3. One table against its float function ------------------------------------------------------
gelu = next(t for t in tables if isinstance(t, QuantizedActivation) and t.function == "gelu")
p = gelu.integer_params()
f_in, f_out = int(p["in_frac"][0]), int(p["out_frac"][0])
lo, hi = gelu.input_spec0.int_bounds()
v = np.arange(lo, hi + 1)
entries = p["table"][v + p["base"][0]]
exact = np.asarray(keras.activations.gelu(np.ldexp(v, -f_in).astype("float64")))
inside = (exact * 2.0**f_out > p["out_lo"][0]) & (exact * 2.0**f_out < p["out_hi"][0])
err = np.abs(entries - exact * 2.0**f_out)[inside]
print(f"GELU table: {v.size} entries, max error {err.max():.3f} LSB (bound 0.5)")

# 4. The integer engine, bit for bit ------------------------------------------------------------
engine = fe.convert(qmodel)
e_out = engine.predict(x_test)
print("engine ops:", ", ".join(sorted({op.kind for op in engine.ops})))
print(f"engine == quantized Keras, bit for bit: {'yes' if np.array_equal(e_out, q_out) else 'NO'}")
if not np.array_equal(e_out, q_out):
    raise SystemExit("the engine does not reproduce the quantized Keras model")
