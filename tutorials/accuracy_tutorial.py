"""Tutorial: the "guidelines for best accuracy" workflow (docs/accuracy.md) on MNIST.

Run:  python tutorials/accuracy_tutorial.py
(FIXEDQ_TUTORIAL_FAST=1 runs a shortened version; the test suite uses it as a smoke test.)

Steps:
1. Lint the float model *before* training it: BatchNormalization after every convolution,
   weight decay (seed 001, guidelines 3.1-3.3). Fix the model, then train it.
2. PTQ at 8 bits and at 4-bit weights.
3. Inspect the 4-bit model: per-layer SNR of weights and activations, saturation, a PNG plot.
4. Try 16 bits to see whether bits are the problem (guideline 2.C).
5. Automatic mixed precision, accuracy budget: 4-bit weights wherever the accuracy stays
   within 1 point of 8-bit (seed 003 "full_auto").
6. Automatic mixed precision, cost budget: 16-bit layers within 1.2x the bit-operations of
   8-bit (seed 001 "mixed_precision_factor" / guideline 2.D).
7. Save the chosen q-config and re-apply it (bit-exact, no samples needed).
"""

import json
import os
import tempfile

import keras
import numpy as np

import fixedq
import fixedq.engine
from fixedq.analysis import inspect, lint
from fixedq.analysis.mixed_precision import search_accuracy_budget, search_cost_budget
from fixedq.demo import load_digits_mnist

FAST = os.environ.get("FIXEDQ_TUTORIAL_FAST") == "1"
L = keras.layers
out_dir = tempfile.mkdtemp(prefix="fixedq_accuracy_")


def accuracy(model, x, y, batch=500):
    """Top-1 accuracy in %; a direct call (no predict() tracing for every new model)."""
    logits = np.concatenate([np.asarray(model(x[i:i + batch], training=False))
                             for i in range(0, len(x), batch)])
    return 100.0 * float(np.mean(np.argmax(logits, axis=1) == y))


x_train, y_train, x_test, y_test = load_digits_mnist()
if FAST:
    x_train, y_train, x_test, y_test = x_train[:800], y_train[:800], x_test[:200], y_test[:200]


def cnn(friendly: bool) -> keras.Model:
    """A small CNN; ``friendly`` adds BN after each conv and L2 weight decay 1e-4."""
    reg = keras.regularizers.L2(1e-4) if friendly else None
    bn = (lambda name: L.BatchNormalization(momentum=0.9, name=name)) if friendly else \
        (lambda name: L.Identity(name=name))
    inputs = keras.Input((28, 28, 1), name="image")
    h = L.Rescaling(1 / 255, name="scale")(inputs)
    h = L.Conv2D(16, 3, strides=2, padding="same", kernel_regularizer=reg, name="conv1")(h)
    h = L.ReLU(name="relu1")(bn("bn1")(h))
    h = L.DepthwiseConv2D(3, padding="same", depthwise_regularizer=reg, name="dw2")(h)
    h = L.ReLU(name="relu2")(bn("bn2")(h))
    h = L.Conv2D(32, 1, kernel_regularizer=reg, name="pw2")(h)
    h = L.ReLU(name="relu3")(bn("bn3")(h))
    h = L.Conv2D(32, 3, strides=2, padding="same", kernel_regularizer=reg, name="conv3")(h)
    h = L.ReLU(name="relu4")(bn("bn4")(h))
    h = L.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inputs, L.Dense(10, kernel_regularizer=reg, name="logits")(h),
                       name="friendly" if friendly else "plain")


