"""q-configs and overrides are checked against one schema (issue 12.2): a bad user value is a
ValueError naming layer, key and value before any work, never a warning and a float layer."""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

import fixedq
from fixedq.layers.params import QuantizationParams
from fixedq.models import quantize as qmod
from fixedq.models.qconfig_schema import (
    OVERRIDE_KEYS,
    SETTINGS,
    QConfigError,
    markdown_table,
    validate_qconfig,
)
from fixedq.tensors.limits import ACTIVATION_BITS, OUTPUT_BITS, WEIGHT_BITS

ROOT = Path(__file__).resolve().parents[2]


def _model():
    x = keras.Input((4,), name="x")
    h = keras.layers.Dense(6, name="fc1")(x)
    h = keras.layers.ReLU(name="r")(h)
    return keras.Model(x, keras.layers.Dense(3, name="fc2")(h), name="qcv")


@pytest.fixture(scope="module")
def setup():
    model = _model()
    samples = np.random.RandomState(0).randn(64, 4).astype("float32")
    qmodel = fixedq.quantize(model, samples=samples, verbose=False)
    return model, samples, qmodel, fixedq.dump_config(qmodel)


def _edit(cfg, layer, key, value):
    cfg = copy.deepcopy(cfg)
    cfg["layers"][layer][key] = value
    return cfg


@pytest.fixture()
def no_calibration(monkeypatch):
    """Fail if calibration starts: every check must come before any work."""
    def boom(*args, **kwargs):
        raise AssertionError("calibration started before the bad value was rejected")

    monkeypatch.setattr(qmod, "calibrate", boom)


BAD = [
    ("fc1", "weight_bits", 99),
    ("fc1", "weight_bits", "eight"),
    ("fc1", "weight_bits", 1),
    ("fc1", "weight_bits", [8]),
    ("fc1", "weight_bits", True),
    ("fc1", "activation_bits", 0),
    ("fc1", "activation_bits", 25),
    ("fc1", "activation_bits", 8.0),
    ("fc1", "per_tensor", "yes"),
    ("fc1", "asymmetric", 1),
    ("fc1", "frac_bits", 200),
    ("fc1", "frac_bits", -300),
    ("fc1", "frac_bits", "3"),
    ("fc1", "frac_bits", []),
    ("fc1", "range", -1.0),
    ("fc1", "range", float("nan")),
    ("fc1", "window", [1.0, -1.0]),
    ("fc1", "calibration", {"min": [0.0], "max": "x"}),
    ("fc1", "bias_delta", "x"),
    ("fc1", "weight_clip_std", 0),
    ("fc1", "bits", 8),  # unknown per-layer key
]


@pytest.mark.parametrize(("layer", "key", "value"), BAD)
def test_bad_qconfig_value_is_an_error_before_any_work(setup, no_calibration, layer, key,
                                                       value):
    model, _, _, cfg = setup
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning-and-float
        with pytest.raises(ValueError) as info:
            fixedq.quantize(model, q_config=_edit(cfg, layer, key, value), verbose=False)
    msg = str(info.value)
    assert repr(layer) in msg and repr(key) in msg, msg
    if key != "bits":
        assert repr(value)[:20] in msg or str(value) in msg, msg


@pytest.mark.parametrize(("layer", "key", "value"),
                         [b for b in BAD if b[1] in OVERRIDE_KEYS or b[1] == "bits"])
def test_bad_override_is_an_error_before_any_work(setup, no_calibration, layer, key, value):
    model, samples, _, _ = setup
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=re.escape(repr(layer))):
            fixedq.quantize(model, samples=samples, overrides={layer: {key: value}},
                            verbose=False)


def test_unknown_top_level_key(setup, no_calibration):
    model, _, _, cfg = setup
    bad = dict(cfg, extra=1)
    with pytest.raises(ValueError, match="unknown top-level key 'extra'"):
        fixedq.quantize(model, q_config=bad, verbose=False)


def test_bad_qparams_in_qconfig(setup, no_calibration):
    model, _, _, cfg = setup
    bad = copy.deepcopy(cfg)
    bad["qparams"]["weight_bits"] = 99
    with pytest.raises(ValueError, match="qparams.*weight_bits"):
        fixedq.quantize(model, q_config=bad, verbose=False)


def test_output_layer_may_use_output_bits_inner_may_not(setup, no_calibration):
    model, _, _, cfg = setup
    with pytest.raises(ValueError, match=r"'fc1', key 'activation_bits'.*\[1, 16\]"):
        fixedq.quantize(model, q_config=_edit(cfg, "fc1", "activation_bits", 17),
                        verbose=False)


def test_weight_bits_on_a_layer_without_weights(setup, no_calibration):
    model, _, _, cfg = setup
    with pytest.raises(ValueError, match=r"'x', key 'weight_bits'.*no weights"):
        fixedq.quantize(model, q_config=_edit(cfg, "x", "weight_bits", 8), verbose=False)


