"""Power-of-two range alignment (fixedq.models.range_alignment) on real digits."""

import json

import keras
import numpy as np
import pytest

from fixedq import QuantizationParams, dump_config, load_model, quantize, save_model
from fixedq.models.range_alignment import apply_alignment, channel_groups
from fixedq.transforms import sanitize
from fixedq.transforms.graph import build_model, read_graph
from fixedq.transforms.split_separable import split_separable

QP4 = QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4)


def _accuracy(model, x, y):
    return 100.0 * float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))


def _graph(model):
    from fixedq.models.quantize import fused_relus

    graph = read_graph(sanitize(model)[0])
    split_separable(graph)
    return graph, fused_relus(graph)


def test_channel_groups_of_small_cnn(trained_cnn):
    graph, fused = _graph(trained_cnn)
    groups = {g.producers: g for g in channel_groups(graph, fused)}
    assert set(groups) == {("conv1",), ("sep_dw",), ("sep", "pw"), ("dw",)}
    add_group = groups[("sep", "pw")]
    assert add_group.consumers == ("dw", "logits")  # the Add joins both of its inputs
    assert {"add", "gap", "pool"} <= set(add_group.tensors)
    assert groups[("conv1",)].consumers == ("sep_dw",)
    # dw's fused ReLU(6) is a cap, not a stop: recorded with the group (logits: model output)
    assert groups[("dw",)].caps == (("dw", 6.0),) and groups[("dw",)].consumers == ("pw",)
    assert all(g.caps == () for k, g in groups.items() if k != ("dw",))
    assert not any("logits" in g.producers for g in groups.values())


