"""Tests for fixedq.transforms.insert_rescaling."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from fixedq.transforms.insert_rescaling import insert_rescaling


def _model():
    keras.utils.set_random_seed(1)
    x = keras.Input((6, 6, 3), name="image")
    h = keras.layers.Conv2D(4, 3, name="conv")(x)
    h = keras.layers.ReLU(name="relu")(h)
    y = keras.layers.Dense(2, name="fc")(keras.layers.Flatten(name="flat")(h))
    return keras.Model(x, y, name="net")


def test_rescaling_is_inserted_and_equivalent():
    model = _model()
    new = insert_rescaling(model, 1 / 127.5, -1.0)
    assert [layer.name for layer in new.layers] == ["image", "rescaling", "conv", "relu",
                                                    "flat", "fc"]
    raw = np.random.default_rng(0).uniform(0, 255, (5, 6, 6, 3)).astype("float32")
    np.testing.assert_allclose(new.predict(raw, verbose=0),
                               model.predict(raw / 127.5 - 1, verbose=0), rtol=1e-5, atol=1e-5)
    assert [layer.name for layer in model.layers] == ["image", "conv", "relu", "flat", "fc"]


def test_sequential_and_name_clash():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="rescaling")])
    new = insert_rescaling(model, 2.0)
    assert type(new.layers[1]).__name__ == "Rescaling" and new.layers[1].name == "rescaling_1"
    x = np.ones((1, 3), "float32")
    np.testing.assert_allclose(new.predict(x, verbose=0), model.predict(2 * x, verbose=0),
                               rtol=1e-6)


@pytest.mark.parametrize("scale, offset, error", [
    (0.0, 0.0, ValueError), (float("inf"), 0.0, ValueError), (1.0, float("nan"), ValueError),
    ("2", 0.0, TypeError), (True, 0.0, TypeError),
])
def test_bad_arguments(scale, offset, error):
    with pytest.raises(error):
        insert_rescaling(_model(), scale, offset)


def test_already_rescaled_and_not_a_model():
    once = insert_rescaling(_model(), 0.5)
    with pytest.raises(ValueError, match="already starts with a Rescaling"):
        insert_rescaling(once, 0.5)
    with pytest.raises(TypeError):
        insert_rescaling("model.keras", 0.5)
