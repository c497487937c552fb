"""`fixedq quantize --weight_rounding {auto,on,off}` and `--rounding_frames`."""

from test_quantize_accuracy_flags import _run  # the CLI in a fresh process

import fixedq


def test_weight_rounding_on_and_default_auto(cli_files):
    out = cli_files.dir / "digits_wr.keras"
    result = _run("quantize", "-m", cli_files.model, "-w", 4, "-a", 4, "-sa", cli_files.samples,
                  "--weight_rounding", "on", "--rounding_frames", 32, "-s", out)
    assert result.returncode == 0, result.stderr
    layers = fixedq.dump_config(fixedq.load_model(out))["layers"]
    assert "weight_rounding" in layers["fc"] and "weight_rounding" not in layers["conv1"]
    assert "bias_delta" in layers["fc"]  # bias correction: on by default at 4 bits with -sa
    off = cli_files.dir / "digits_wr_off.keras"
    result = _run("quantize", "-m", cli_files.model, "-w", 4, "-a", 4, "-sa", cli_files.samples,
                  "--weight_rounding", "off", "-s", off)
    assert result.returncode == 0, result.stderr
    layers = fixedq.dump_config(fixedq.load_model(off))["layers"]
    assert not any("weight_rounding" in e for e in layers.values())
    assert "bias_delta" in layers["fc"]
    nobias = cli_files.dir / "digits_nobias.keras"  # bias correction can be turned off too
    result = _run("quantize", "-m", cli_files.model, "-w", 4, "-a", 4, "-sa", cli_files.samples,
                  "--weight_rounding", "off", "--bias_correction", "off", "-s", nobias)
    assert result.returncode == 0, result.stderr
    layers = fixedq.dump_config(fixedq.load_model(nobias))["layers"]
    assert not any("bias_delta" in e or "weight_rounding" in e for e in layers.values())


def test_bad_weight_rounding_flags_fail_before_tensorflow(cli_files):
    result = _run("quantize", "-m", cli_files.model, "--weight_rounding", "on")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "fixedq quantize: error: --weight_rounding on needs calibration samples "
        "(-sa SAMPLES.npz)"]
    result = _run("quantize", "-m", cli_files.model, "-sa", cli_files.samples,
                  "--rounding_frames", 8)
    assert result.returncode == 2 and "--rounding_frames needs --weight_rounding on" \
        in result.stderr
    result = _run("quantize", "-m", cli_files.model, "--weight_rounding", "yes")
    assert result.returncode == 2 and "invalid choice" in result.stderr
    result = _run("quantize", "-m", cli_files.model, "--weight_rounding", "on",
                  "--rounding_frames", 0)
    assert result.returncode == 2