def test_alignment_preserves_float_function_and_fills_grids(trained_cnn, digits):
    x = digits[0][:256]
    q = quantize(trained_cnn, QP4, samples=x, verbose=False, bias_correction=False,
                 range_alignment=True, calibration="max")
    record = dump_config(q)["layers"]["img"]["range_alignment"]
    assert set(record) == {"conv1", "sep_dw", "sep", "pw", "dw", "logits"}
    assert all(1.0 <= s < 2.0 for s in record["conv1"]["out"])
    graph, _ = _graph(trained_cnn)
    reference = build_model(graph).predict(x, verbose=0)
    apply_alignment(graph, record)
    aligned = build_model(graph).predict(x, verbose=0)
    np.testing.assert_allclose(aligned, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    # every channel of a single-tensor group now uses more than half of its 4-bit grid
    cfg = dump_config(q)["layers"]
    for name in ("conv1",):
        top = np.maximum(np.asarray(cfg[name]["calibration"]["max"]), 0.0)
        frac = np.asarray(q.get_layer(name).output_spec.frac_array(len(top)))
        live = top > 0
        used = top[live] * 2.0 ** frac[live]
        assert np.all(used > 2**4 / 2) and np.all(used < 2**4)


def test_capped_channels_stay_under_the_cap(trained_cnn, digits):
    """A channel behind a fused ReLU(6) is scaled only while its scaled calibrated range stays
    at or below 6: there the aligned float function equals the original on every value up to
    that range, and the 4-bit grid is filled as for an uncapped channel."""
    x = digits[0][:256]
    q = quantize(trained_cnn, QP4, samples=x, verbose=False, bias_correction=False,
                 range_alignment=True, calibration="max")
    cfg = dump_config(q)["layers"]
    s = np.asarray(cfg["img"]["range_alignment"]["dw"]["out"])
    top = np.maximum(np.asarray(cfg["dw"]["calibration"]["max"]), 0.0)  # the scaled stats
    assert np.all((s == 1.0) | (top <= 6.0))
    assert np.any(s > 1.0)
    # the scaled channels fill their grid: more than half of the 16 levels below the top
    frac = np.asarray(q.get_layer("dw").output_spec.frac_array(len(top)))
    moved = (s > 1.0) & (top > 0)
    used = top[moved] * 2.0 ** frac[moved]
    assert np.all(used > 2**4 / 2) and np.all(used < 2**4)
    # the aligned float function is the original on every calibration sample, also with the
    # 4-bit default calibration (mse: the cap is checked against the largest value seen, not
    # against the clipped range)
    auto = quantize(trained_cnn, QP4, samples=x, verbose=False, bias_correction=False)
    for record in (cfg["img"]["range_alignment"],
                   dump_config(auto)["layers"]["img"]["range_alignment"]):
        graph, _ = _graph(trained_cnn)
        reference = build_model(graph).predict(x, verbose=0)
        apply_alignment(graph, record)
        aligned = build_model(graph).predict(x, verbose=0)
        np.testing.assert_allclose(aligned, reference, rtol=1e-4,
                                   atol=1e-4 * np.abs(reference).max())


def test_alignment_improves_4bit_output_snr(trained_cnn, digits):
    xtr, _, xte, _ = digits
    ref = trained_cnn.predict(xte, verbose=0)

    def snr(model):  # dB of the float logits over the quantization error, on held-out digits
        err = model.predict(xte, verbose=0) - ref
        return 10 * np.log10(np.sum(ref**2) / np.sum(err**2))

    kwargs = dict(samples=xtr[:512], verbose=False, bias_correction=False, calibration="max")
    plain = snr(quantize(trained_cnn, QP4, range_alignment=False, **kwargs))
    aligned = snr(quantize(trained_cnn, QP4, range_alignment=True, **kwargs))
    assert aligned >= plain + 1.0, (plain, aligned)  # measured: 14.1 -> 16.2 dB


def test_auto_default_and_qconfig_reproduces(trained_cnn, digits, tmp_path):
    x = digits[0][:256]
    q4 = quantize(trained_cnn, QP4, samples=x, verbose=False)  # "auto": on at 4 bits
    cfg = json.loads(json.dumps(dump_config(q4)))
    assert "range_alignment" in cfg["layers"]["img"]
    q8 = quantize(trained_cnn, QuantizationParams(), samples=x, verbose=False)
    assert "range_alignment" not in dump_config(q8)["layers"]["img"]
    again = quantize(trained_cnn, q_config=cfg, verbose=False)
    assert np.array_equal(q4.predict(x, verbose=0), again.predict(x, verbose=0))
    path = str(tmp_path / "aligned.keras")
    save_model(q4, path)
    assert np.array_equal(q4.predict(x, verbose=0), load_model(path).predict(x, verbose=0))
    with pytest.raises(TypeError, match="range_alignment"):
        quantize(trained_cnn, QP4, samples=x, verbose=False, range_alignment="yes")


def test_folded_rescaling_stem_is_aligned_and_trains(digits):
    """A Rescaling folded into the first conv (kernel_unit) is scaled in its original units."""
    xtr, ytr, xte, yte = digits
    xtr, xte = np.round(xtr * 16), np.round(xte * 16)  # integer pixels 0..16
    keras.utils.set_random_seed(1)
    inp = keras.Input((8, 8, 1), name="img")
    h = keras.layers.Rescaling(1 / 16, name="rescale")(inp)
    h = keras.layers.Conv2D(16, 3, padding="same", name="stem")(h)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = keras.layers.ReLU(name="relu2")(h)
    h = keras.layers.Conv2D(32, 1, name="pw")(h)
    h = keras.layers.ReLU(name="relu3")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(inp, keras.layers.Dense(10, name="logits")(h))
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(xtr, ytr, epochs=15, batch_size=32, verbose=0)
    float_acc = _accuracy(model, xte, yte)  # measured 69.0 (a deliberately tiny model)
    q = quantize(model, QP4, samples=xtr[:512], verbose=False)
    record = dump_config(q)["layers"]["img"]["range_alignment"]
    assert "out" in record["stem"] and q.get_layer("stem").kernel_unit is not None
    before = _accuracy(q, xte, yte)
    assert before > float_acc - 5.0  # measured 68.8
    q.compile(keras.optimizers.Adam(1e-4),
              keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    q.fit(xtr, ytr, epochs=1, batch_size=32, verbose=0)
    assert _accuracy(q, xte, yte) >= before - 2.0


@pytest.mark.parametrize("where", ["add", "gap"])
def test_a_relu6_fused_into_an_add_or_a_pooling_keeps_its_cap(where):
    """A ReLU(6) fused into an Add (or a GlobalAveragePooling) caps that tensor: the aligned
    float model equals the original on the calibration samples (review of the ReLU6 rule: the
    cap was recorded for weighted producers only, and these groups were scaled past it)."""
    keras.utils.set_random_seed(3)
    x = keras.Input((8, 8, 1), name="img")
    a = keras.layers.Conv2D(8, 3, padding="same", name="ca")(x)
    if where == "add":
        b = keras.layers.Conv2D(8, 3, padding="same", name="cb")(x)
        h = keras.layers.ReLU(6.0, name="r6")(keras.layers.Add(name="add")([a, b]))
        h = keras.layers.Conv2D(8, 1, name="cc")(h)
        h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    else:
        h = keras.layers.GlobalAveragePooling2D(name="gap")(a)
        h = keras.layers.ReLU(6.0, name="r6")(h)
    model = keras.Model(x, keras.layers.Dense(4, name="out")(h))
    xs = np.random.default_rng(0).uniform(0, 12, (128, 8, 8, 1)).astype("float32")
    q = quantize(model, QP4, samples=xs, verbose=False, bias_correction=False,
                 range_alignment=True, calibration="max")
    record = dump_config(q)["layers"]["img"].get("range_alignment", {})
    graph, _ = _graph(model)
    reference = build_model(graph).predict(xs, verbose=0)
    apply_alignment(graph, record)
    aligned = build_model(graph).predict(xs, verbose=0)
    np.testing.assert_allclose(aligned, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    graph, fused = _graph(model)
    capped = [g for g in channel_groups(graph, fused) if g.caps]
    assert capped and all(dict(g.caps).get(where) == 6.0 for g in capped)
