"""Asymmetric activations through the public API: windows, q-config, overrides, save/load,
QAT, CLI and bad input (the engine side is in tests/parity/test_asymmetric_parity.py)."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fixedq
import fixedq.engine as fe
from fixedq.layers.spec import QSpec, frac_bits_for_range, window_for_range
from fixedq.models.asymmetric import mirrored, select_window
from fixedq.models.calibrate import RangeStats
from fixedq.models.calibration_methods import CalibrationMethod

ASYM4 = fixedq.QuantizationParams(weight_bits=4, activation_bits=4, asymmetric_activations=True)


def _round(x: float) -> int:
    return math.floor(x + 0.5)


@settings(max_examples=300, deadline=None)
@given(low=st.floats(-50, 0), high=st.floats(0, 50), bits=st.integers(2, 12))
def test_window_is_maximal_holds_the_range_and_beats_symmetric(low, high, bits):
    if high - low < 1e-6:
        return
    (f,), (lo,) = window_for_range([low], [high], bits)
    limit = (1 << bits) - 1
    assert lo <= 0 <= lo + limit
    assert lo <= _round(low * 2.0**f) and _round(high * 2.0**f) <= lo + limit
    # one more fractional bit would not fit
    assert _round(high * 2.0 ** (f + 1)) - _round(low * 2.0 ** (f + 1)) > limit
    # never coarser than the symmetric signed grid of the same bits
    assert f >= frac_bits_for_range([max(-low, high)], bits - 1)[0]


@settings(max_examples=150, deadline=None)
@given(bounds=st.lists(st.tuples(st.floats(-20, 0), st.floats(0, 20)), min_size=1, max_size=6),
       bits=st.integers(2, 10))
def test_per_tensor_windows_share_one_frac_and_each_fits(bounds, bits):
    low, high = [b[0] for b in bounds], [b[1] for b in bounds]
    if max(h - v for v, h in bounds) < 1e-3:
        return
    (f,), los = window_for_range(low, high, bits, per_tensor=True)
    limit = (1 << bits) - 1
    assert len(los) == len(bounds)
    spread = [window_for_range([v], [h], bits)[0][0] for v, h in bounds]
    assert f <= min(spread)
    for (v, h), lo in zip(bounds, los, strict=True):
        if h - v < max(hh - vv for vv, hh in bounds) * 2.0**-8:
            continue  # raised to the spread floor (eq. 23)
        assert lo <= 0 <= lo + limit
        assert lo <= _round(v * 2.0**f) and _round(h * 2.0**f) <= lo + limit


def test_one_sided_range_gains_at_least_one_bit():
    for bits in (2, 4, 8):
        sym = frac_bits_for_range([3.0], bits - 1)[0]
        (f,), (lo,) = window_for_range([0.0], [3.0], bits)
        assert f >= sym + 1 and lo <= 0


def test_qspec_validation_and_config_round_trip():
    spec = QSpec.asymmetric([-0.1, -2.0], [3.0, 0.5], bits=4)
    assert spec.signed and spec.value_bits == 3 and spec.lo is not None
    assert QSpec.from_config(spec.to_config()) == spec
    lo, hi = spec.lo_array(), spec.hi_array()
    assert np.all(hi - lo == 15) and spec.int_bounds() == (int(lo.min()), int(hi.max()))
    with pytest.raises(ValueError, match="needs a signed spec"):
        QSpec(3, False, (2,), lo=(-1,))
    with pytest.raises(ValueError, match="one window start per frac_bits"):
        QSpec(3, True, (2, 2), lo=(-1,))
    with pytest.raises(ValueError, match="must contain 0"):
        QSpec(3, True, (2,), lo=(1,))
    with pytest.raises(ValueError, match="finite"):
        window_for_range([float("nan")], [1.0], 4)


def test_select_window_clips_each_side_with_the_method():
    stats = RangeStats(np.array([-4.0]), np.array([1.0]), [np.array([1.0])],
                       [np.array([4.0])])
    low, high = select_window(stats, CalibrationMethod(), bits=8)
    assert (low.tolist(), high.tolist()) == ([-4.0], [1.0])
    m = mirrored(stats)
    assert (m.minimum.tolist(), m.maximum.tolist()) == ([-1.0], [4.0])


def test_quantize_asymmetric_qconfig_reproduces_and_engine_matches(trained_cnn, digits,
                                                                   tmp_path):
    xtr, _, xte, yte = digits
    qmodel = fixedq.quantize(trained_cnn, ASYM4, samples=xtr[:256], verbose=False)
    asym = [lay.name for lay in qmodel.layers
            if getattr(lay, "output_spec", None) is not None and lay.output_spec.lo]
    assert {"pw", "logits"} <= set(asym)
    want = qmodel.predict(xte, verbose=0)
    cfg = fixedq.dump_config(qmodel)
    assert cfg["qparams"]["asymmetric_activations"] is True
    again = fixedq.quantize(trained_cnn, q_config=cfg, verbose=False)
    assert np.array_equal(again.predict(xte, verbose=0), want)
    path = tmp_path / "asym.keras"
    fixedq.save_model(qmodel, path)
    reloaded = fixedq.load_model(path)
    assert np.array_equal(reloaded.predict(xte, verbose=0), want)
    assert reloaded.get_layer("pw").output_spec == qmodel.get_layer("pw").output_spec
    engine = fe.convert(reloaded)
    assert np.array_equal(engine.predict(xte, batch_size=50), want)
    sym = fixedq.quantize(trained_cnn, fixedq.QuantizationParams(weight_bits=4, activation_bits=4),
                          samples=xtr[:256], verbose=False)
    acc_sym = np.mean(np.argmax(sym.predict(xte, verbose=0), -1) == yte)
    assert np.mean(np.argmax(want, -1) == yte) >= acc_sym - 0.02


def test_per_layer_override_and_window_override(trained_cnn, digits):
    xtr = digits[0][:128]
    q = fixedq.quantize(trained_cnn, ASYM4, samples=xtr, verbose=False,
                        overrides={"logits": {"asymmetric": False}})
    assert q.get_layer("logits").output_spec.lo is None
    assert q.get_layer("pw").output_spec.lo is not None
    q = fixedq.quantize(trained_cnn, fixedq.QuantizationParams(weight_bits=4, activation_bits=4),
                        samples=xtr, verbose=False,
                        overrides={"pw": {"asymmetric": True, "window": [[-0.5], [2.0]]}})
    spec = q.get_layer("pw").output_spec
    assert spec.lo is not None and q.get_layer("logits").output_spec.lo is None
    assert set(spec.frac_bits) == set(window_for_range([-0.5], [2.0], 4)[0])
    with pytest.raises(ValueError, match="'asymmetric': must be true or false, got 'yes'"):
        fixedq.quantize(trained_cnn, samples=xtr, verbose=False,
                        overrides={"pw": {"asymmetric": "yes"}})
    with pytest.raises(ValueError, match="layer 'pw', key 'window'"):  # never a fallback
        fixedq.quantize(trained_cnn, samples=xtr, verbose=False,
                        overrides={"pw": {"asymmetric": True, "window": [[-1.0, 0.0], [1.0]]}})
    with pytest.raises(TypeError, match="asymmetric_activations must be a bool"):
        fixedq.QuantizationParams(asymmetric_activations=1)


def test_non_max_method_records_the_window(trained_cnn, digits):
    xtr = digits[0][:128]
    q = fixedq.quantize(trained_cnn, ASYM4, samples=xtr, verbose=False,
                        calibration={"name": "percentile", "percentile": 99.0})
    entry = fixedq.dump_config(q)["layers"]["pw"]
    low, high = entry["window"]
    assert len(low) == len(high) == 24 and max(low) <= 0 <= min(high)
    again = fixedq.quantize(trained_cnn, q_config=fixedq.dump_config(q), verbose=False)
    x = digits[2]
    assert np.array_equal(again.predict(x, verbose=0), q.predict(x, verbose=0))


def test_qat_trains_an_asymmetric_model(trained_cnn, digits):
    xtr, ytr, xte, _ = digits
    q = fixedq.quantize(trained_cnn, ASYM4, samples=xtr[:256], verbose=False)
    q.compile(optimizer=keras.optimizers.Adam(1e-4),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = q.get_layer("pw").get_weights()[0].copy()
    hist = q.fit(xtr[:512], ytr[:512], epochs=1, batch_size=64, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    assert not np.array_equal(before, q.get_layer("pw").get_weights()[0])
    engine = fe.convert(q)
    assert np.array_equal(engine.predict(xte, batch_size=64), q.predict(xte, verbose=0))


def test_concatenate_over_spatial_axis_stops_with_dequantizer():
    x = keras.Input((4, 4, 3))
    a = keras.layers.Conv2D(3, 1, name="a")(x)
    b = keras.layers.Conv2D(3, 1, name="b")(x)
    c = keras.layers.Concatenate(axis=1, name="cat")([a, b])
    model = keras.Model(x, keras.layers.Flatten()(c))
    data = np.random.default_rng(0).uniform(0, 1, (16, 4, 4, 3)).astype("float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = fixedq.quantize(model, fixedq.QuantizationParams(asymmetric_activations=True),
                            samples=data, verbose=False)
    assert any("cat" in str(w.message) for w in caught)
    assert np.all(np.isfinite(q.predict(data, verbose=0)))


def test_cli_asymmetric_flag(cli_model_files):
    model, samples, out = cli_model_files
    result = subprocess.run([sys.executable, "-m", "fixedq_cli.main", "quantize", "-m", model,
                             "-w", "4", "-a", "4", "--asymmetric_activations", "-sa", samples,
                             "-s", out], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    q = fixedq.load_model(out)
    assert fixedq.dump_config(q)["qparams"]["asymmetric_activations"] is True
    assert q.get_layer("logits").output_spec.lo is not None


@pytest.fixture
def cli_model_files(trained_cnn, digits, tmp_path):
    model = tmp_path / "cnn.keras"
    trained_cnn.save(model)
    samples = tmp_path / "calib.npz"
    np.savez(samples, x=digits[0][:128])
    return str(model), str(samples), str(tmp_path / "cnn_asym.keras")


def test_check_and_inspect_count_saturation_at_the_window_edges(trained_cnn, digits):
    from fixedq.analysis import check, inspect

    xtr, _, xte, _ = digits
    q = fixedq.quantize(trained_cnn, ASYM4, samples=xtr[:256], verbose=False)
    report = check(q, samples=xte[:64])
    pw = next(lc for lc in report.layers if lc.name == "pw")
    assert pw.output_values > 0 and 0 <= pw.output_saturations < pw.output_values
    rows = {r.name: r for r in inspect(trained_cnn, q, xte[:64], verbose=False).layers}
    assert rows["pw"].saturation_rate is not None and rows["pw"].saturation_rate < 0.5
    # far outside the calibrated range every output sits on a window edge
    big = check(q, samples=xte[:16] * 40.0)
    assert next(lc for lc in big.layers if lc.name == "pw").output_saturations > 0


def test_range_alignment_still_runs_with_asymmetric_windows(trained_cnn, digits):
    """Asymmetric tensors are aligned by their window width; unsigned ones as before."""
    xtr, _, xte, _ = digits
    q = fixedq.quantize(trained_cnn, ASYM4, samples=xtr[:256], verbose=False,
                        range_alignment=True, bias_correction=False)
    record = fixedq.dump_config(q)["layers"]["img"]["range_alignment"]
    assert record and any(name in record for name in ("pw", "add", "sep"))
    again = fixedq.quantize(trained_cnn, q_config=fixedq.dump_config(q), verbose=False)
    want = q.predict(xte, verbose=0)
    assert np.array_equal(again.predict(xte, verbose=0), want)
    assert np.array_equal(fe.convert(q).predict(xte, batch_size=64), want)


def test_denormal_ranges_count_as_dead_instead_of_overflowing():
    """Found by hypothesis: a range of 5e-324 made 2^f overflow (OverflowError)."""
    assert window_for_range([-5e-324], [0.0], bits=2) == window_for_range([0.0], [0.0], bits=2)
    assert frac_bits_for_range([5e-324], value_bits=7) == frac_bits_for_range([0.0], 7)
