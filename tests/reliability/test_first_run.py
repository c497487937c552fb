"""A newcomer's first runs: no TensorFlow/absl start-up noise, progress fit for a log or a
terminal (issue: reliability, deliverable 6)."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

NOISE = re.compile(r"absl|oneDNN|cudart|cuda|cpu_feature_guard|TF_ENABLE|tensorflow/|"
                   r"^[IWE]\d{4} |rebuild TensorFlow")
FIXEDQ = [sys.executable, "-m", "fixedq_cli.main"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(0)
    d = tmp_path_factory.mktemp("first_run")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (200, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 200)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, activation="relu")(inp)
    out = keras.layers.Dense(10)(keras.layers.Flatten()(h))
    keras.Model(inp, out).save(d / "m.keras")
    np.savez(d / "s.npz", x=x, y=y)
    return d


def _fixedq(*args, **kwargs):
    return subprocess.run([*FIXEDQ, *map(str, args)], capture_output=True, text=True,
                          timeout=300, **kwargs)


def test_no_tensorflow_noise_on_any_command(files):
    d = files
    first = _fixedq("quantize", "-m", d / "m.keras", "-sa", d / "s.npz", "-w", "4", "-a", "4",
                    "-s", d / "q.keras")
    assert first.returncode == 0, first.stderr
    commands = [
        ("convert", "-m", d / "q.keras", "-o", d / "q.fqe"),
        ("config", "-m", d / "q.keras", "-o", d / "c.json"),
        ("check", "-m", d / "q.keras", "-sa", d / "s.npz"),
        ("inspect", "-m", d / "m.keras", "-q", d / "q.keras", "-sa", d / "s.npz"),
        ("insert_rescaling", "-m", d / "m.keras", "-s", "0.5", "-o", "0", "-d", d / "r.keras"),
        ("quantize", "-m", d / "missing.keras"),  # an error: one line, no noise either
    ]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda argv: _fixedq(*argv), commands))
    convert_first = results[0]
    assert convert_first.returncode == 0, convert_first.stderr
    results.append(_fixedq("run", "-m", d / "q.fqe", "-sa", d / "s.npz"))
    for argv, result in zip([("quantize",), *commands, ("run",)], [first, *results],
                            strict=True):
        noisy = [line for line in result.stderr.splitlines() if NOISE.search(line)]
        assert not noisy, (argv[0], noisy)
    assert results[-2].returncode == 2 and len(results[-2].stderr.splitlines()) == 1
    # with -v the start-up logs are the user's to see (TensorFlow decides what it prints)
    verbose = _fixedq("-v", "config", "-m", d / "q.keras", "-o", d / "c2.json")
    assert verbose.returncode == 0


def test_progress_in_a_log_is_one_line_per_stage(files):
    d = files
    result = _fixedq("quantize", "-m", d / "m.keras", "-sa", d / "s.npz", "-w", "4", "-a", "4",
                     "-s", d / "q_log.keras")
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    stages = [line.split(":")[0] for line in result.stderr.splitlines()
              if "(running):" not in line]  # a long stage's heartbeat lines (> 30 s)
    assert stages[:3] == ["calibrating", "weight rounding", "bias correction"]
    assert len(stages) == len(set(stages))


def test_progress_on_a_terminal_is_a_live_bar(files):
    d = files
    main, secondary = pty.openpty()
    proc = subprocess.Popen([*FIXEDQ, "quantize", "-m", str(d / "m.keras"), "-sa",
                             str(d / "s.npz"), "-s", str(d / "q_tty.keras")],
                            stdout=subprocess.DEVNULL, stderr=secondary)
    os.close(secondary)
    chunks = []
    while True:
        ready, _, _ = select.select([main], [], [], 300)
        if not ready:
            break
        try:
            data = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    assert proc.wait(timeout=300) == 0
    text = b"".join(chunks).decode()
    assert "\rcalibrating [" in text and "] 200/200 samples in " in text
    assert not [line for line in text.splitlines() if NOISE.search(line)]
