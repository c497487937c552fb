"""ONNX export of the ``table`` and ``softmax`` kinds (eqs. 38, 39): onnxruntime == engine on
every element, float and int outputs, 8-bit per-axis, asymmetric and 4-bit per-tensor models
with every kind of table layer and a final softmax."""

from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
keras = pytest.importorskip("keras")

import fixedq  # noqa: E402
import fixedq.engine as fe  # noqa: E402
from fixedq.interop import EXPORTABLE_KINDS, to_onnx  # noqa: E402

L = keras.layers


def _model():
    x = keras.Input((6, 6, 2))
    y = L.Conv2D(5, 3, activation="swish")(x)
    y = L.PReLU(shared_axes=[1, 2])(L.DepthwiseConv2D(3, activation="gelu")(y))
    y = L.LeakyReLU(negative_slope=0.2)(L.Conv2D(4, 1)(y))
    y = L.Flatten()(y)
    y = L.Dense(6, activation="sigmoid")(y)
    y = L.ELU()(L.Dense(5, activation="tanh")(y))
    model = keras.Model(x, L.Dense(4, activation="softmax")(y))
    for layer in model.layers:
        if isinstance(layer, L.PReLU):
            layer.set_weights([np.array([[[0.25, -0.3, 0.5, 0.1, 0.7]]], np.float32)])
    return model


@pytest.mark.parametrize("qp", [{}, {"asymmetric_activations": True},
                                {"activation_bits": 4, "per_tensor_activations": True}],
                         ids=["8bit", "asymmetric", "4bit-per-tensor"])
def test_tables_and_softmax_export_exactly(qp):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6, 6, 2)).astype("float32")
    q = fixedq.quantize(_model(), fixedq.QuantizationParams(**qp), samples=x, verbose=False)
    engine = fe.convert(q)
    kinds = {op.kind for op in engine.ops}
    assert {"table", "softmax"} <= kinds <= set(EXPORTABLE_KINDS)
    xs = np.concatenate([x, x * 50, -x * 50, np.zeros_like(x[:1])])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    for output in ("float", "int"):
        sess = ort.InferenceSession(to_onnx(engine, output).SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
        (got,) = sess.run(None, {"input": xs})
        want = engine.predict(xs, output=output)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert int(np.count_nonzero(got != want)) == 0, output
