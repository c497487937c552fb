"""The README's main command: `fixedq demo` end to end (1 training epoch to keep it short)."""

import subprocess
import sys


def test_demo_runs_and_is_bit_exact(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fixedq_cli.main", "demo", "--epochs", "1", "--no_cache",
         "-o", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    # a newcomer's first run: progress lines only, no TensorFlow/absl start-up noise
    noise = [line for line in result.stderr.splitlines()
             if any(word in line for word in ("absl", "oneDNN", "cuda", "I0000", "W0000"))]
    assert not noise and "\r" not in result.stderr, noise
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["model", "keras", "acc", "engine", "acc", "bit-exact", "file"]
    rows = {line[:18].strip(): line[18:].split() for line in lines[1:4]}
    assert set(rows) == {"float", "8-bit (i8 w8 a8)", "4-bit (i8 w4 a4)"}
    for name in ("8-bit (i8 w8 a8)", "4-bit (i8 w4 a4)"):
        keras_acc, engine_acc, exact = rows[name][:3]
        assert keras_acc == engine_acc and exact == "yes"
        assert float(keras_acc.rstrip("%")) > 20.0  # 1 epoch: well above chance (10%)
    assert lines[-1] == "engine == quantized Keras, bit for bit: yes"
    assert {p.name for p in tmp_path.iterdir()} == {"float.keras", "i8_w8_a8.fqe",
                                                     "i8_w4_a4.fqe"}
