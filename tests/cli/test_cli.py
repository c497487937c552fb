"""The ``fixedq`` command line, run as real subprocesses on real saved models.

Starting TensorFlow costs seconds per process, so each good path runs once, and bad input is
tested where possible on paths that fail before TensorFlow is imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

COMMANDS = ("quantize", "config", "check", "insert_rescaling")


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(*args, cwd=None) -> Result:
    """Run ``python -m fixedq_cli.main ARGS`` in a fresh process."""
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the CLI itself must keep TensorFlow quiet
    proc = subprocess.run([sys.executable, "-m", "fixedq_cli.main", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()




def run_batch(cases, cwd=None) -> tuple[list[Result], bool]:
    """Run many command lines in one fresh process (see cli_driver.py).

    Returns the results and whether TensorFlow was imported in that process.
    """
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("cli_driver.py"))],
                          input=json.dumps([[str(a) for a in args] for args in cases]),
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    results = [Result(r["code"], r["out"], r["err"]) for r in report["results"]]
    return results, report["tensorflow_imported"]


# --- help: no TensorFlow -------------------------------------------------------------------


def test_help_lists_commands_without_importing_tensorflow():
    code = ("import sys\n"
            "from fixedq_cli.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TF-LOADED' if 'tensorflow' in sys.modules or 'keras' in sys.modules "
            "else 'TF-FREE')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("TF-FREE")
    for name in COMMANDS:
        assert name in proc.stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_command_help(name):
    result = run_cli(name, "--help")
    assert result.code == 0
    assert f"usage: fixedq {name}" in result.out
    assert "-m MODEL" in result.out


def test_installed_script_version():
    script = __import__("shutil").which("fixedq") or str(
        __import__("pathlib").Path(sys.executable).with_name("fixedq"))
    proc = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("fixedq ")


# --- bad input that fails before TensorFlow is imported ------------------------------------


def test_bad_input_before_tensorflow(cli_files, tmp_path, one_line_error):
    d = cli_files.dir
    before = {p.name: _digest(p) for p in d.iterdir()}
    text_file = tmp_path / "notes.keras"
    text_file.write_text("not a model\n")
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(cli_files.model.read_bytes()[:500])
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"format": "fixedq-qconfig", "layers": {')
    not_qconfig = tmp_path / "other.json"
    not_qconfig.write_text('{"hello": 1}')
    str_npz = tmp_path / "strings.npz"
    np.savez(str_npz, x=np.array([["a", "b"]]))
    mixed_npz = tmp_path / "mixed.npz"
    np.savez(mixed_npz, a=np.zeros((2, 8, 8, 1)), b=np.zeros((2, 8, 8)))
    m = cli_files.model
    cases = [
        (("quantize", "-m", d / "missing.keras"), "model file not found"),
        (("check", "-m", tmp_path), "is not a file"),
        (("quantize", "-m", text_file), "is not a Keras model file"),
        (("config", "-m", truncated), "corrupt zip archive"),
        (("quantize", "-m", m, "-w", "17"), "bit width must be in [2, 16], got 17"),
        (("quantize", "-m", m, "-a", "0"), "bit width must be in [1, 16], got 0"),
        (("quantize", "-m", m, "-c", bad_json), "is not valid JSON"),
        (("quantize", "-m", m, "-c", not_qconfig), "is not a fixedq q-config"),
        (("quantize", "-m", m, "-c", bad_json, "-w", "4"), "do not combine it with"),
        (("quantize", "-m", m, "-sa", str_npz), "real numbers (float or int) are expected"),
        (("check", "-m", cli_files.qmodel, "-sa", mixed_npz), "must share the sample shape"),
        (("quantize", "-m", m, "-sa", bad_json), "cannot read samples"),
        (("quantize", "-m", m, "-s", tmp_path / "nodir" / "q.keras"), "does not exist"),
        (("config", "-m", cli_files.qmodel, "-o", tmp_path / "nodir" / "c.json"),
         "does not exist"),
        (("insert_rescaling", "-m", m, "-s", "1", "-o", "0", "-d", tmp_path / "no" / "r.h5"),
         "does not exist"),
        (("quantize", "-m", m, "-s", m), "refusing to overwrite the input"),
        (("insert_rescaling", "-m", m, "-s", "0.5", "-o", "0", "-d", m),
         "refusing to overwrite the input"),
        (("insert_rescaling", "-m", m, "-s", "nan", "-o", "0", "-d", tmp_path / "r.keras"),
         "finite number"),
        (("quantize", "-m", m, "-s", tmp_path / "q.txt"), "must end with one of"),
    ]
    # Two as separate processes, all in one process that must never import TensorFlow.
    for args, fragment in cases[:1] + cases[4:5]:
        one_line_error(run_cli(*args), fragment)
    results, tf_imported = run_batch([args for args, _ in cases])
    for (_args, fragment), result in zip(cases, results, strict=True):
        one_line_error(result, fragment)
    assert not tf_imported
    assert {p.name: _digest(p) for p in d.iterdir()} == before  # nothing written or changed
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["notes.keras", "truncated.keras", "bad.json", "other.json", "strings.npz", "mixed.npz"])


def test_verbose_shows_traceback(cli_files):
    result = run_cli("-v", "quantize", "-m", cli_files.dir / "missing.keras")
    assert result.code != 0 and "Traceback" in result.err


# --- good paths (TensorFlow) ---------------------------------------------------------------


def test_quantize_with_samples_default_name(cli_files):
    import fixedq

    digest = _digest(cli_files.model)
    result = run_cli("quantize", "-m", cli_files.model, "-sa", cli_files.samples, "-bs", "64")
    assert result.code == 0, result.err
    out = cli_files.dir / "digits_i8_w8_a8.keras"
    assert result.out.strip() == f"saved quantized model to {out}"
    assert "calibrating" in result.err and "256/256 samples" in result.err
    assert "warning" not in result.err and "I0000" not in result.err
    assert _digest(cli_files.model) == digest
    # Same samples, same parameters: the same model as the Python API's.
    got = fixedq.load_model(out).predict(cli_files.x, verbose=0)
    want = fixedq.load_model(cli_files.qmodel).predict(cli_files.x, verbose=0)
    np.testing.assert_array_equal(got, want)


def test_config_dumps_json(cli_files, tmp_path):
    import fixedq

    cfg = tmp_path / "cfg.json"
    result = run_cli("config", "-m", cli_files.qmodel, "-o", cfg)
    assert result.code == 0, result.err
    assert result.out.startswith("saved q-config of ")
    qmodel = fixedq.load_model(cli_files.qmodel)
    assert json.loads(cfg.read_text()) == json.loads(json.dumps(fixedq.dump_config(qmodel)))
    assert [p.name for p in tmp_path.iterdir()] == ["cfg.json"]  # no temporary left


def test_check_clean_model_table(cli_files):
    result = run_cli("check", "-m", cli_files.qmodel, "-sa", cli_files.samples)
    assert result.code == 0, result.out + result.err
    assert "256 samples" in result.out
    assert "no problems found" in result.out
    for name in ("conv1", "conv2", "fc", "headroom"):
        assert name in result.out
    assert result.err == ""


def test_insert_rescaling(cli_files, tmp_path):
    import fixedq

    dest = tmp_path / "rescaled.h5"
    result = run_cli("insert_rescaling", "-m", cli_files.model, "-s", "0.007843", "-o", "-1",
                     "-d", dest)
    assert result.code == 0, result.err
    assert result.out.strip() == (f"saved model with Rescaling(scale=0.007843, offset=-1) to "
                                  f"{dest}")
    new = fixedq.load_model(dest)
    assert type(new.layers[1]).__name__ == "Rescaling"
    old = fixedq.load_model(cli_files.model)
    raw = np.random.default_rng(0).uniform(0, 255, (8, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(new.predict(raw, verbose=0),
                               old.predict(raw * np.float32(0.007843) - 1, verbose=0),
                               rtol=1e-5, atol=1e-5)


# --- more cases, run in one process that imports TensorFlow once --------------------------


@pytest.fixture(scope="module")
def batch(cli_files, tmp_path_factory):
    """Run the remaining cases (good and bad) in one fresh process; ``{name: Result}``."""
    import h5py

    import fixedq

    d = tmp_path_factory.mktemp("batch")
    weights_only = d / "weights.h5"
    with h5py.File(weights_only, "w") as f:
        f.create_dataset("w", data=np.zeros(3))
    wrong = d / "wrong.npz"
    np.savez(wrong, x=np.zeros((4, 8, 8), "float32"))
    bright = d / "bright.npz"
    np.savez(bright, x=cli_files.x * 4)
    config = fixedq.dump_config(fixedq.load_model(cli_files.qmodel))
    config["layers"]["no_such_layer"] = config["layers"]["conv1"]
    unknown = d / "unknown.json"
    unknown.write_text(json.dumps(config))
    del config["layers"]["no_such_layer"]
    (d / "cfg.json").write_text(json.dumps(config))
    (d / "digits.keras").write_bytes(cli_files.model.read_bytes())
    m, q = cli_files.model, cli_files.qmodel
    cases = {
        "with_config": ("quantize", "-m", d / "digits.keras", "-c", d / "cfg.json"),
        "no_samples": ("quantize", "-m", m, "-i", "8", "-w", "4", "-a", "4",
                       "--per_tensor_activations", "-ns", "64", "-s", d / "small"),
        "check_json": ("check", "-m", q, "-sa", bright, "--json"),
        "weights_only": ("check", "-m", weights_only),
        "wrong_shape": ("quantize", "-m", m, "-sa", wrong, "-s", d / "wrong_q.keras"),
        "unknown_layers": ("quantize", "-m", m, "-c", unknown),
        "config_of_float_model": ("config", "-m", m, "-o", d / "float.json"),
    }
    results, _ = run_batch(list(cases.values()))
    return d, dict(zip(cases, results, strict=True))


def test_quantize_without_samples_warns(batch):
    import fixedq

    d, results = batch
    result = results["no_samples"]
    assert result.code == 0, result.err
    warnings = [line for line in result.err.splitlines() if "warning" in line]
    assert len(warnings) == 1, result.err
    assert warnings[0].startswith("fixedq quantize: warning: no calibration samples given; "
                                  "calibrating on 64 random samples")
    out = d / "small.keras"
    assert result.out.strip() == f"saved quantized model to {out}"
    qmodel = fixedq.load_model(out)
    assert fixedq.dump_config(qmodel)["qparams"]["weight_bits"] == 4


def test_quantize_with_config_reproduces_model(batch, cli_files):
    import fixedq

    d, results = batch
    result = results["with_config"]
    assert result.code == 0, result.err
    out = d / "digits_cfg.keras"
    assert result.out.strip() == f"saved quantized model to {out}"
    assert "warning" not in result.err
    # Re-applying the config without samples rebuilds the model bit for bit.
    np.testing.assert_array_equal(
        fixedq.load_model(out).predict(cli_files.x, verbose=0),
        fixedq.load_model(cli_files.qmodel).predict(cli_files.x, verbose=0))


def test_check_json_reports_saturation(batch, cli_files):
    result = batch[1]["check_json"]
    assert result.code == 1, result.err
    report = json.loads(result.out)
    assert report["ok"] is False and report["num_samples"] == len(cli_files.x)
    kinds = {(p["layer"], p["kind"]) for p in report["problems"]}
    assert ("image_quantizer", "output_saturated") in kinds
    layers = {layer["name"]: layer for layer in report["layers"]}
    assert layers["conv1"]["accumulator_limit"] == 2**31 - 1
    assert layers["conv1"]["accumulator_saturations"] == 0


@pytest.mark.parametrize("name, fragments", [
    ("weights_only", ("cannot load model", "model_config")),
    ("wrong_shape", ("have shape (4, 8, 8)", "expects (N, 8, 8, 1)")),
    ("unknown_layers", ("no_such_layer",)),
    ("config_of_float_model", ("is not a fixedq quantized model",)),
])
def test_bad_input_after_loading(batch, cli_files, name, fragments, one_line_error):
    one_line_error(batch[1][name], *fragments)


def test_no_partial_outputs(batch, cli_files):
    d, _ = batch
    names = sorted(p.name for p in d.iterdir())
    assert names == sorted(["weights.h5", "wrong.npz", "bright.npz", "unknown.json",
                            "cfg.json", "digits.keras", "digits_cfg.keras", "small.keras"])
    assert not (cli_files.dir / "digits_unknown.keras").exists()
