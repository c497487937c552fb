"""Asymmetric activations: Keras vs integer engine, bit for bit (docs/numerics.md eqs. 35-37).

Signed activations get per-channel windows ``[lo, lo + 2^n - 1]``; the engine stores them as
``u = v - lo`` and folds ``lo`` into the next neural layer's bias (a bias map where zero
padding trims taps at the borders). Every test uses inputs whose ranges are skewed, so the
windows really are asymmetric, and checks dense, event and save/load paths.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from test_parity import _samples, _seq, check_parity

import fixedq
import fixedq.engine as fe
from fixedq.layers.params import QuantizationParams

L = keras.layers
A8 = QuantizationParams(asymmetric_activations=True)
A4 = QuantizationParams(weight_bits=4, activation_bits=4, asymmetric_activations=True)
A4T = QuantizationParams(weight_bits=4, activation_bits=4, per_tensor_activations=True,
                         asymmetric_activations=True)
A8T = QuantizationParams(per_tensor_activations=True, asymmetric_activations=True)
AQ = {"a8": A8, "a4": A4, "a4t": A4T, "a8t": A8T}


def _skewed(shape, n=48, seed=0):
    """Mostly positive inputs: linear layers then produce skewed signed ranges."""
    return _samples(shape, n, seed) * 0.5 + 0.8


def _asym_tensors(qmodel) -> list[str]:
    return [layer.name for layer in qmodel.layers
            if getattr(layer, "output_spec", None) is not None and layer.output_spec.lo]


def _stored_integers(engine, name):
    """The integers the engine keeps for tensor ``name`` (``u`` for asymmetric tensors)."""
    op = next(op for op in engine.ops if op.name == name)
    probe = fe.Model(engine.ops[:engine.ops.index(op) + 1],
                     [{"tensor": name, "frac": op.attrs["out_frac"], "name": name}],
                     engine.input_shape, engine.input_dtype)
    return probe, op


@pytest.mark.parametrize("qp", ["a8", "a4", "a4t"])
def test_conv_chain_same_padding_bias_map(qp, tmp_path):
    model = _seq((12, 12, 3), [
        L.Conv2D(8, 3, padding="same"),                       # signed, asymmetric
        L.Conv2D(8, 3, padding="same"), L.ReLU(),             # reads it: border bias map
        L.Conv2D(10, 3, strides=2, padding="same"),           # signed again
        L.MaxPooling2D(),                                     # fused, window kept
        L.Conv2D(6, 2, padding="valid"),                      # constant fold
        L.Flatten(), L.Dense(5)])
    x = _skewed((12, 12, 3))
    engine, qmodel = check_parity(model, x, AQ[qp], tmp_path=tmp_path)
    assert len(_asym_tensors(qmodel)) >= 3
    assert any(np.ndim(op.arrays.get("bias", 0)) == 3 for op in engine.ops)  # a bias map
    # the stored integers of asymmetric tensors are unsigned n-bit values
    for op in engine.ops:
        if "out_offset" in op.arrays:
            probe, _ = _stored_integers(engine, op.name)
            u = probe.run_batch(probe.check_input(x))[0]
            n = op.attrs["value_bits"]
            assert not op.attrs["signed"] and u.min() >= 0 and u.max() <= (1 << n) - 1
            assert u.max() > (1 << (n - 1)) - 1 or u.min() == 0  # the window is used


@pytest.mark.parametrize("qp", ["a8", "a4t"])
def test_depthwise_transpose_and_dense_tokens(qp):
    model = _seq((9, 9, 4), [
        L.DepthwiseConv2D(3, padding="same"),
        L.Conv2DTranspose(6, 3, strides=2, padding="same"),
        L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2),
        L.Reshape((-1, 12)), L.Dense(7), L.Dense(3)])
    check_parity(model, _skewed((9, 9, 4)), AQ[qp])


@pytest.mark.parametrize("qp", ["a8", "a4", "a8t"])
def test_residual_add_gap_and_concatenate(qp):
    x = keras.Input((10, 10, 4))
    a = L.Conv2D(6, 3, padding="same")(x)
    b = L.Conv2D(6, 1)(x)
    s = L.Add()([a, b])                                  # signed sum: asymmetric
    r = L.ReLU()(L.Conv2D(5, 3, padding="same")(s))      # unsigned branch
    c = L.Concatenate()([s, r])                          # mixed windows per channel
    g = L.GlobalAveragePooling2D()(L.Conv2D(8, 1)(c))
    model = keras.Model(x, L.Dense(4)(g))
    engine, qmodel = check_parity(model, _skewed((10, 10, 4)), AQ[qp])
    concat = next(lay for lay in qmodel.layers if isinstance(lay, L.Layer)
                  and type(lay).__name__ == "QuantizedConcatenate")
    assert concat.output_spec.lo is not None


def test_worst_case_magnitudes_saturate():
    """Extreme inputs push every window edge and the 32-bit accumulators to their limits."""
    model = _seq((6, 6, 64), [L.Conv2D(64, 3, padding="same"), L.Conv2D(32, 3, padding="same"),
                              L.Flatten(), L.Dense(4)])
    w = model.layers[1].get_weights()
    model.layers[1].set_weights([np.where(np.arange(w[0].size).reshape(w[0].shape) % 2, 1.0,
                                          -0.25).astype("float32"), w[1]])
    calib = _skewed((6, 6, 64))
    x = np.concatenate([calib * 50.0, -calib * 50.0, calib]).astype("float32")
    check_parity(model, x, A8, calib=calib)
    check_parity(model, x, A4, calib=calib)


def test_asymmetric_windows_gain_a_bit_on_skewed_tensors():
    """Skewed tensors in [0, 1.2] get one more fractional bit and a smaller error."""
    model = _seq((8, 8, 2), [L.Conv2D(4, 1, use_bias=True), L.Flatten(), L.Dense(3)])
    model.layers[1].set_weights([np.full((1, 1, 2, 4), 0.5, "float32"),
                                 np.array([-0.05, 0.0, 0.1, 0.2], "float32")])
    x = np.random.default_rng(1).uniform(0, 1, (64, 8, 8, 2)).astype("float32")
    sym = fixedq.quantize(model, QuantizationParams(weight_bits=4, activation_bits=4),
                          samples=x, verbose=False, bias_correction=False,
                          range_alignment=False, calibration="max")
    asym = fixedq.quantize(model, QuantizationParams(weight_bits=4, activation_bits=4,
                                                     asymmetric_activations=True),
                           samples=x, verbose=False, bias_correction=False,
                           range_alignment=False, calibration="max")
    name = model.layers[1].name
    s, a = sym.get_layer(name).output_spec, asym.get_layer(name).output_spec
    assert s.lo is None and a.lo is not None
    # channels 1-3 are one-sided: one more bit; channel 0 ([-0.05, 0.94]) is already tight
    assert [fa - fs for fa, fs in zip(a.frac_bits, s.frac_bits, strict=True)] == [0, 1, 1, 1]
    ref = keras.Model(model.input, model.layers[1].output).predict(x, verbose=0)

    def err(q):
        out = keras.Model(q.input, q.get_layer(name).output).predict(x, verbose=0)
        return float(np.mean((out - ref) ** 2))

    assert err(asym) < 0.7 * err(sym)
    check_parity(model, x, A4)
