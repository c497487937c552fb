"""fixedq.analysis.inspection: per-tensor SNR / relative error / saturation, float vs quantized."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest

import fixedq
from fixedq.analysis import inspect
from fixedq.analysis.inspection import TensorError, snr_db


@pytest.fixture(scope="module")
def qmodels(trained_bn_cnn, digits_data):
    xtr = digits_data[0]

    def q(**bits):
        return fixedq.quantize(trained_bn_cnn, fixedq.QuantizationParams(**bits),
                               samples=xtr[:512], verbose=False)

    return {"w8a8": q(), "w4a4": q(input_weight_bits=4, weight_bits=4, activation_bits=4),
            "w16a16": q(input_weight_bits=16, weight_bits=16, activation_bits=16,
                        output_bits=16, scale_bits=16, buffer_bits=48)}


@pytest.fixture(scope="module")
def reports(trained_bn_cnn, qmodels, digits_data):
    held_out = digits_data[2][:200]
    return {k: inspect(trained_bn_cnn, q, held_out, verbose=False) for k, q in qmodels.items()}


def test_every_layer_is_matched_and_fused_relus_are_applied(reports):
    r = reports["w8a8"]
    names = [row.name for row in r.layers]
    assert names == ["img_quantizer", "conv1", "dw", "pool", "sep_dw", "sep", "flat", "logits"]
    refs = {row.name: row.reference for row in r.layers}
    assert refs["img_quantizer"] == "float input"
    assert refs["conv1"] == "relu1(conv1)"  # BN folded, ReLU fused
    assert refs["dw"] == "relu_dw(dw)" and refs["pool"] == "relu_dw(pool)"  # ReLU moved past pool
    assert refs["sep"] == "sep_relu(sep)" and refs["sep_dw"] == "sep_dw"
    assert refs["logits"] == "logits"
    assert r.num_samples == 200


def test_16_bit_model_matches_the_float_model_everywhere(reports):
    # If a float reference were mapped to the wrong tensor (e.g. a ReLU forgotten), its SNR
    # would be low whatever the bits; at 16 bits (and 16-bit requantization multipliers, whose
    # 8-bit default alone limits the SNR to ~50 dB, and 48-bit accumulators) every layer must
    # be very close.
    for row in reports["w16a16"].layers:
        assert row.activation.snr_db > 45, row
        if row.weights is not None:
            assert row.weights.snr_db > 80 and row.weight_bits == 16


def test_fewer_bits_lower_snr(reports):
    r8, r4 = reports["w8a8"], reports["w4a4"]
    for row8, row4 in zip(r8.layers, r4.layers, strict=True):
        if row8.weights is not None:
            # each bit is ~6 dB: 4 fewer weight bits cost ~24 dB
            assert 15 < row8.weights.snr_db - row4.weights.snr_db < 32, row8.name
            assert row8.weights.snr_db > 35
        if row8.name != "img_quantizer":
            assert row8.activation.snr_db > row4.activation.snr_db + 6, row8.name
    assert r4.worst_activation().activation.snr_db < 25
    assert r8.layer("logits").activation.snr_db > 25


def test_weight_and_bias_errors_match_a_direct_computation(qmodels):
    layer = qmodels["w4a4"].get_layer("conv1")
    kernel = np.asarray(layer.kernel, np.float64)
    scale = np.max(np.abs(kernel), axis=(0, 1, 2), keepdims=True) / 7.0
    offset = layer.kernel_offset.numpy()  # integers held by weight rounding, if any
    deq = np.clip(np.floor(kernel / scale + 0.5) + offset, -7, 7) * scale
    rel = np.linalg.norm(kernel - deq) / np.linalg.norm(kernel)
    from fixedq.analysis.inspection import weight_errors

    w, b = weight_errors(layer)
    assert w.rel_error == pytest.approx(rel, rel=1e-9)
    assert w.snr_db == pytest.approx(-20 * math.log10(rel), rel=1e-9)
    assert w.values == kernel.size and b.values == kernel.shape[-1]
    assert b.snr_db > w.snr_db  # biases are quantized on the accumulator grid


def test_saturation_is_measured(trained_bn_cnn, qmodels, digits_data):
    x = digits_data[2][:64]
    normal = inspect(trained_bn_cnn, qmodels["w8a8"], x, verbose=False)
    bright = inspect(trained_bn_cnn, qmodels["w8a8"], 4 * x, verbose=False)
    assert normal.layer("img_quantizer").saturation_rate == 0
    assert bright.layer("img_quantizer").saturation_rate > 0.2
    assert bright.layer("img_quantizer").activation.snr_db < 10
    assert normal.layer("flat").saturation_rate is not None


def test_split_num_samples_json_table_and_plot(trained_bn_cnn, qmodels, digits_data, tmp_path):
    x = digits_data[2][:100]
    r = inspect(trained_bn_cnn, qmodels["w4a4"], x, split=0.25, verbose=False)
    assert r.num_samples == 25
    assert inspect(trained_bn_cnn, qmodels["w4a4"], x, num_samples=10, batch_size=4,
                   verbose=False).num_samples == 10
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["layers"][1]["weights"]["snr_db"] > 0
    table = r.format_table()
    assert "a SNR dB" in table and "lowest activation SNR" in table and "conv1" in table
    pytest.importorskip("matplotlib")
    out = tmp_path / "errors.png"
    r.plot(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=".png"):
        r.plot(tmp_path / "errors.jpg")


def test_exact_tensors_have_infinite_snr_and_null_json():
    err = TensorError.between(np.ones(4), np.ones(4))
    assert math.isinf(err.snr_db) and err.rel_error == 0.0
    assert err.to_dict()["snr_db"] is None
    assert snr_db(100.0, 1.0) == 20.0


def test_bad_input(trained_bn_cnn, qmodels, digits_data):
    x = digits_data[2][:8]
    q = qmodels["w8a8"]
    with pytest.raises(ValueError, match="split"):
        inspect(trained_bn_cnn, q, x, split=0)
    with pytest.raises(ValueError, match="split"):
        inspect(trained_bn_cnn, q, x, split=1.5)
    with pytest.raises(ValueError, match="not a fixedq quantized model"):
        inspect(trained_bn_cnn, trained_bn_cnn, x)
    with pytest.raises(TypeError, match="keras.Model"):
        inspect(trained_bn_cnn, "q.keras", x)
    with pytest.raises(ValueError, match="shape"):
        inspect(trained_bn_cnn, q, np.zeros((4, 3), "float32"))
    other = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(name="other")])
    with pytest.raises(ValueError, match="matches"):
        inspect(other, q, x)
