"""``fixedq qat`` end to end on digits .npz files, and its one-line errors (exit code 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def run_batch(cases):
    """Run many command lines in one fresh process (see cli_driver.py)."""
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("cli_driver.py"))],
                          input=json.dumps([[str(a) for a in args] for args in cases]),
                          capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["results"]




@pytest.fixture(scope="module")
def runs(cli_files, tmp_path_factory):
    from sklearn.datasets import load_digits

    d = tmp_path_factory.mktemp("qat_cli")
    digits = load_digits()
    x = (digits.images[..., None] / 17.0).astype("float32")
    y = digits.target
    np.savez(d / "train.npz", x=x[:800], y=y[:800])
    np.savez(d / "val.npz", x=x[800:1000], y=y[800:1000])
    np.savez(d / "short.npz", x=x[:100], y=y[:90])
    np.savez(d / "nolabels.npz", x=x[:100])
    q = cli_files.qmodel
    cases = {
        "ok": ("qat", "-m", q, "--train", d / "train.npz", "-e", "2", "-bs", "64",
               "-s", d / "out.keras", "--json"),
        "val": ("qat", "-m", q, "--train", d / "train.npz", "--val", d / "val.npz", "-e", "1",
                "--lr", "1e-4", "-s", d / "out_val.keras"),
        "float": ("qat", "-m", cli_files.model, "--train", d / "train.npz",
                  "-s", d / "float_out.keras"),
        "mismatch": ("qat", "-m", q, "--train", d / "short.npz", "-s", d / "x.keras"),
        "nolabels": ("qat", "-m", q, "--train", d / "nolabels.npz", "-s", d / "x.keras"),
        "overwrite": ("qat", "-m", q, "--train", d / "train.npz", "-s", q),
        "bad_lr": ("qat", "-m", q, "--train", d / "train.npz", "--lr", "-1"),
        "teacher": ("qat", "-m", q, "--train", d / "train.npz", "--val", d / "val.npz", "-e",
                    "1", "--lr", "1e-4", "--teacher", cli_files.model, "--distill", "0.7",
                    "-s", d / "out_teacher.keras", "--json"),
        "keep_clear": ("qat", "-m", q, "--train", d / "train.npz", "--val", d / "val.npz",
                       "-e", "1", "--lr", "1e-4", "--keep", "clear", "-s", d / "out_clear.keras",
                       "--json"),
        "teacher_q": ("qat", "-m", q, "--train", d / "train.npz", "--teacher", q,
                      "-s", d / "tq.keras"),
        "teacher_missing": ("qat", "-m", q, "--train", d / "train.npz", "--teacher",
                            d / "nope.keras", "-s", d / "tm.keras"),
        "bad_distill": ("qat", "-m", q, "--train", d / "train.npz", "--teacher",
                        cli_files.model, "--distill", "1.5"),
    }
    return d, dict(zip(cases, run_batch(list(cases.values())), strict=True))


def test_qat_end_to_end(runs, cli_files):
    import keras  # noqa: F401

    import fixedq
    from fixedq.engine import convert

    d, r = runs
    res = r["ok"]
    assert res["code"] == 0, res["err"]
    history = json.loads(res["out"][:res["out"].rindex("}") + 1])
    assert len(history["val_metric"]) == 2 and history["lr_source"] == "range test"
    assert 1e-5 <= history["peak_lr"] <= 3e-3
    kept = history["kept_epoch"]
    best = history["val_metric"][kept - 1] if kept else history["start_metric"]
    assert best >= history["start_metric"]
    assert f"to {d / 'out.keras'}" in res["out"]
    assert "qat: epoch 1/2" in res["err"] and "qat: lr range test" in res["err"]
    model = fixedq.load_model(d / "out.keras")
    x = np.load(d / "val.npz")["x"]
    np.testing.assert_array_equal(convert(model).predict(x), model.predict(x, verbose=0))
    assert r["val"]["code"] == 0, r["val"]["err"]
    assert (d / "out_val.keras").is_file()
    assert history["keep"] == "clear"  # auto: no teacher
    clear = r["keep_clear"]
    assert clear["code"] == 0, clear["err"]
    assert json.loads(clear["out"][:clear["out"].rindex("}") + 1])["keep"] == "clear"
    assert (d / "out_clear.keras").is_file()


def test_qat_errors(runs, one_line_error):
    d, r = runs
    one_line_error(r["float"], "not a fixedq quantized model")
    assert not (d / "float_out.keras").exists()
    one_line_error(r["mismatch"], "90 rows for 100 samples")
    one_line_error(r["nolabels"], "no labels")
    one_line_error(r["overwrite"], "refusing to overwrite the input")
    one_line_error(r["bad_lr"], "positive learning rate")
    one_line_error(r["teacher_q"], "is a quantized model")
    assert not (d / "tq.keras").exists()
    one_line_error(r["teacher_missing"], "model file not found")
    one_line_error(r["bad_distill"], "weight in [0, 1]")


def test_qat_with_a_teacher(runs):
    d, r = runs
    res = r["teacher"]
    assert res["code"] == 0, res["err"]
    history = json.loads(res["out"][:res["out"].rindex("}") + 1])
    assert history["distill"] == 0.7 and len(history["val_metric"]) == 1
    assert history["keep"] == "end"  # auto: a teacher
    assert (d / "out_teacher.keras").is_file()