# 1. Lint first: it is static, so it runs before any training.
print(lint(cnn(friendly=False)).format_table(), end="\n\n")
model = cnn(friendly=True)
print(lint(model).format_table(), end="\n\n")
keras.utils.set_random_seed(0)
model.compile(optimizer=keras.optimizers.Adam(3e-3),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(x_train, y_train, epochs=4 if FAST else 8, batch_size=32, verbose=0)
acc_float = accuracy(model, x_test, y_test)
print(f"float accuracy:              {acc_float:6.2f}%")

# 2. PTQ, one calibration per bit width.
calibration = x_train[:256 if FAST else 1024]
q8 = fixedq.quantize(model, samples=calibration, verbose=False)
acc8 = accuracy(q8, x_test, y_test)
qp4 = fixedq.QuantizationParams(input_weight_bits=4, weight_bits=4, activation_bits=8)
q4 = fixedq.quantize(model, qp4, samples=calibration, verbose=False)
print(f"8-bit PTQ accuracy:          {acc8:6.2f}%")
print(f"4-bit weights PTQ accuracy:  {accuracy(q4, x_test, y_test):6.2f}%")

# 3. Inspect the 4-bit model on held-out images (not used for calibration).
report = inspect(model, q4, x_test[:100] if FAST else x_test, verbose=False)
print(report.format_table(), end="\n\n")
report.plot(os.path.join(out_dir, "inspect_w4.png"))

# 4. 16 bits everywhere: if this does not recover the float accuracy, bits are not the issue.
qp16 = fixedq.QuantizationParams(input_weight_bits=16, weight_bits=16, activation_bits=16,
                                 output_bits=16, buffer_bits=48, scale_bits=16)
q16 = fixedq.quantize(model, qp16, samples=calibration, verbose=False)
print(f"16-bit PTQ accuracy:         {accuracy(q16, x_test, y_test):6.2f}%")

# 4b. Asymmetric activations: signed tensors (here the logits) get a per-channel integer window
# [lo, lo + 2^n - 1] that fits their calibrated range; the engine folds lo into the next bias.
qp44 = fixedq.QuantizationParams(weight_bits=4, activation_bits=4)
qp44a = fixedq.QuantizationParams(weight_bits=4, activation_bits=4, asymmetric_activations=True)
q44 = fixedq.quantize(model, qp44, samples=calibration, verbose=False)
q44a = fixedq.quantize(model, qp44a, samples=calibration, verbose=False)
print(f"4/4-bit PTQ symmetric:       {accuracy(q44, x_test, y_test):6.2f}%")
print(f"4/4-bit PTQ asymmetric:      {accuracy(q44a, x_test, y_test):6.2f}%   "
      f"logits windows start at {q44a.get_layer('logits').output_spec.lo[:4]} ...")
engine = fixedq.engine.convert(q44a)
print("engine bit-exact on the asymmetric model:",
      np.array_equal(engine.predict(x_test, batch_size=100), q44a.predict(x_test, verbose=0)))


# 5. Accuracy budget: a metric is any function of the quantized model; higher is better.
def test_accuracy(qmodel):
    return accuracy(qmodel, x_test, y_test)


config8 = fixedq.dump_config(q8)  # start from the 8-bit calibration: no new calibration
amp = search_accuracy_budget(model, test_accuracy, q_config=config8, accuracy_tolerance=1.0,
                             log_path=os.path.join(out_dir, "amp_trials.json"))
print(amp.format_table(), end="\n\n")

# 6. Cost budget: 16-bit layers where the noise is added, within 1.2x the bit-operations.
cost = search_cost_budget(model, calibration, cost_ratio=1.2, metric=test_accuracy,
                          q_config=config8, inspect_samples=x_test[:100 if FAST else 500])
print(cost.format_table(), end="\n\n")

# 7. The result is a q-config: save it, re-apply it later without samples (bit-exact).
path = os.path.join(out_dir, "amp_config.json")
with open(path, "w") as f:
    json.dump(amp.q_config, f)
with open(path) as f:
    again = fixedq.quantize(model, q_config=json.load(f), verbose=False)
assert accuracy(again, x_test, y_test) == amp.metric
print(f"re-applied {path}: accuracy {amp.metric:.2f}% with "
      f"{100 * amp.low_bit_weight_fraction:.0f}% of the weights in 4 bits")
