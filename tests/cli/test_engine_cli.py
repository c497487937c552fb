"""``fixedq convert`` and ``fixedq run`` as real subprocesses on a real quantized digits model.

Uses the session's ``cli_files`` model (tests/cli/conftest.py). Five subprocesses in all: the
TensorFlow start-up costs seconds each, so bad inputs share one process (cli_driver.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli import run_batch, run_cli


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def engine_files(cli_files, tmp_path_factory):
    """The .fqe written by ``fixedq convert`` (default name), labelled test data, Keras accuracy."""
    from sklearn.datasets import load_digits

    import fixedq

    d = tmp_path_factory.mktemp("engine_cli")
    qpath = d / "digits_q.keras"
    qpath.write_bytes(cli_files.qmodel.read_bytes())
    digest = _digest(qpath)
    result = run_cli("convert", "-m", qpath, "-t", "akida-2.0")
    assert result.code == 0, result.err
    fqe = d / "digits_q.fqe"
    assert fqe.is_file() and _digest(qpath) == digest  # input untouched
    assert f"saved engine model to {fqe}" in result.out
    assert "Engine model" in result.out and "target akida-2.0" in result.out

    digits = load_digits()
    x = (digits.images[..., None] / 17.0).astype("float32")
    y = digits.target.astype(np.int64)
    np.savez(d / "test.npz", x=x, y=y)
    np.save(d / "x.npy", x)
    np.save(d / "y.npy", y)
    qmodel = fixedq.load_model(qpath)
    keras_acc = float(np.mean(qmodel.predict(x, verbose=0).argmax(axis=1) == y))
    return {"dir": d, "qmodel": qpath, "fqe": fqe, "x": x, "y": y, "keras_acc": keras_acc}


def test_run_matches_keras_accuracy_without_tensorflow(engine_files):
    d = engine_files["dir"]
    argv = ["run", "-m", str(engine_files["fqe"]), "-sa", str(d / "test.npz"), "-bs", "100",
            "--profile"]
    code = ("import sys\n"
            "from fixedq_cli.main import main\n"
            f"rc = main({argv!r})\n"
            "print('TF-LOADED' if 'tensorflow' in sys.modules or 'keras' in sys.modules "
            "else 'TF-FREE')\n"
            "sys.exit(rc)\n")
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[-1] == "TF-FREE"
    n = len(engine_files["y"])
    acc = engine_files["keras_acc"]
    assert f"accuracy: {acc:.4f} ({round(acc * n)}/{n})" in lines
    assert lines[0].startswith(f"{n} samples, output ")
    assert any(line.startswith("predicted classes: ") for line in lines)
    assert any(line.startswith("class histogram: 0: ") for line in lines)
    # --profile: one row per op (the op names of the .fqe), a total and the per-kind shares
    import fixedq.engine as fe

    names = [op.name for op in fe.load(engine_files["fqe"]).ops]
    start = lines.index(next(ln for ln in lines if ln.startswith("op ") and "share" in ln))
    rows = lines[start + 2:start + 2 + len(names)]
    assert [r.split()[0] for r in rows] == names
    assert all(r.endswith("%") for r in rows)
    assert lines[-3].startswith("total ") and lines[-2].startswith("by kind: neural/")


def test_run_json_events_with_label_file(engine_files):
    d = engine_files["dir"]
    result = run_cli("run", "-m", engine_files["fqe"], "-sa", d / "x.npy",
                     "--labels", d / "y.npy", "--events", "--profile", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    y = engine_files["y"]
    assert report["samples"] == len(y)
    assert report["accuracy"] == pytest.approx(engine_files["keras_acc"], abs=1e-12)
    assert sum(report["histogram"].values()) == len(y) == len(report["predictions"])
    assert np.mean(np.array(report["predictions"]) == y) == report["accuracy"]
    assert report["events"] and all({"name", "kind", "events", "sparsity", "synops"}
                                    <= set(row) for row in report["events"])
    prof = report["profile"]
    assert [r["kind"] for r in prof][0] == "input" and all(r["seconds"] >= 0 for r in prof)
    assert sum(r["share"] for r in prof) == pytest.approx(1.0)


def test_bad_inputs_fail_before_tensorflow(engine_files, tmp_path, one_line_error):
    d = engine_files["dir"]
    fqe, qmodel = engine_files["fqe"], engine_files["qmodel"]
    corrupt = tmp_path / "corrupt.fqe"
    corrupt.write_bytes(fqe.read_bytes()[:200])
    foreign = tmp_path / "foreign.fqe"
    with open(foreign, "wb") as f:
        np.savez(f, a=np.zeros(3))
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((4, 9, 9, 1), "float32"))
    short = tmp_path / "short.npy"
    np.save(short, engine_files["y"][:5])
    digest = _digest(qmodel)
    cases = [
        (["convert", "-m", tmp_path / "missing.keras"], ["model file not found"]),
        (["convert", "-m", qmodel, "-o", tmp_path / "no" / "dir.fqe"], ["does not exist"]),
        (["convert", "-m", qmodel, "-o", qmodel], ["refusing to overwrite the input"]),
        (["convert", "-m", qmodel, "-t", "akida-9"], ["invalid choice"]),
        (["run", "-m", tmp_path / "missing.fqe", "-sa", d / "test.npz"], ["does not exist"]),
        (["run", "-m", corrupt, "-sa", d / "test.npz"], ["not a valid"]),
        (["run", "-m", foreign, "-sa", d / "test.npz"], ["foreign .npz"]),
        (["run", "-m", fqe, "-sa", wrong], ["expects inputs of shape", "(4, 9, 9, 1)"]),
        (["run", "-m", fqe, "-sa", d / "x.npy", "--labels", short], ["expected 1797"]),
        (["run", "-m", fqe, "-sa", tmp_path / "missing.npz"], ["samples file not found"]),
        (["run", "-m", fqe, "-sa", d / "test.npz", "-bs", "0"], ["positive integer"]),
    ]
    results, tf_imported = run_batch([argv for argv, _ in cases])
    assert not tf_imported
    for (_argv, fragments), result in zip(cases, results, strict=True):
        one_line_error(result, *fragments)
    assert _digest(qmodel) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["corrupt.fqe", "foreign.fqe", "wrong.npz", "short.npy"])  # nothing half-written


def test_convert_float_model_is_one_line_error(cli_files, tmp_path, one_line_error):
    out = tmp_path / "float.fqe"
    result = run_cli("convert", "-m", cli_files.model, "-o", out)
    one_line_error(result, "not quantized")
    assert not out.exists()
