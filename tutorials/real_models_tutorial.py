"""Tutorial: networks as users write them (docs/real_models.md).

Run:  python tutorials/real_models_tutorial.py
(FIXEDQ_TUTORIAL_FAST=1 runs a shortened version; the test suite uses it as a smoke test.)

Steps:
1. Train a small float CNN on the 8x8 scikit-learn digits written with tensor operators, as
   Keras examples do: ``x / 8 - 1`` input scaling, a squeeze-and-excitation gate with
   ``keras.ops.mean(..., keepdims=True)`` and a hard-sigmoid ``ReLU6(x + 3) / 6``, ``f * gate``,
   ``keras.ops.concatenate`` and ``keras.ops.reshape``.
2. Quantize it at 8 bits: every operator node is read as a layer (Rescaling, Multiply,
   Concatenate, Reshape, ...) and quantized; nothing falls back to float.
3. Convert to the integer engine: outputs equal to the quantized Keras model, bit for bit.
4. Save the same kind of network from tf-keras as ``.h5`` (TFOpLambda nodes), load it with
   ``fixedq.load_model`` and quantize it too.
"""

import os
import warnings

import keras
import numpy as np
from keras import ops
from sklearn.datasets import load_digits

import fixedq
import fixedq.engine as fe

FAST = os.environ.get("FIXEDQ_TUTORIAL_FAST") == "1"
EPOCHS = 2 if FAST else 15
keras.utils.set_random_seed(0)
L = keras.layers

# 1. Data and a float CNN written with operators ------------------------------------------------
digits = load_digits()
x = digits.images[..., None].astype("float32")  # pixel values 0..16
y = digits.target
x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]

inp = keras.Input((8, 8, 1), name="image")
f = L.Conv2D(16, 3, padding="same", activation="relu")(inp / 8.0 - 1.0)
gate = ops.mean(f, axis=(1, 2), keepdims=True)
gate = L.ReLU(6.0)(L.Conv2D(16, 1)(gate) + 3.0) * (1.0 / 6.0)  # hard sigmoid
g = L.MaxPooling2D()(f * gate)
g = ops.concatenate([g, L.Conv2D(8, 1, activation="relu")(g)], axis=-1)
logits = L.Dense(10)(ops.reshape(g, (-1, 4 * 4 * 24)))
model = keras.Model(inp, logits)
model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
model.fit(x_train, y_train, epochs=EPOCHS, batch_size=64, verbose=0)
float_acc = float(np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test))

# 2. Quantize: every operator node becomes a quantized layer ------------------------------------
with warnings.catch_warnings():
    warnings.simplefilter("error", UserWarning)  # a float fallback would be a warning
    q = fixedq.quantize(model, fixedq.QuantizationParams(), x_train[:512], verbose=False)
print("quantized layers:", sorted({type(layer).__name__ for layer in q.layers}))
q_acc = float(np.mean(np.argmax(q.predict(x_test, verbose=0), -1) == y_test))
print(f"accuracy: float {float_acc:.3f}, 8-bit {q_acc:.3f}")

# 3. The integer engine gives the same outputs, bit for bit -------------------------------------
engine = fe.convert(q)
assert np.array_equal(engine.predict(x_test), q.predict(x_test, verbose=0))
print("engine: bit-exact on", len(x_test), "test images")

# 4. A tf-keras .h5 file with TFOpLambda nodes ---------------------------------------------------
import tensorflow as tf  # noqa: E402 - only this step needs TensorFlow/tf-keras directly
import tf_keras  # noqa: E402

t_in = tf_keras.Input((8, 8, 1))
t = tf_keras.layers.Conv2D(8, 3, padding="same", activation="relu")(t_in * 0.125)
t = t * tf.reduce_mean(t, axis=[1, 2], keepdims=True)  # TFOpLambda nodes
t_out = tf_keras.layers.Dense(10)(tf.reshape(t, (-1, 8 * 8 * 8)))
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # tf-keras: "HDF5 is legacy"
    tf_keras.Model(t_in, t_out).save("tf_keras_ops.h5")
loaded = fixedq.load_model("tf_keras_ops.h5")
q2 = fixedq.quantize(loaded, fixedq.QuantizationParams(), x_train[:256], verbose=False)
assert np.array_equal(fe.convert(q2).predict(x_test[:64]), q2.predict(x_test[:64], verbose=0))
print("tf-keras TFOpLambda model: quantized, engine bit-exact")

# 5. Slices, tf-keras' hard_sigmoid, thresholded ReLU, PReLU per element ------------------------
# A tf-keras file whose hard_sigmoid is tf-keras' clip(0.2 x + 0.5, 0, 1) (Keras 3 reads the name
# as another function; fixedq.load_model keeps tf-keras' one), a SlicingOpLambda (t[:, 1:, ::2]),
# a ReLU with a threshold and a PReLU with one alpha per element: all integer-only.
s_in = tf_keras.Input((8, 8, 1))
s = tf_keras.layers.Conv2D(6, 3, padding="same")(s_in)
s = tf_keras.layers.PReLU(alpha_initializer=tf_keras.initializers.Constant(0.25))(s)
s = tf_keras.layers.ReLU(threshold=0.5)(tf_keras.layers.Conv2D(6, 1)(s[:, 1:, ::2]))
s_out = tf_keras.layers.Dense(10, activation="hard_sigmoid")(tf_keras.layers.Flatten()(s))
tk_model = tf_keras.Model(s_in, s_out)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    tk_model.save("tf_keras_slices.h5")
loaded = fixedq.load_model("tf_keras_slices.h5")
assert np.array_equal(loaded.predict(x_test[:64], verbose=0),
                      tk_model.predict(x_test[:64], verbose=0))  # tf-keras' function, bit-exact
with warnings.catch_warnings():
    warnings.simplefilter("error", UserWarning)  # nothing falls back to float
    q3 = fixedq.quantize(loaded, fixedq.QuantizationParams(), x_train[:256], verbose=False)
assert np.array_equal(fe.convert(q3).predict(x_test[:64]), q3.predict(x_test[:64], verbose=0))
print("slices / tf-keras hard_sigmoid / ReLU(threshold) / PReLU: quantized:",
      sorted({type(layer).__name__ for layer in q3.layers} - {"InputLayer"}))
