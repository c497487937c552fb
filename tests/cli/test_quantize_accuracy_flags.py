"""`fixedq quantize` accuracy flags: calibration method, bias correction, 16-bit name lists."""

import subprocess
import sys

import fixedq


def _run(*args):
    return subprocess.run([sys.executable, "-m", "fixedq_cli.main", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_calibration_bias_correction_and_16bit_names(cli_files):
    out = cli_files.dir / "digits_acc.keras"
    result = _run("quantize", "-m", cli_files.model, "-w", 4, "-a", 4, "-sa", cli_files.samples,
                  "--calibration", "percentile", "--percentile", 99.9, "--bias_correction",
                  "--calibration_frames", 32, "--params_16bit", "conv2",
                  "--features_16bit", "conv2", "-s", out)
    assert result.returncode == 0, result.stderr
    qmodel = fixedq.load_model(out)
    cfg = fixedq.dump_config(qmodel)
    assert qmodel.get_layer("conv2").weight_bits == 16
    assert qmodel.get_layer("conv1").weight_bits == 8 and qmodel.get_layer("fc").weight_bits == 4
    assert cfg["layers"]["conv1"]["calibration_method"]["percentile"] == 99.9
    assert len(cfg["layers"]["conv1"]["bias_delta"]) == 8


def test_bad_accuracy_flags_fail_before_tensorflow(cli_files):
    result = _run("quantize", "-m", cli_files.model, "--bias_correction")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "fixedq quantize: error: --bias_correction needs calibration samples (-sa SAMPLES.npz)"]
    result = _run("quantize", "-m", cli_files.model, "--calibration", "kl")
    assert result.returncode == 2 and "invalid choice" in result.stderr
