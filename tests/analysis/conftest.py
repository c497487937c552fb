"""Fixtures of the analysis tests: a small BN CNN trained once on scikit-learn's 8x8 digits."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits


@pytest.fixture(scope="session")
def digits_data():
    d = load_digits()
    x = (d.images / 16.0).astype("float32")[..., None]
    return x[:1400], d.target[:1400], x[1400:], d.target[1400:]


def bn_cnn(name="bn_cnn"):
    """conv+BN+ReLU -> depthwise+BN+ReLU -> MaxPool -> separable(relu) -> flatten -> dense."""
    x = keras.Input((8, 8, 1), name="img")
    h = keras.layers.Conv2D(12, 3, padding="same", name="conv1")(x)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU(name="relu1")(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = keras.layers.BatchNormalization(name="bn_dw")(h)
    h = keras.layers.ReLU(name="relu_dw")(h)
    h = keras.layers.MaxPooling2D(name="pool")(h)
    h = keras.layers.SeparableConv2D(16, 3, padding="same", activation="relu", name="sep")(h)
    h = keras.layers.Flatten(name="flat")(h)
    out = keras.layers.Dense(10, name="logits")(h)
    return keras.Model(x, out, name=name)


@pytest.fixture(scope="session")
def trained_bn_cnn(digits_data):
    keras.utils.set_random_seed(0)
    xtr, ytr, _, _ = digits_data
    model = bn_cnn()
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(xtr, ytr, epochs=8, batch_size=32, verbose=0)
    return model


def _accuracy_on(x, y):
    """A metric(qmodel) -> top-1 accuracy in % on (x, y)."""

    def accuracy(qmodel) -> float:
        pred = np.asarray(qmodel(x, training=False))  # no predict() tracing per model
        return 100.0 * float(np.mean(np.argmax(pred, -1) == y))

    return accuracy


@pytest.fixture(scope="session")
def accuracy_on():
    """``accuracy_on(x, y)`` -> a metric(qmodel) -> top-1 accuracy in %."""
    return _accuracy_on
