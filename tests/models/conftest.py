"""Fixtures: a small CNN trained on scikit-learn's 8x8 digits (real data shipped in a package)."""

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits


@pytest.fixture(scope="session")
def digits():
    """(xtr, ytr, xte, yte), read-only: a test that changed them would change later tests."""
    d = load_digits()
    x = (d.images / 16.0).astype("float32")[..., None]
    parts = x[:1400], d.target[:1400], x[1400:], d.target[1400:]
    for part in parts:
        part.flags.writeable = False
    return parts


def small_cnn(name="cnn"):
    x = keras.Input((8, 8, 1), name="img")
    h = keras.layers.Conv2D(16, 3, padding="same", name="conv1")(x)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU(name="relu1")(h)
    h = keras.layers.SeparableConv2D(24, 3, padding="same", activation="relu", name="sep")(h)
    h = keras.layers.MaxPooling2D(name="pool")(h)
    r = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    r = keras.layers.ReLU(6.0, name="relu6")(r)
    r = keras.layers.Conv2D(24, 1, name="pw")(r)
    h = keras.layers.Add(name="add")([h, r])
    h = keras.layers.ReLU(name="relu_add")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    h = keras.layers.Dropout(0.1, name="drop")(h)
    out = keras.layers.Dense(10, name="logits")(h)
    return keras.Model(x, out, name=name)


@pytest.fixture(scope="session")
def trained_cnn(digits):
    keras.utils.set_random_seed(0)
    xtr, ytr, _, _ = digits
    model = small_cnn()
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(xtr, ytr, epochs=15, batch_size=32, verbose=0)
    return model


@pytest.fixture(autouse=True)
def _trained_cnn_unchanged(request):
    """No test (and no fixedq function) may modify the shared trained model's weights."""
    if "trained_cnn" not in request.fixturenames:
        yield
        return
    model = request.getfixturevalue("trained_cnn")
    before = [w.copy() for w in model.get_weights()]
    yield
    after = model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True)), \
        "the test modified the session's trained_cnn"
