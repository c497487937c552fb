"""Fixtures of the CLI tests: a tiny digits model trained once, saved like a user would."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@dataclass
class CLIFiles:
    dir: Path
    model: Path  # float model (.keras)
    qmodel: Path  # quantized with fixedq.quantize on the samples (.keras)
    samples: Path  # .npz of two arrays (concatenated by the CLI)
    x: np.ndarray  # the samples, concatenated


@pytest.fixture(scope="session")
def cli_files(tmp_path_factory) -> CLIFiles:
    import keras
    from sklearn.datasets import load_digits

    import fixedq

    keras.utils.set_random_seed(0)
    digits = load_digits()
    x = (digits.images[..., None] / 17.0).astype("float32")  # in [0, 0.95]
    y = digits.target
    inp = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inp)
    h = keras.layers.ReLU(name="relu1")(h)
    h = keras.layers.MaxPooling2D(name="pool1")(h)
    h = keras.layers.Conv2D(16, 3, padding="same", name="conv2")(h)
    h = keras.layers.ReLU(name="relu2")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    out = keras.layers.Dense(10, name="fc")(h)
    model = keras.Model(inp, out, name="digits")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=4, batch_size=64, verbose=0)

    d = tmp_path_factory.mktemp("cli")
    files = CLIFiles(d, d / "digits.keras", d / "digits_q.keras", d / "samples.npz", x[:256])
    fixedq.save_model(model, files.model)
    np.savez(files.samples, part1=x[:100], part2=x[100:256])
    qmodel = fixedq.quantize(model, samples=files.x, verbose=False)
    fixedq.save_model(qmodel, files.qmodel)
    return files
