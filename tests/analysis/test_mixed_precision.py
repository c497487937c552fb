"""fixedq.analysis.mixed_precision: accuracy-budget and cost-budget searches on a digits CNN."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fixedq
from fixedq.analysis.mixed_precision import (
    MetricError,
    MixedPrecisionInterrupted,
    bit_operations,
    rank_layers,
    search_accuracy_budget,
    search_cost_budget,
)
from fixedq.layers.neural import QuantizedNeuralLayer

SIZES = {"conv1": 108, "dw": 108, "sep_dw": 108, "sep": 192, "logits": 2560}


@pytest.fixture(scope="module")
def base(trained_bn_cnn, digits_data):
    qmodel = fixedq.quantize(trained_bn_cnn, samples=digits_data[0][:512], verbose=False)
    return qmodel, fixedq.dump_config(qmodel)


def _penalty_metric(penalties, low=4):
    """100 minus the penalty of every layer whose weights are at ``low`` bits."""

    def penalty_metric(qmodel):
        return 100.0 - sum(penalties.get(layer.name, 0.0) for layer in qmodel.layers
                           if isinstance(layer, QuantizedNeuralLayer)
                           and layer.weight_bits == low)

    return penalty_metric


def test_static_ranking(base):
    ranking = rank_layers(base[0])
    assert [i.name for i in ranking] == ["logits", "sep", "sep_dw", "dw", "conv1"]
    assert {i.name: i.weights for i in ranking} == SIZES
    assert {i.name: i.weights_per_channel for i in ranking}["logits"] == 256


@pytest.mark.parametrize("sensitive, kept", [("conv1", ["conv1"]), ("dw", ["conv1", "dw"]),
                                             ("logits", list(SIZES))])
def test_bisection_finds_the_smallest_prefix(trained_bn_cnn, base, sensitive, kept, tmp_path):
    penalties = dict.fromkeys(SIZES, 0.1)
    penalties[sensitive] = 3.0
    log = tmp_path / "trials.json"
    result = search_accuracy_budget(trained_bn_cnn, _penalty_metric(penalties),
                                    q_config=base[1], accuracy_tolerance=1.0, log_path=log,
                                    verbose=False, refine=False)
    assert sorted(n for n, b in result.weight_bits.items() if b == 8) == sorted(kept)
    assert result.reference_metric == 100.0 and result.metric >= 99.0
    labels = [t.label for t in result.trials]
    assert labels[0].startswith("all weights 8-bit") and labels[1] == "all weights 4-bit"
    assert len(result.trials) <= 2 + 3  # ceil(log2(5)) bisection steps
    assert result.low_bit_weight_fraction == pytest.approx(
        sum(s for n, s in SIZES.items() if n not in kept) / sum(SIZES.values()))
    saved = json.loads(log.read_text())
    assert len(saved["trials"]) == len(result.trials) and not saved["interrupted"]
    # the chosen q-config re-applies: the chosen bits, nothing else changed
    qmodel = fixedq.quantize(trained_bn_cnn, q_config=result.q_config, verbose=False)
    assert {layer.name: layer.weight_bits for layer in qmodel.layers
            if isinstance(layer, QuantizedNeuralLayer)} == result.weight_bits
    assert "% of weights in 4 bits" in result.format_table()


@pytest.mark.parametrize("sensitive", ["dw", "logits"])
def test_refinement_returns_layers_the_ranking_put_too_high(trained_bn_cnn, base, sensitive):
    penalties = dict.fromkeys(SIZES, 0.1)
    penalties[sensitive] = 3.0
    result = search_accuracy_budget(trained_bn_cnn, _penalty_metric(penalties),
                                    q_config=base[1], accuracy_tolerance=1.0, verbose=False)
    assert [n for n, b in result.weight_bits.items() if b == 8] == [sensitive]
    refine = [t for t in result.trials if t.label.startswith("refine:")]
    assert refine and all(t.ok == (sensitive not in t.label) for t in refine)
    assert result.metric >= 99.0


def test_all_low_bits_within_tolerance_stops_early(trained_bn_cnn, base):
    result = search_accuracy_budget(trained_bn_cnn, _penalty_metric({}), q_config=base[1],
                                    verbose=False)
    assert len(result.trials) == 2 and set(result.weight_bits.values()) == {4}
    assert result.low_bit_weight_fraction == 1.0


def test_real_accuracy_metric_meets_the_tolerance(trained_bn_cnn, digits_data, accuracy_on,
                                                  capsys):
    _, _, xte, yte = digits_data
    accuracy = accuracy_on(xte[:200], yte[:200])
    result = search_accuracy_budget(trained_bn_cnn, accuracy, samples=digits_data[0][:256],
                                    accuracy_tolerance=1.0)
    qmodel = fixedq.quantize(trained_bn_cnn, q_config=result.q_config, verbose=False)
    assert accuracy(qmodel) == result.metric  # bit-exact re-application
    assert result.metric >= result.reference_metric - 1.0
    assert all(t.seconds > 0 and t.metric is not None for t in result.trials)
    assert "mixed precision: trial 1: all weights 4-bit" in capsys.readouterr().err


def test_ctrl_c_keeps_the_trial_log(trained_bn_cnn, base, tmp_path):
    calls = []

    def metric(qmodel):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return 100.0 if len(calls) == 1 else 50.0

    log = tmp_path / "log.json"
    with pytest.raises(MixedPrecisionInterrupted) as info:
        search_accuracy_budget(trained_bn_cnn, metric, q_config=base[1], log_path=log,
                               verbose=False)
    assert isinstance(info.value, KeyboardInterrupt)
    result = info.value.result
    assert result.interrupted and len(result.trials) == 2
    saved = json.loads(log.read_text())
    assert saved["interrupted"] and [t["metric"] for t in saved["trials"]] == [100.0, 50.0]
    assert set(result.weight_bits.values()) == {8}  # best known so far: the reference
    assert "INTERRUPTED" in result.format_table()


def test_metric_errors_name_the_metric(trained_bn_cnn, base):
    def broken_metric(qmodel):
        raise ZeroDivisionError("no test data")

    with pytest.raises(MetricError, match="'broken_metric' raised ZeroDivisionError: no test"):
        search_accuracy_budget(trained_bn_cnn, broken_metric, q_config=base[1], verbose=False)
    with pytest.raises(MetricError, match="finite number"):
        search_accuracy_budget(trained_bn_cnn, lambda q: "high", q_config=base[1],
                               verbose=False)
    with pytest.raises(MetricError, match="finite number"):
        search_cost_budget(trained_bn_cnn, q_config=base[1], metric=lambda q: np.nan,
                           verbose=False)


def test_bit_operations_cost_model(base):
    qmodel = base[0]
    ops = bit_operations(qmodel)
    assert set(ops) == set(SIZES)
    assert ops["logits"] == 256 * 10 * 8 * 8  # MACs x 8-bit weights x 8-bit unsigned inputs
    assert ops["conv1"] == 8 * 8 * 12 * 9 * 8 * 8  # output elements x fan-in x bits


def test_cost_budget(trained_bn_cnn, base, digits_data):
    some = search_cost_budget(trained_bn_cnn, digits_data[0][:64], q_config=base[1],
                              cost_ratio=1.5, verbose=False)
    promoted = [n for n, b in some.weight_bits.items() if b == 16]
    assert promoted and len(promoted) < len(SIZES) and some.cost_ratio <= 1.5
    assert all(some.activation_bits[n] == 16 for n in promoted)
    assert sorted(some.ranking) == sorted(SIZES)
    qmodel = fixedq.quantize(trained_bn_cnn, q_config=some.q_config, verbose=False)
    full = fixedq.quantize(trained_bn_cnn, q_config=base[1], verbose=False)
    ratio = sum(bit_operations(qmodel).values()) / sum(bit_operations(full).values())
    assert ratio == pytest.approx(some.cost_ratio)
    # metric sensitivity: the layer whose promotion helps most comes first
    def likes_dw_16(q):
        return float(q.get_layer("dw").weight_bits)

    by_metric = search_cost_budget(trained_bn_cnn, q_config=base[1], cost_ratio=4.0,
                                   metric=likes_dw_16, sensitivity="metric", verbose=False)
    assert by_metric.ranking[0] == "dw" and by_metric.weight_bits["dw"] == 16
    assert by_metric.metric == 16.0 and by_metric.reference_metric == 8.0


def test_cost_budget_from_4_bit_drops_the_4_bit_mse_ranges(trained_bn_cnn, digits_data):
    """A 4-bit q-config records mse ranges, the best clip of a 16-level grid; a layer the
    search promotes to 16-bit activations gets its range from the recorded max instead (the
    old clip would saturate it far below its calibration max)."""
    qp4 = fixedq.QuantizationParams(weight_bits=4, activation_bits=4)
    q4 = fixedq.quantize(trained_bn_cnn, qp4, samples=digits_data[0][:256], verbose=False)
    cfg4 = fixedq.dump_config(q4)
    clipped = [n for n in SIZES if cfg4["layers"][n].get("activation_bits") == 4
               and cfg4["layers"][n].get("calibration_method", {}).get("name") == "mse"]
    assert clipped, "the 4-bit start has mse-calibrated activations"
    result = search_cost_budget(trained_bn_cnn, digits_data[0][:64], q_config=cfg4,
                               cost_ratio=1e6, verbose=False)
    qmodel = fixedq.quantize(trained_bn_cnn, q_config=result.q_config, verbose=False)
    stale = fixedq.quantize(trained_bn_cnn, q_config=cfg4, verbose=False)
    for name in clipped:
        assert result.activation_bits[name] == 16
        entry = result.q_config["layers"][name]
        assert not {"range", "calibration_method"} & set(entry), name
        spec, old = qmodel.get_layer(name).output_spec, stale.get_layer(name).output_spec
        top = spec.hi_array() * np.ldexp(1.0, -spec.frac_array(len(spec.hi_array())))
        recorded = np.asarray(entry["calibration"]["max"])
        assert np.all(top >= np.minimum(recorded, 6.0) * (1 - 2.0**-15)), name
        # the stale 4-bit clip sits below the recorded max somewhere (what this test guards)
        old_top = old.hi_array() * np.ldexp(1.0, -old.frac_array(len(old.hi_array())))
        assert np.any(old_top < recorded), name
    # the search's start and base config are left as they were
    assert "range" in cfg4["layers"][clipped[0]]


def test_bad_arguments(trained_bn_cnn, base):
    m, cfg = trained_bn_cnn, base[1]
    metric = _penalty_metric({})
    with pytest.raises(ValueError, match="accuracy_tolerance"):
        search_accuracy_budget(m, metric, q_config=cfg, accuracy_tolerance=-1)
    with pytest.raises(ValueError, match="low_bits must be < high_bits"):
        search_accuracy_budget(m, metric, q_config=cfg, low_bits=8, high_bits=8)
    with pytest.raises(TypeError, match="metric"):
        search_accuracy_budget(m, "accuracy", q_config=cfg)
    with pytest.raises(ValueError, match="samples"):
        search_accuracy_budget(m, metric)
    with pytest.raises(ValueError, match="cost_ratio"):
        search_cost_budget(m, q_config=cfg, cost_ratio=0.5)
    with pytest.raises(ValueError, match="sensitivity"):
        search_cost_budget(m, q_config=cfg, sensitivity="hessian")
    with pytest.raises(ValueError, match="needs a metric"):
        search_cost_budget(m, q_config=cfg, sensitivity="metric")
