"""Dynamic input sizes (issue 17): ``keras.Input((None, None, 3))`` quantizes and converts.

A fully convolutional model stays dynamic (Keras and the engine agree bit for bit at every
size); a model whose integer scales depend on the size (global average pooling) is built for
the samples' size with a warning; without a size to use, a ``ValueError`` says what to do
before calibration starts.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import fixedq
import fixedq.engine as fe

L = keras.layers


def _samples(h, w, n=16, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, size=(n, h, w, 3)).astype("float32")


def _trunk(x):
    y = L.Rescaling(1 / 255.0)(x)
    y = L.Conv2D(8, 3, padding="same", strides=2)(y)
    y = L.BatchNormalization()(y)
    y = L.ReLU()(y)
    y = L.DepthwiseConv2D(3, padding="same")(y)
    y = L.ReLU()(y)
    y = L.MaxPooling2D()(y)
    return L.Add()([y, L.Conv2D(8, 1)(y)])


def test_fully_convolutional_model_runs_at_any_size(tmp_path):
    x = keras.Input((None, None, 3))
    y = _trunk(x)
    model = keras.Model(x, [L.Conv2D(5, 3)(y), L.Conv2D(4, 3, padding="same")(y)])
    qmodel = fixedq.quantize(model, samples=_samples(12, 12), verbose=False)
    engine = fe.convert(qmodel)
    assert engine.input_shape == (None, None, None, 3)
    engine.save(tmp_path / "m.fqe")
    loaded = fe.load(tmp_path / "m.fqe")
    for h, w in [(12, 12), (21, 29), (33, 16)]:
        x = _samples(h, w, n=3, seed=h)
        want = qmodel.predict(x, verbose=0)
        for got in (engine.predict(x), engine.predict(x, mode="event"), loaded.predict(x)):
            assert all(np.array_equal(a, b) for a, b in zip(want, got, strict=True))
    stats = engine.event_stats(_samples(20, 20, n=2))
    assert all(r["dense_macs"] > 0 for r in stats if r["kind"] == "neural")


def test_size_dependent_model_is_built_for_the_sample_size():
    x = keras.Input((None, None, 3))
    model = keras.Model(x, L.Dense(5)(L.GlobalAveragePooling2D(name="gap")(_trunk(x))))
    with pytest.warns(UserWarning, match=r"dynamic dimensions 1 and 2 .*'gap'.* built for the "
                                         r"samples' shape \(12, 14, 3\)"):
        qmodel = fixedq.quantize(model, samples=_samples(12, 14), verbose=False)
    assert tuple(qmodel.inputs[0].shape) == (None, 12, 14, 3)
    engine = fe.convert(qmodel)
    x = _samples(12, 14, n=5, seed=3)
    assert np.array_equal(qmodel.predict(x, verbose=0), engine.predict(x))
    assert model.inputs[0].shape[1] is None  # the user's model is untouched


def test_no_size_to_use_fails_before_calibration():
    x = keras.Input((None, None, 3))
    model = keras.Model(x, L.GlobalAveragePooling2D()(L.Conv2D(4, 3)(x)))

    def generator():
        yield _samples(10, 10, n=4)
        raise AssertionError("calibration must not start")

    for samples in (None, generator()):
        with pytest.raises(ValueError, match=r"input shape \(None, None, 3\) has dynamic "
                                             r"dimensions 1 and 2 .*"
                                             r"keras.Input\(\(224, 224, 3\)\)"):
            fixedq.quantize(model, samples=samples, verbose=False)


def test_asymmetric_padding_fold_with_dynamic_size_is_a_clear_error():
    from fixedq.layers.params import QuantizationParams

    x = keras.Input((None, None, 3))
    y = L.Conv2D(4, 3, padding="same")(x)
    model = keras.Model(x, L.Conv2D(4, 3, padding="same")(y))
    qmodel = fixedq.quantize(model, QuantizationParams(asymmetric_activations=True),
                             samples=np.random.default_rng(0).normal(size=(16, 8, 8, 3))
                             .astype("float32"), verbose=False)
    with pytest.raises(ValueError, match="dynamic: the folded offset depends on the size"):
        fe.convert(qmodel)
