"""Weight rounding reads each weighted op through its registry ``weight_rows`` layout: the rows
times the kernel rows are the layer's own linear op (every layout, strided/dilated/'same'),
and a Conv1D network (the ``conv1d`` layout) is optimized and stays bit-exact."""

import json

import keras
import numpy as np
import pytest
from keras import ops

import fixedq.engine as fe
from fixedq import QuantizationParams, dump_config, quantize
from fixedq.layers.neural import QuantizedNeuralLayer
from fixedq.models import weight_rounding as wr
from fixedq.ops import all_ops

QP4 = QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4)
L = keras.layers


def _float_layers():
    """One float layer per layout, in the geometries that are easy to get wrong."""
    return {
        "dense": (L.Dense(5), (6, 7)),
        "conv2d": (L.Conv2D(4, (3, 2), strides=(2, 1), padding="same", dilation_rate=1),
                   (9, 7, 3)),
        "conv2d_dilated": (L.Conv2D(3, 3, dilation_rate=(2, 1)), (9, 7, 2)),
        "conv1d": (L.Conv1D(4, 3, strides=2, padding="same"), (11, 3)),
        "conv1d_dilated": (L.Conv1D(2, 2, dilation_rate=3), (10, 4)),
        "depthwise": (L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2),
                      (8, 9, 3)),
    }


@pytest.mark.parametrize("case", sorted(_float_layers()))
def test_rows_times_kernel_rows_is_the_layers_linear_op(case):
    layer, shape = _float_layers()[case]
    x = keras.Input(shape)
    model = keras.Model(x, layer(x))
    rng = np.random.default_rng(3)
    model.set_weights([rng.normal(size=w.shape).astype("float32")
                       for w in model.get_weights()])
    q = quantize(model, QP4, samples=rng.normal(size=(16, *shape)).astype("float32"),
                 verbose=False, weight_rounding=False, bias_correction=False)
    (ql,) = [ly for ly in q.layers if isinstance(ly, QuantizedNeuralLayer)]
    assert wr.rows_layout(ql) == case.split("_")[0]
    xin = rng.normal(size=(3, *shape))
    kernel = np.asarray(ops.convert_to_numpy(ql.effective_kernel()), np.float64)
    rows, krows = wr._rows_of(ql, xin), wr._rows(ql, kernel)
    got = np.einsum("gnd,gmd->ngm", rows, krows).reshape(rows.shape[1], -1)
    want = ops.convert_to_numpy(ql._linear(ops.convert_to_tensor(xin, "float64"),
                                           ops.convert_to_tensor(kernel, "float64")))
    assert np.allclose(got, np.asarray(want).reshape(got.shape), atol=1e-9)
    assert wr._rows_per_sample(ql, xin) * len(xin) == rows.shape[1]
    assert np.array_equal(wr._unrows(ql, krows, kernel.shape), kernel)


def test_every_weighted_op_declares_whether_it_is_optimized():
    layouts = {s.name: s.weight_rows for s in all_ops() if s.weighted}
    assert {n for n, v in layouts.items() if v is not None} >= {
        "dense", "conv2d", "conv1d", "depthwise_conv2d"}
    assert layouts["conv2d_transpose"] is None  # left at nearest rounding


def test_conv1d_network_is_optimized_and_stays_bit_exact(digits):
    xtr, ytr, xte, _ = digits
    seq, seq_te = xtr[..., 0], xte[..., 0]  # 8 steps of 8 channels
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8))
    h = L.Conv1D(16, 3, padding="same", activation="relu")(inp)
    h = L.Conv1D(16, 3, strides=2, padding="same", activation="relu")(h)
    h = L.Flatten()(h)
    model = keras.Model(inp, L.Dense(10)(h))
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(seq, ytr, epochs=4, batch_size=64, verbose=0)
    q = quantize(model, QP4, samples=seq[:256], verbose=False,
                 weight_rounding={"target": "quantized", "frames": 256})
    cfg = json.loads(json.dumps(dump_config(q)))
    rounded = {n for n, e in cfg["layers"].items() if "weight_rounding" in e}
    conv1d = {ly.name for ly in q.layers if wr.rows_layout(ly) == "conv1d"
              and ly.weight_bits <= 4}
    assert conv1d and conv1d <= rounded
    report = wr.optimize_rounding(
        quantize(model, QP4, samples=seq[:256], verbose=False, weight_rounding=False),
        seq[:256], wr.WeightRounding(target="quantized"), verbose=False)
    for name in conv1d:
        assert report[name]["after"] < report[name]["before"], report[name]
        assert report[name]["changed"] > 0
    want = q.predict(seq_te, verbose=0)
    assert np.array_equal(fe.convert(q).predict(seq_te, batch_size=64), want)
    again = quantize(model, q_config=cfg, verbose=False)
    assert np.array_equal(again.predict(seq_te, verbose=0), want)
