"""Fixtures of the CLI tests: a tiny digits model trained once, saved like a user would."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def assert_one_line_error(result, *fragments) -> None:
    """A CLI run failed as the CLI promises for bad input: exit code 2, one ``error:`` line on
    stderr naming every fragment, no traceback, nothing on stdout. ``result`` is a
    ``test_cli.Result`` or a ``cli_driver.py`` result dict."""
    if isinstance(result, dict):
        code, out, err = result["code"], result["out"], result["err"]
    else:
        code, out, err = result.code, result.out, result.err
    assert code == 2, result
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "error:" in lines[0] and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert out == "", out


@pytest.fixture
def one_line_error():
    """:func:`assert_one_line_error` for the tests of this folder."""
    return assert_one_line_error


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
