"""Shared pytest configuration: quiet TensorFlow logs and a fixed random state for every test.

Every test starts from the same seeds (Python, NumPy's global generator and, once Keras is
imported, Keras/TensorFlow), so its outcome does not depend on which tests ran before it.
"""

import os
import random
import sys

import numpy as np
import pytest
from hypothesis import settings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TEST_SEED = 1234

# property tests draw the same examples on every run and machine (a failure found once is
# found again); the seed is derived from each test's name
settings.register_profile("fixedq", derandomize=True, deadline=None)
settings.load_profile("fixedq")


@pytest.fixture(autouse=True)
def _seeded():
    """Reset every global random generator before each test (order independence)."""
    random.seed(TEST_SEED)
    np.random.seed(TEST_SEED)
    if "keras" in sys.modules:
        sys.modules["keras"].utils.set_random_seed(TEST_SEED)
    yield


class AffineSkip:
    """The affine/skip block several tests quantize: Rescaling with an offset ->
    BatchNormalization -> a 3x3 and a 1x1 conv -> Add -> BatchNormalization -> ReLU(1.5)
    (two unfoldable BatchNormalizations and a Rescaling: three integer affine ops)."""

    @staticmethod
    def block(x):
        """The block on tensor ``x`` (its output tensor)."""
        import keras

        L = keras.layers
        y = L.Rescaling(1 / 127.5, offset=-1.0)(x)
        y = L.BatchNormalization()(y)
        y = L.Add()([L.Conv2D(4, 3, padding="same")(y), L.Conv2D(4, 1)(y)])
        y = L.BatchNormalization()(y)
        return L.ReLU(max_value=1.5)(y)

    @staticmethod
    def randomize_batchnorms(model, rng) -> None:
        """Give every BatchNormalization of ``model`` random, non-trivial statistics."""
        import keras

        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                c = layer.gamma.shape[0]
                layer.set_weights([rng.uniform(-2, 2, c), rng.normal(size=c),
                                   rng.normal(size=c), rng.uniform(0.2, 3, c)])


@pytest.fixture
def affine_skip() -> type[AffineSkip]:
    """:class:`AffineSkip` (a block shared by the parity and ONNX export tests)."""
    return AffineSkip
