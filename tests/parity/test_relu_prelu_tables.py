"""ReLU layers that are neither a clip nor a LeakyReLU (a threshold, or a negative slope with a
max_value) and PReLU with alpha per element (Keras' default shared_axes=None, or partial
shared_axes) are quantized as integer tables (eq. 38): sanitize keeps the float function bit
for bit, the tables hold the function within 1/2 LSB, the engine equals quantized Keras on
every element at worst-case magnitudes, and .keras files reload bit-identically. A PReLU whose
tables would be too large falls back with one warning naming it."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import fixedq
import fixedq.engine as fe
from fixedq.layers.base import output_bounds
from fixedq.layers.table import QuantizedActivation, QuantizedPReLU
from fixedq.transforms import sanitize

L = keras.layers

RELUS = {
    "threshold": dict(threshold=0.5),
    "slope_max": dict(negative_slope=0.1, max_value=3.0),
    "slope_threshold_max": dict(negative_slope=0.25, threshold=1.0, max_value=2.0),
    "threshold_max6": dict(threshold=1.0, max_value=6.0),
    "slope_threshold": dict(negative_slope=0.5, threshold=0.75),
}
QPS = {"8bit": {}, "4bit": {"activation_bits": 4, "per_tensor_activations": True},
       "asymmetric": {"asymmetric_activations": True},
       "16bit": {"input_bits": 16, "activation_bits": 16, "output_bits": 16}}


def _quantize(model, x, **qp):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing falls back to float
        return fixedq.quantize(model, fixedq.QuantizationParams(**qp), x)


def _probe(x):
    return np.concatenate([x, 40 * x[:6], -40 * x[:6], np.zeros_like(x[:1])])


def _assert_entries_near(layer, fn):
    """Every table entry within 1/2 output LSB of ``fn`` (float64) on its input grid point,
    inside the output range (saturated outside)."""
    p = layer.integer_params()
    lo, hi = output_bounds(layer.input_spec0, layer.channels)  # per channel (asymmetric)
    for c in range(layer.channels):
        v = np.arange(lo[c], hi[c] + 1)
        f, g = int(p["in_frac"][c]), int(p["out_frac"][c])
        want = fn(np.ldexp(v.astype(np.float64), -f), c) * 2.0**g
        got = p["table"][v + p["base"].reshape(-1)[c]]
        o_lo, o_hi = int(np.ravel(p["out_lo"])[c]), int(np.ravel(p["out_hi"])[c])
        inside = (want > o_lo - 0.5) & (want < o_hi + 0.5)
        assert np.all(np.abs(got[inside] - want[inside]) <= 0.5 + 1e-6), (layer.name, c)
        assert np.all(got[want <= o_lo - 0.5] == o_lo) and np.all(got[want >= o_hi + 0.5] == o_hi)


@pytest.mark.parametrize("qp", list(QPS), ids=list(QPS))
def test_relu_with_threshold_or_slope_and_max_is_a_table(qp, tmp_path):
    x_in = keras.Input((5, 5, 3))
    h = L.Conv2D(len(RELUS), 3, padding="same")(x_in)
    outs = [L.ReLU(**cfg, name=f"relu_{n}")(h) for n, cfg in RELUS.items()]
    model = keras.Model(x_in, L.Concatenate()(outs))
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(48, 5, 5, 3)) * 1.5).astype("float32")
    sanitized, _ = sanitize(model)
    np.testing.assert_array_equal(sanitized.predict(x, verbose=0), model.predict(x, verbose=0))
    q = _quantize(model, x, **QPS[qp])
    tables = {layer.name: layer for layer in q.layers if isinstance(layer, QuantizedActivation)}
    assert sorted(tables) == sorted(f"relu_{n}" for n in RELUS)
    for n, cfg in RELUS.items():
        layer = tables[f"relu_{n}"]
        assert layer.function == "relu"
        assert layer.output_spec.signed == bool(cfg.get("negative_slope"))

        def ref(t, c, cfg=cfg):  # TensorFlow's float64 kernels (independent of the tables)
            return np.asarray(keras.activations.relu(tf.constant(t), **cfg), np.float64)

        _assert_entries_near(layer, ref)
    probe = _probe(x)
    yq = q.predict(probe, verbose=0)
    np.testing.assert_array_equal(fe.convert(q).predict(probe), yq)
    path = tmp_path / "q.keras"
    fixedq.save_model(q, path)
    np.testing.assert_array_equal(fixedq.load_model(path).predict(probe, verbose=0), yq)
    path = tmp_path / "sanitized.keras"  # the float rewrite round-trips too
    fixedq.save_model(sanitized, path)
    np.testing.assert_array_equal(fixedq.load_model(path).predict(x, verbose=0),
                                  model.predict(x, verbose=0))


def _prelu_model(rng):
    x_in = keras.Input((6, 6, 2))
    y = L.PReLU(name="per_element")(L.Conv2D(4, 3, padding="same")(x_in))  # alpha (6, 6, 4)
    y = L.PReLU(shared_axes=[1], name="rows_shared")(L.Conv2D(3, 1)(y))  # alpha (1, 6, 3)
    t = L.Reshape((12, 9))(y)
    t = L.PReLU(name="tokens")(L.Dense(5)(t))  # alpha (12, 5) over tokens
    model = keras.Model(x_in, L.Dense(3)(L.Flatten()(t)))
    for layer in model.layers:
        if isinstance(layer, L.PReLU):  # 0.5, 0.25: exact ties; negative and > 1 alphas
            values = rng.choice([-0.5, 0.25, 0.5, 0.3, 1.7], size=layer.alpha.shape)
            layer.set_weights([values.astype("float32")])
    return model


@pytest.mark.parametrize("qp", ["8bit", "4bit", "asymmetric"])
def test_prelu_alpha_per_element_is_exact(qp, tmp_path):
    rng = np.random.default_rng(1)
    model = _prelu_model(rng)
    x = rng.normal(size=(48, 6, 6, 2)).astype("float32")
    q = _quantize(model, x, **QPS[qp])
    prelus = {layer.name: layer for layer in q.layers if isinstance(layer, QuantizedPReLU)}
    assert {n: prelus[n].alpha_shape for n in prelus} == {
        "per_element": (6, 6, 4), "rows_shared": (1, 6, 3), "tokens": (12, 5)}
    float_alpha = {n: model.get_layer(n).get_weights()[0] for n in prelus}
    for name, layer in prelus.items():
        np.testing.assert_array_equal(layer.alpha.numpy(), float_alpha[name])
        p = layer.integer_params()
        assert p["base"].shape == layer.alpha_shape
        # every element's table: within 1/2 LSB of alpha_e * x, each base row checked
        flat_alpha = float_alpha[name].reshape(-1, layer.channels)
        for row in range(flat_alpha.shape[0]):
            base = p["base"].reshape(-1, layer.channels)[row]
            probe_layer = _RowView(layer, p, base)

            def ref(t, c, a=flat_alpha[row]):
                return np.where(t >= 0, t, np.float64(a[c]) * t)

            _assert_entries_near(probe_layer, ref)
    probe = _probe(x)
    yq = q.predict(probe, verbose=0)
    engine = fe.convert(q)
    assert sum(op.kind == "table" for op in engine.ops) == 3
    np.testing.assert_array_equal(engine.predict(probe), yq)
    path = tmp_path / "q.keras"
    fixedq.save_model(q, path)
    np.testing.assert_array_equal(fixedq.load_model(path).predict(probe, verbose=0), yq)
    fe.save(engine, tmp_path / "m.fqe")
    np.testing.assert_array_equal(fe.load(tmp_path / "m.fqe").predict(probe), yq)


class _RowView:
    """One position of a per-element PReLU, seen as a per-channel table layer."""

    def __init__(self, layer, params, base):
        self.name, self.channels, self.input_spec0 = layer.name, layer.channels, \
            layer.input_spec0
        self._p = {**params, "base": base}

    def integer_params(self):
        return self._p


def test_prelu_tables_too_large_fall_back_naming_the_layer():
    """16-bit inputs (65,536 entries) x 512 distinct alphas pass 2^24 entries: one warning
    naming the layer, and the model still computes the float model's function there."""
    rng = np.random.default_rng(2)
    x_in = keras.Input((8, 8, 3))
    y = L.PReLU(name="big_prelu")(L.Conv2D(8, 3, padding="same")(x_in))
    model = keras.Model(x_in, y)
    layer = model.get_layer("big_prelu")
    layer.set_weights([rng.uniform(0.0, 0.5, layer.alpha.shape).astype("float32")])
    x = rng.normal(size=(16, 8, 8, 3)).astype("float32")
    with pytest.warns(UserWarning, match=r"'big_prelu' \(PReLU\).*distinct \(alpha, channel\)"):
        q = fixedq.quantize(model, fixedq.QuantizationParams(
            input_bits=16, activation_bits=16, output_bits=16), x)
    assert not any(isinstance(la, QuantizedPReLU) for la in q.layers)
    # float PReLU on the dequantized conv: only the 8-bit conv weights' error remains
    np.testing.assert_allclose(q.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=0.03)
