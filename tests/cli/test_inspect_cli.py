"""``fixedq inspect``, ``fixedq mixed_precision`` and ``fixedq check`` on a float model (lint)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def run_batch(cases, cwd=None):
    """Run many command lines in one fresh process (see cli_driver.py)."""
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("cli_driver.py"))],
                          input=json.dumps([[str(a) for a in args] for args in cases]),
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    return report["results"], report["tensorflow_imported"]




@pytest.fixture(scope="module")
def runs(cli_files, tmp_path_factory):
    from sklearn.datasets import load_digits

    d = tmp_path_factory.mktemp("inspect_cli")
    digits = load_digits()
    x = (digits.images[..., None] / 17.0).astype("float32")
    np.savez(d / "eval.npz", x=x[1500:1700], y=digits.target[1500:1700])
    m, q, sa = cli_files.model, cli_files.qmodel, cli_files.samples
    cases = {
        "inspect": ("inspect", "-m", m, "-q", q, "-sa", sa, "--plot", d / "err.png"),
        "inspect_json": ("inspect", "-m", m, "-q", q, "-sa", sa, "--split", "0.5", "--json"),
        "lint": ("check", "-m", m),
        "lint_json": ("check", "-m", m, "--json", "--min_weight_decay", "0"),
        "amp": ("mixed_precision", "-m", m, "-sa", sa, "--eval", d / "eval.npz",
                "--tolerance", "1", "-o", d / "amp.json", "--log", d / "log.json",
                "-s", d / "amp.keras"),
        "apply": ("quantize", "-m", m, "-c", d / "amp.json", "-s", d / "applied.keras"),
        "cost": ("mixed_precision", "-m", m, "-sa", sa, "--mode", "cost", "--cost_ratio",
                 "1.3", "--json"),
        "swapped": ("inspect", "-m", q, "-q", m, "-sa", sa),
        "float_q": ("inspect", "-m", m, "-q", m, "-sa", sa),
    }
    results, _ = run_batch(list(cases.values()))
    return d, dict(zip(cases, results, strict=True))


def test_inspect_table_and_plot(runs):
    d, r = runs
    res = r["inspect"]
    assert res["code"] == 0, res["err"]
    assert "a SNR dB" in res["out"] and "conv1" in res["out"] and "saved plot to" in res["out"]
    assert (d / "err.png").read_bytes()[:4] == b"\x89PNG"
    assert "inspecting: 256/256 samples in " in res["err"]  # stderr is not a terminal here


def test_inspect_json(runs):
    res = runs[1]["inspect_json"]
    assert res["code"] == 0, res["err"]
    report = json.loads(res["out"])
    assert report["num_samples"] == 128
    rows = {row["name"]: row for row in report["layers"]}
    assert rows["conv1"]["reference"] == "relu1(conv1)"
    assert rows["fc"]["weights"]["snr_db"] > 30 and rows["fc"]["activation"]["snr_db"] > 20


def test_check_lints_a_float_model(runs):
    r = runs[1]
    assert r["lint"]["code"] == 1, r["lint"]["err"]
    assert "conv1: conv_without_batchnorm" in r["lint"]["out"]
    assert "missing_weight_decay" in r["lint"]["out"]
    report = json.loads(r["lint_json"]["out"])
    assert report["kind"] == "float_model_lint" and not report["ok"]


def test_mixed_precision_accuracy_mode(runs):
    d, r = runs
    res = r["amp"]
    assert res["code"] == 0, res["err"]
    assert "mixed precision: trial 0" in res["err"] and "result: metric" in res["out"]
    config = json.loads((d / "amp.json").read_text())
    assert config["format"] == "fixedq-qconfig"
    log = json.loads((d / "log.json").read_text())
    assert log["trials"] and not log["interrupted"]
    assert log["metric"] >= log["reference_metric"] - 1.0
    assert r["apply"]["code"] == 0 and (d / "applied.keras").exists() and (d / "amp.keras").exists()


def test_mixed_precision_cost_mode(runs):
    res = runs[1]["cost"]
    assert res["code"] == 0, res["err"]
    result = json.loads(res["out"])
    assert result["mode"] == "cost" and result["cost_ratio"] <= 1.3
    assert 16 in result["weight_bits"].values()


def test_wrong_models(runs, one_line_error):
    one_line_error(runs[1]["swapped"], "is a quantized model")
    one_line_error(runs[1]["float_q"], "is not a fixedq quantized model")


def test_bad_input_fails_before_tensorflow(cli_files, tmp_path, one_line_error):
    m, q, sa = cli_files.model, cli_files.qmodel, cli_files.samples
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((4, 8, 8, 1), "float32"))
    cases = [
        (("inspect", "-m", m, "-q", tmp_path / "missing.keras", "-sa", sa), "not found"),
        (("inspect", "-m", m, "-q", q, "-sa", sa, "--split", "0"), "fraction in (0, 1]"),
        (("inspect", "-m", m, "-q", q, "-sa", sa, "--plot", tmp_path / "e.jpg"), ".png"),
        (("mixed_precision", "-m", m, "-sa", sa), "--eval"),
        (("mixed_precision", "-m", m, "-sa", sa, "--mode", "cost", "--cost_ratio", "0.5"),
         ">= 1"),
        (("mixed_precision", "-m", m, "-sa", sa, "--eval", tmp_path / "nolabels.npz"),
         "no labels"),
        (("mixed_precision", "-m", m, "--eval", tmp_path / "nolabels.npz"), "-sa"),
    ]
    results, tf_imported = run_batch([args for args, _ in cases])
    for (_, fragment), res in zip(cases, results, strict=True):
        one_line_error(res, fragment)
    assert not tf_imported
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nolabels.npz"]
