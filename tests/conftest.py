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