@pytest.mark.parametrize("frac", [200, -300, 40, -40])
def test_frac_bits_outside_the_calibrated_window(setup, frac):
    """Statically out of range (200, -300) or out of the layer's calibrated window (40, -40,
    which gave an all-zero model): the message says the allowed window."""
    model, _, _, cfg = setup
    with pytest.raises(ValueError, match=r"'fc1', key 'frac_bits'.*(\[-126, 126\]|must be in "
                                         r"\[-?\d+, -?\d+\] for this layer)"):
        fixedq.quantize(model, q_config=_edit(cfg, "fc1", "frac_bits", frac), verbose=False)


def test_valid_edge_values_are_accepted(setup):
    model, samples, _, cfg = setup
    edges = [("fc1", "weight_bits", WEIGHT_BITS[0]), ("fc1", "weight_bits", WEIGHT_BITS[1]),
             ("fc1", "activation_bits", 2), ("fc1", "activation_bits", ACTIVATION_BITS[1]),
             ("fc2", "activation_bits", OUTPUT_BITS[1]), ("fc1", "per_tensor", True),
             ("x", "activation_bits", ACTIVATION_BITS[1])]
    for layer, key, value in edges:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            q = fixedq.quantize(model, q_config=_edit(cfg, layer, key, value), verbose=False)
        assert fixedq.dump_config(q)["layers"][layer][key] == value
    # the ends of the calibrated frac_bits window of fc1 (fused ReLU: unsigned, 8 value bits)
    base = fixedq.quantize(model, q_config=cfg, verbose=False).get_layer("fc1")
    calibrated = min(base.output_spec.frac_bits)
    for frac in (calibrated - 8, calibrated + 8):
        q = fixedq.quantize(model, q_config=_edit(cfg, "fc1", "frac_bits", frac), verbose=False)
        assert q.get_layer("fc1").output_spec.frac_bits == (frac,)
    for frac in (calibrated - 9, calibrated + 9):
        with pytest.raises(ValueError, match="frac_bits"):
            fixedq.quantize(model, q_config=_edit(cfg, "fc1", "frac_bits", frac),
                            verbose=False)


def test_activation_bits_one_on_a_signed_output_is_an_error(setup):
    model, _, _, cfg = setup
    with pytest.raises(ValueError, match=r"'fc2', key 'activation_bits'.*signed"):
        fixedq.quantize(model, q_config=_edit(cfg, "fc2", "activation_bits", 1), verbose=False)


def test_unsupported_op_still_falls_back(setup):
    x = keras.Input((4,), name="x")
    h = keras.layers.Dense(6, name="fc1")(x)
    h = keras.layers.UnitNormalization(name="ln")(h)  # no op in the registry
    model = keras.Model(x, keras.layers.Dense(3, name="fc2")(h))
    with pytest.warns(UserWarning, match="quantization stops before layer 'ln'"):
        fixedq.quantize(model, samples=setup[1], verbose=False)


def test_qparams_share_the_limits():
    QuantizationParams(weight_bits=WEIGHT_BITS[1], activation_bits=ACTIVATION_BITS[1],
                       output_bits=OUTPUT_BITS[1])
    for kw in ({"weight_bits": WEIGHT_BITS[1] + 1}, {"weight_bits": WEIGHT_BITS[0] - 1},
               {"activation_bits": ACTIVATION_BITS[1] + 1},
               {"output_bits": OUTPUT_BITS[1] + 1}):
        with pytest.raises(ValueError):
            QuantizationParams(**kw)


def test_replay_is_bit_identical(setup):
    model, samples, qmodel, cfg = setup
    validate_qconfig(cfg)
    again = fixedq.quantize(model, q_config=cfg, verbose=False)
    assert np.array_equal(qmodel.predict(samples, verbose=0), again.predict(samples, verbose=0))


def test_plan_resolves_every_auto(setup):
    qp4 = QuantizationParams(weight_bits=4, activation_bits=4, input_weight_bits=4)
    plan = qmod.resolve_plan(qp4, setup[1], None, None, "auto", None, "auto", "auto")
    assert plan.rounding is not None and plan.correction is not None and plan.align
    plan = qmod.resolve_plan(qp4, None, setup[3], None, "auto", None, "auto", "auto")
    assert plan.rounding is None and plan.correction is None and not plan.align
    plan = qmod.resolve_plan(None, setup[1], None, None, "auto", None, "auto", "auto")
    assert plan.rounding is None and plan.correction is None and not plan.align
    with pytest.raises(AttributeError):
        plan.align = True  # frozen


def test_every_setting_is_documented():
    docs = (ROOT / "docs" / "quantization.md").read_text(encoding="utf-8")
    block = docs.split("<!-- qconfig-keys:begin -->")[1].split("<!-- qconfig-keys:end -->")[0]
    assert block.strip() == markdown_table().strip(), \
        "docs/quantization.md q-config table is stale: paste markdown_table()"
    assert len(SETTINGS) == block.count("\n| `")


def test_qconfig_error_is_a_value_error():
    assert issubclass(QConfigError, ValueError)
