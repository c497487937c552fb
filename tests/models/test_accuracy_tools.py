"""Calibration methods, manual mixed precision overrides and bias correction."""

import json

import numpy as np
import pytest

from fixedq import QuantizationParams, dump_config, quantize
from fixedq.models.bias_correction import BiasCorrection
from fixedq.models.calibrate import RangeStats
from fixedq.models.calibration_methods import CalibrationMethod, select_range
from fixedq.models.overrides import mixed_precision

QP4 = QuantizationParams(weight_bits=4, activation_bits=4)


def _stats(values: np.ndarray, batch: int = 100) -> RangeStats:
    """RangeStats of a (N, C) tensor fed in batches, with histograms."""
    stats = None
    for start in range(0, len(values), batch):
        b = values[start:start + batch]
        if stats is None:
            stats = RangeStats(b.min(0), b.max(0), [b.max(0)], [-b.min(0)])
        else:
            stats.update(b)
    for start in range(0, len(values), batch):
        stats.add_histogram(values[start:start + batch], 1024)
    return stats


def test_methods_on_known_distribution():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (10000, 2))
    x[17, 0] = 50.0  # one outlier in channel 0
    st = _stats(x)
    get = lambda name, **kw: select_range(st, CalibrationMethod(name, **kw), True, 7)  # noqa: E731
    assert get("max")[0] == 50.0 and get("max")[1] == pytest.approx(1.0, abs=1e-3)
    assert get("percentile", percentile=99.0)[0] == pytest.approx(0.99, abs=0.06)
    assert get("histogram", outlier_fraction=1e-3)[0] < 1.1  # the sparse outlier bin is dropped
    assert 0.9 < get("mean_std", n_std=0.0)[1] <= 1.0
    assert get("moving_average", momentum=0.5)[0] < 50.0
    assert get("mse")[0] == 50.0  # at 8 bits one outlier's clip error outweighs the noise
    mse4 = select_range(st, CalibrationMethod("mse"), True, 3)  # 4-bit signed: clip it
    assert mse4[0] < 2.0 and mse4[1] <= 1.0
    # unsigned (after a ReLU with max_value): positive side only, capped
    capped = select_range(st, CalibrationMethod("max"), False, 8, max_value=0.5)
    assert capped.tolist() == [0.5, 0.5]


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "kl"}, "unknown calibration method"),
    ({"name": "percentile", "percentile": 0}, "percentile"),
    ({"name": "percentile", "percentile": 100.5}, "percentile"),
    ({"bins": 4}, "bins"),
    ({"momentum": 1.0}, "momentum"),
])
def test_bad_methods(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CalibrationMethod(**kwargs)


def test_histogram_method_needs_two_passes():
    with pytest.raises(ValueError, match="needs histograms"):
        select_range(RangeStats(np.zeros(1), np.ones(1)), CalibrationMethod("mse"), True, 7)


def test_quantize_with_methods_records_and_reproduces(trained_cnn, digits):
    x = digits[0][:256]
    q = quantize(trained_cnn, QP4, samples=x, verbose=False,
                 calibration={"default": "percentile", "logits": "max", "pw": "mse"})
    cfg = json.loads(json.dumps(dump_config(q)))
    assert cfg["layers"]["conv1"]["calibration_method"]["name"] == "percentile"
    assert "range" in cfg["layers"]["conv1"] and "range" not in cfg["layers"]["logits"]
    assert cfg["layers"]["pw"]["calibration_method"]["name"] == "mse"
    again = quantize(trained_cnn, q_config=cfg, verbose=False)
    assert np.array_equal(q.predict(x, verbose=0), again.predict(x, verbose=0))
    with pytest.raises(ValueError, match="nope"):
        quantize(trained_cnn, QP4, samples=x, calibration={"nope": "max"}, verbose=False)
    with pytest.raises(ValueError, match="generator"):
        quantize(trained_cnn, QP4, samples=(x[i:i + 32] for i in range(0, 256, 32)),
                 calibration="percentile", verbose=False)


def test_manual_mixed_precision_and_tensor_overrides(trained_cnn, digits):
    x = digits[0][:128]
    lists = mixed_precision(params_16bit_names=["pw"], features_16bit_names=["pw", "add"])
    q = quantize(trained_cnn, QP4, samples=x, verbose=False,
                 overrides={**lists, "conv1": {"frac_bits": 3}, "dw": {"range": 2.0}})
    assert q.get_layer("pw").weight_bits == 16
    assert q.get_layer("pw").output_spec.value_bits == 15  # signed 16-bit
    assert q.get_layer("add").output_spec.value_bits == 16  # unsigned (ReLU fused) 16-bit
    assert q.get_layer("sep").weight_bits == 4
    assert q.get_layer("conv1").output_spec.frac_bits == (3,)
    assert set(q.get_layer("dw").output_spec.frac_bits) == {2}  # 2.0 in 4 unsigned bits
    cfg = dump_config(q)
    assert cfg["layers"]["conv1"]["frac_bits"] == 3
    again = quantize(trained_cnn, q_config=json.loads(json.dumps(cfg)), verbose=False)
    assert np.array_equal(q.predict(x, verbose=0), again.predict(x, verbose=0))
    with pytest.raises(ValueError, match="layer 'pw': unknown key 'bits'"):
        quantize(trained_cnn, QP4, samples=x, overrides={"pw": {"bits": 8}}, verbose=False)
    with pytest.raises(ValueError, match="not in the model"):
        quantize(trained_cnn, QP4, samples=x, overrides={"ghost": {"weight_bits": 8}},
                 verbose=False)
    with pytest.raises(ValueError, match="both"):
        mixed_precision(params_16bit_names=["a"], params_4bit_names=["a"])


def test_bias_correction_reduces_mean_shift_and_reproduces(trained_cnn, digits):
    xtr, _, xte, _ = digits
    # max calibration (mse, the 4-bit default, clips the shift's outliers itself: there the
    # corrected mean shift measured 0.0572 vs 0.0569 without)
    plain = quantize(trained_cnn, QP4, samples=xtr[:512], verbose=False, bias_correction=False,
                     calibration="max")
    corrected = quantize(trained_cnn, QP4, samples=xtr[:512], verbose=False,
                         calibration="max",
                         bias_correction=BiasCorrection(frames=128, iterations=2,
                                                        weight_clip_std=3.0))
    ref = trained_cnn.predict(xte, verbose=0)
    shift = lambda q: np.abs((q.predict(xte, verbose=0) - ref).mean(axis=0)).mean()  # noqa: E731
    assert shift(corrected) < shift(plain)
    cfg = json.loads(json.dumps(dump_config(corrected)))
    assert len(cfg["layers"]["pw"]["bias_delta"]) == 24
    assert cfg["layers"]["pw"]["weight_clip_std"] == 3.0
    again = quantize(trained_cnn, q_config=cfg, verbose=False)
    assert np.array_equal(corrected.predict(xte, verbose=0), again.predict(xte, verbose=0))
    with pytest.raises(ValueError, match="already carry bias corrections"):
        quantize(trained_cnn, q_config=cfg, samples=xtr[:64], bias_correction=True,
                 verbose=False)
    with pytest.raises(ValueError, match="frames"):
        BiasCorrection(frames=0)


def test_bias_correction_auto_only_for_low_bits(trained_cnn, digits):
    x = digits[0][:128]
    has = lambda q: "bias_delta" in dump_config(q)["layers"]["pw"]  # noqa: E731
    assert has(quantize(trained_cnn, QP4, samples=x, verbose=False))
    assert not has(quantize(trained_cnn, samples=x, verbose=False))  # 8-bit: off
    with pytest.warns(UserWarning, match="random samples"):
        assert not has(quantize(trained_cnn, QP4, num_samples=32, verbose=False))
    assert not has(quantize(trained_cnn, QP4, samples=x, bias_correction=False, verbose=False))
    with pytest.raises(TypeError, match="bias_correction"):
        quantize(trained_cnn, QP4, samples=x, bias_correction="yes", verbose=False)


def _outlier_dense_model():
    import keras

    keras.utils.set_random_seed(3)
    x = keras.Input((8, 8, 1), name="img")
    h = keras.layers.Conv2D(12, 3, name="conv")(x)
    h = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    h = keras.layers.Dense(8, name="fc1")(h)
    h = keras.layers.LayerNormalization(name="ln")(h)
    model = keras.Model(x, keras.layers.Dense(10, name="fc2")(h))
    w = model.get_layer("conv").get_weights()
    w[0][..., 0] *= 40.0  # one outlier channel feeding fc1
    model.get_layer("conv").set_weights(w)
    return model


def test_smooth_quant_preserves_function_and_evens_ranges(digits):
    from fixedq.models.calibrate import calibrate
    from fixedq.transforms.smooth_quant import smooth_quant

    model = _outlier_dense_model()
    x = digits[0][:256]
    new, report = smooth_quant(model, x, alpha=0.5)
    ref = model.predict(x, verbose=0)
    np.testing.assert_allclose(new.predict(x, verbose=0), ref, rtol=1e-5,
                               atol=1e-5 * np.abs(ref).max())
    assert any(r.startswith("fc1: input channels rescaled in 'conv'") for r in report)
    assert any(r.startswith("fc2: input channels rescaled in 'ln'") for r in report)

    def spread(m):
        st = calibrate(m, x, ["gap"], verbose=False)["gap"]
        r = np.maximum(np.abs(st.minimum), np.abs(st.maximum))
        return r.max() / r[r > 0].min()

    assert spread(new) < spread(model) / 3
    per_tensor = QuantizationParams(per_tensor_activations=True)
    plain = quantize(model, per_tensor, samples=x, verbose=False)
    smoothed = quantize(model, per_tensor, samples=x, smooth_quant=0.5, verbose=False)
    err = lambda q: np.abs(q.predict(x, verbose=0) - ref).mean()  # noqa: E731
    assert err(smoothed) < err(plain)
    with pytest.raises(ValueError, match="alpha"):
        smooth_quant(model, x, alpha=1.5)
    with pytest.raises(ValueError, match="ghost"):
        smooth_quant(model, x, layers=["ghost"])
    with pytest.raises(ValueError, match="samples"):
        quantize(model, smooth_quant=0.5, verbose=False)


def test_auto_method_picks_mse_at_4_bits_and_replays(trained_cnn, digits):
    """calibration=None: mse for tensors of 4 bits or less (recorded, replayed without
    samples), max for 8-bit tensors (the model output here); an explicit method wins."""
    x = digits[0][:256]
    q = quantize(trained_cnn, QP4, samples=x, verbose=False)
    layers = dump_config(q)["layers"]
    assert layers["conv1"]["calibration_method"]["name"] == "mse"
    assert "calibration_method" not in layers["logits"]  # 8-bit model output: max
    assert "calibration_method" not in layers["img"]  # 8-bit input: max
    again = quantize(trained_cnn, q_config=json.loads(json.dumps(dump_config(q))),
                     verbose=False)
    assert np.array_equal(q.predict(x, verbose=0), again.predict(x, verbose=0))
    pinned = quantize(trained_cnn, QP4, samples=x, verbose=False, calibration="max")
    assert "calibration_method" not in dump_config(pinned)["layers"]["conv1"]
    # a per-layer dict without "default": the layers it does not name keep the default rule
    mixed = dump_config(quantize(trained_cnn, QP4, samples=x, verbose=False,
                                 calibration={"conv1": "max"}))["layers"]
    assert "calibration_method" not in mixed["conv1"]
    assert mixed["pw"]["calibration_method"]["name"] == "mse"
    q8 = quantize(trained_cnn, QuantizationParams(), samples=x, verbose=False)
    assert all("calibration_method" not in v for v in dump_config(q8)["layers"].values())


@pytest.mark.parametrize("kind", ["generator", "list", "generator+dict"])
def test_auto_method_with_samples_read_once_uses_max(trained_cnn, digits, kind):
    """Samples calibration cannot read twice (a generator, a list of batches) get max where no
    method was given, with a warning, instead of the histogram pass's error; a per-layer dict
    without "default" too (review)."""
    x = digits[0][:128]
    batches = np.split(x, 4)
    samples = batches if kind == "list" else (b for b in batches)
    calibration = {"pw": "max"} if kind == "generator+dict" else None
    with pytest.warns(UserWarning, match="calibrated by max instead of mse"):
        q = quantize(trained_cnn, QP4, samples=samples, num_samples=128, verbose=False,
                     calibration=calibration)
    assert "calibration_method" not in dump_config(q)["layers"]["conv1"]


def test_recorded_ranges_without_a_method_replay_as_max(trained_cnn, digits):
    """A q-config dumped before mse became the 4-bit default (ranges recorded, no method)
    rebuilds the same model: recorded stats mean max."""
    x = digits[0][:256]
    old = quantize(trained_cnn, QP4, samples=x, verbose=False, calibration="max")
    cfg = json.loads(json.dumps(dump_config(old)))
    again = quantize(trained_cnn, q_config=cfg, verbose=False)
    assert np.array_equal(old.predict(x, verbose=0), again.predict(x, verbose=0))


def test_histogram_counts_are_uint32_and_widen_before_they_could_overflow():
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, (1000, 3))
    st = _stats(x)
    assert st.hist_pos.dtype == np.uint32 and int(st.hist_pos.sum() + st.hist_neg.sum()) > 0
    same = _stats(x)
    st.hist_pos[0, 0] += np.uint32(2**31 - 1000)  # as if 2^31 rows had been seen: widens
    same.hist_pos[0, 0] += np.uint32(2**31 - 1000)
    st.add_histogram(x[:100], 1024)
    same.hist_pos = same.hist_pos.astype(np.int64)  # the same counts, widened beforehand
    same.hist_neg = same.hist_neg.astype(np.int64)
    same.add_histogram(x[:100], 1024)
    assert st.hist_pos.dtype == np.int64 and st.hist_neg.dtype == np.int64
    assert np.array_equal(st.hist_pos, same.hist_pos) and np.array_equal(st.hist_neg,
                                                                         same.hist_neg)
    # methods read the counts as int64 whatever their storage
    assert select_range(st, CalibrationMethod("percentile", percentile=99.0), True, 7).shape == (3,)
