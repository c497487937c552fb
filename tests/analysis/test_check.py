"""Tests for fixedq.analysis.check: each problem kind is found, clean models pass."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

import fixedq
from fixedq.analysis import check

RNG = np.random.default_rng(0)
X = RNG.uniform(-1, 1, (128, 16)).astype("float32")


def _dense_model(units=8, scale_columns=None, seed=0):
    keras.utils.set_random_seed(seed)
    x = keras.Input((16,), name="x")
    h = keras.layers.Dense(units, name="fc1")(x)
    h = keras.layers.ReLU(name="relu")(h)
    y = keras.layers.Dense(4, name="fc2")(h)
    model = keras.Model(x, y, name="mlp")
    if scale_columns is not None:
        kernel, bias = model.get_layer("fc1").get_weights()
        model.get_layer("fc1").set_weights([kernel * scale_columns, bias])
    return model


def _quantize(model, **params):
    return fixedq.quantize(model, fixedq.QuantizationParams(**params), samples=X, verbose=False)


def test_clean_model_has_no_problem():
    qmodel = _quantize(_dense_model())
    report = check(qmodel, X)
    assert report.ok and report.problems == []
    assert report.num_samples == len(X)
    layers = {lc.name: lc for lc in report.layers}
    fc1 = layers["fc1"]
    assert fc1.weight_bits == 8 and 0 < fc1.weight_error < 0.05
    assert fc1.fan_in == 16 and fc1.accumulator_limit == 2**31 - 1
    assert 0 < fc1.accumulator_bound <= 16 * 127 * 255 + 2**31 and fc1.headroom_bits > 0
    assert fc1.accumulator_saturations == 0 and fc1.accumulator_values == 128 * 8
    # Calibrated on X itself: only the extreme values may be clipped (by at most 1 LSB when a
    # range rounds up to 2^value_bits), far below the 1% threshold.
    inputs = layers["x_quantizer"]
    assert inputs.output_values == X.size and inputs.output_saturations < 0.01 * X.size
    json.dumps(report.to_dict())  # JSON-able
    table = report.format_table()
    assert "fc1" in table and "no problems found" in table


def test_static_bound_matches_integer_weights():
    qmodel = _quantize(_dense_model())
    layer = qmodel.get_layer("fc1")
    p = layer.integer_params()
    v_max = layer.input_spec0.aligned_max_abs()
    want = int(np.max(np.abs(p["kernel"]).sum(axis=0) * v_max + np.abs(p["bias"])))
    lc = next(lc for lc in check(qmodel).layers if lc.name == "fc1")
    assert lc.accumulator_bound == want
    assert want <= layer.static_accumulator_bound + int(np.abs(p["bias"]).max())


def test_low_weight_bits_report_weight_error():
    report = check(_quantize(_dense_model(), weight_bits=2, input_weight_bits=2))
    kinds = {(p.layer, p.kind) for p in report.problems}
    assert ("fc1", "weight_error") in kinds and ("fc2", "weight_error") in kinds
    assert not report.ok


def test_small_buffer_can_saturate_and_does():
    qmodel = _quantize(_dense_model(), buffer_bits=12)
    report = check(qmodel, X)
    by_kind = {p.kind: p for p in report.problems if p.layer == "fc1"}
    assert "accumulator_bound" in by_kind
    assert by_kind["accumulator_bound"].value > 2**11 - 1
    assert "accumulator_saturated" in by_kind
    lc = next(lc for lc in report.layers if lc.name == "fc1")
    assert lc.headroom_bits < 0 and lc.accumulator_saturations > 0


def test_samples_outside_calibration_saturate_outputs():
    report = check(_quantize(_dense_model()), X * 8)
    kinds = {(p.layer, p.kind) for p in report.problems}
    assert ("x_quantizer", "output_saturated") in kinds
    lc = next(lc for lc in report.layers if lc.name == "x_quantizer")
    # The input quantizer count is exact: values beyond the calibrated |x| <= 1 are clipped.
    assert lc.output_saturations > 0.5 * lc.output_values


def test_per_tensor_with_spread_channels():
    spread = np.array([1, 1, 1, 1, 1, 1, 1, 200], "float32")
    model = _dense_model(scale_columns=spread)
    per_tensor = check(_quantize(model, per_tensor_activations=True))
    assert ("fc1", "per_tensor_range") in {(p.layer, p.kind) for p in per_tensor.problems}
    per_axis = check(_quantize(model))
    assert all(p.kind != "per_tensor_range" for p in per_axis.problems)
    lc = next(lc for lc in per_axis.layers if lc.name == "fc1")
    assert lc.channel_range_ratio > 16 and not lc.per_tensor


def test_thresholds_are_respected():
    qmodel = _quantize(_dense_model())
    strict = check(qmodel, weight_error_threshold=0.0)
    assert {p.kind for p in strict.problems} >= {"weight_error"}
    assert strict.thresholds["weight_error"] == 0.0


def test_rejects_float_models_and_bad_samples():
    model = _dense_model()
    with pytest.raises(ValueError, match="not a fixedq quantized model"):
        check(model)
    with pytest.raises(TypeError, match="keras.Model"):
        check("model.keras")
    with pytest.raises(ValueError, match="shape"):
        check(_quantize(model), np.zeros((4, 3), "float32"))
