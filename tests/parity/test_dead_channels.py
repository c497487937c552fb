"""Near-dead, dead and huge-weight channels: Keras == engine on every element (eq. 13b).

A channel whose weights are ~1e-20 gets an effective requantization scale far below 2^-62: its
shift ``S`` from eq. 6 would be ~75, beyond int64 shifts. Eq. 13b caps ``S`` at 62 (folding the
excess into ``M``, which becomes 0) in both executors, so both output exactly 0 on any input.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import fixedq
import fixedq.engine as fe
from fixedq.layers.params import QuantizationParams

L = keras.layers


def _set_channels(layer, out_axis_channels, tiny=1e-20, huge=1e4):
    """Channel 0: weights ~``tiny``; channel 1: all zero; channel 2: ``huge``; rest random."""
    w = [np.array(a) for a in layer.get_weights()]
    k = w[0]
    rng = np.random.default_rng(3)
    sl = [slice(None)] * k.ndim
    for c, value in ((0, tiny), (1, 0.0), (2, huge)):
        sl[out_axis_channels] = c
        k[tuple(sl)] = value * rng.choice([-1.0, 1.0], size=k[tuple(sl)].shape)
    if len(w) > 1:
        w[1][:] = 0.0
    layer.set_weights([k, *w[1:]])


def _model(kind):
    if kind == "dense":
        x = keras.Input((6,))
        layer = L.Dense(5)
        y = layer(x)
        axis = 1
    elif kind == "conv":
        x = keras.Input((5, 5, 3))
        layer = L.Conv2D(4, 3, padding="same")
        y = layer(x)
        axis = 3
    else:
        x = keras.Input((5, 5, 4))
        layer = L.DepthwiseConv2D(3, padding="same")
        y = layer(x)
        axis = 2
    model = keras.Model(x, y)
    _set_channels(layer, axis)
    return model


@pytest.mark.parametrize("kind", ["dense", "conv", "depthwise"])
@pytest.mark.parametrize("qp", [QuantizationParams(),
                                QuantizationParams(per_tensor_activations=True)],
                         ids=["per_axis", "per_tensor"])
def test_near_dead_channels_keras_equals_engine(kind, qp):
    model = _model(kind)
    shape = model.input_shape[1:]
    rng = np.random.default_rng(0)
    calib = rng.normal(size=(32, *shape)).astype("float32")
    qmodel = fixedq.quantize(model, qp, samples=calib, verbose=False)
    engine = fe.convert(qmodel)
    big = np.abs(calib).max()
    xs = np.concatenate([np.zeros((2, *shape)), np.full((2, *shape), big),
                         np.full((2, *shape), -big), np.full((1, *shape), 1e6),
                         rng.normal(size=(16, *shape))]).astype("float32")
    want = qmodel.predict(xs, verbose=0)
    got = engine.predict(xs)
    bad = int(np.count_nonzero(want != got))
    assert bad == 0, f"{bad} of {want.size} elements differ"
    # the near-dead channel (0) and the dead channel (1) output exactly 0 everywhere
    assert not np.any(want[..., :2]), want[..., :2].reshape(-1, 2)[:4]
    shifts = [op.arrays["shift"] for op in engine.ops if "shift" in op.arrays
              and "multiplier" in op.arrays]
    assert shifts and max(int(s.max()) for s in shifts) <= 62
