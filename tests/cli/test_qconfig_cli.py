"""``fixedq quantize -c`` with a bad q-config: exit 2, one line, nothing written (issue 12.2)."""

from __future__ import annotations

import json

import pytest
from test_cli import run_cli  # the CLI in a fresh process


@pytest.fixture(scope="module")
def config(cli_files):
    import fixedq

    return fixedq.dump_config(fixedq.load_model(cli_files.qmodel))


@pytest.mark.parametrize(("key", "value", "fragments"), [
    ("weight_bits", 99, ["'conv2'", "'weight_bits'", "[2, 16]", "99"]),
    ("per_tensor", "yes", ["'conv2'", "'per_tensor'", "'yes'"]),
    ("frac_bits", 40, ["'conv2'", "'frac_bits'", "for this layer", "40"]),
])
def test_bad_qconfig_exits_2_one_line_nothing_written(cli_files, config, tmp_path, key, value,
                                                      fragments, one_line_error):
    cfg = json.loads(json.dumps(config))
    cfg["layers"]["conv2"][key] = value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path / "out.keras"
    result = run_cli("quantize", "-m", cli_files.model, "-c", path, "-s", out)
    one_line_error(result, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]
