"""Shared pytest configuration: keep TensorFlow's C++ logging quiet during tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
