"""Tests for fixedq.models.loading: Keras 3 and tf-keras files in, Keras 3 models out."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

from fixedq.models.loading import from_tf_keras, load_model, save_model

tf_keras = pytest.importorskip("tf_keras")

RNG = np.random.default_rng(1234)
X = RNG.normal(size=(4, 8, 8, 3)).astype("float32")


def _randomize(model) -> None:
    """Give every weight (including BN statistics) non-trivial values."""
    rng = np.random.default_rng(7)
    for layer in model.layers:
        values = []
        for variable in layer.weights:
            low, high = (0.5, 1.5) if "variance" in variable.name else (-0.5, 0.5)
            values.append(rng.uniform(low, high, size=tuple(variable.shape)).astype("float32"))
        if values:
            layer.set_weights(values)


def _tk_sequential():
    L = tf_keras.layers
    model = tf_keras.Sequential(
        [
            tf_keras.Input((8, 8, 3)),
            L.Conv2D(4, 3, padding="same", name="conv"),
            L.BatchNormalization(name="bn"),
            L.ReLU(name="relu"),
            L.DepthwiseConv2D(3, padding="same", name="dw"),
            L.SeparableConv2D(5, 3, strides=2, name="sep"),
            L.GlobalAveragePooling2D(name="gap"),
            L.Dense(3, name="dense"),
        ]
    )
    _randomize(model)
    return model


def _tk_functional():
    L = tf_keras.layers
    inputs = tf_keras.Input((8, 8, 3), name="image")
    a = L.Conv2D(4, 3, padding="same", name="conv")(inputs)
    a = L.BatchNormalization(name="bn")(a)
    b = L.DepthwiseConv2D(3, padding="same", depth_multiplier=1, name="dw")(a)
    b = L.BatchNormalization(name="bn_dw")(b)
    c = L.Add(name="add")([a, b])
    c = L.SeparableConv2D(6, 3, name="sep")(c)
    outputs = L.Dense(2, name="dense")(L.Flatten(name="flat")(c))
    model = tf_keras.Model(inputs, outputs, name="func")
    _randomize(model)
    return model


def _tk_conv_only():
    L = tf_keras.layers
    inputs = tf_keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(x)
    x = L.SeparableConv2D(5, 3, padding="same", name="sep")(x)
    outputs = L.Dense(3, name="dense")(L.GlobalAveragePooling2D(name="gap")(x))
    model = tf_keras.Model(inputs, outputs)
    _randomize(model)
    return model


def _assert_same_weights(k3_model, tk_model) -> None:
    """Every layer's weights are bit-identical, matched by layer name."""
    for tk_layer in tk_model.layers:
        k3_weights = k3_model.get_layer(tk_layer.name).get_weights()
        tk_weights = tk_layer.get_weights()
        assert len(k3_weights) == len(tk_weights), tk_layer.name
        for a, b in zip(k3_weights, tk_weights, strict=True):
            np.testing.assert_array_equal(a, b)


def _tk_save(model, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(path)


def _keras3():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    outputs = keras.layers.Dense(2, name="dense")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    _randomize(model)
    return model


# --- Keras 3 files -------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras3_save_load_roundtrip(tmp_path, suffix):
    model = _keras3()
    path = tmp_path / f"model{suffix}"
    save_model(model, path)
    loaded = load_model(path)
    assert isinstance(loaded, keras.Model)
    np.testing.assert_array_equal(np.asarray(loaded(X)), np.asarray(model(X)))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left


# --- tf-keras files and live models ---------------------------------------------------------


@pytest.mark.parametrize("build", [_tk_sequential, _tk_functional], ids=["seq", "func"])
@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_tf_keras_file_loads_bit_identical(tmp_path, build, suffix):
    tk_model = build()
    path = tmp_path / f"tk{suffix}"
    _tk_save(tk_model, path)
    loaded = load_model(path)
    assert isinstance(loaded, keras.Model)
    assert not isinstance(loaded, tf_keras.Model)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in tk_model.layers]
    _assert_same_weights(loaded, tk_model)
    # Keras 3's BatchNormalization rounds differently from tf-keras's fused kernel (1 ulp).
    np.testing.assert_allclose(np.asarray(loaded(X)), tk_model(X).numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_tf_keras_file_without_bn_bit_identical(tmp_path, suffix):
    tk_model = _tk_conv_only()
    path = tmp_path / f"tk{suffix}"
    _tk_save(tk_model, path)
    loaded = load_model(path)
    _assert_same_weights(loaded, tk_model)
    np.testing.assert_array_equal(np.asarray(loaded(X)), tk_model(X).numpy())


def test_plain_keras3_rejects_tf_keras_depthwise_h5(tmp_path):
    """The reason load_model exists: document Keras 3's own behaviour on these files."""
    path = tmp_path / "tk.h5"
    _tk_save(_tk_sequential(), path)
    with pytest.raises(Exception):  # noqa: B017 - any failure of Keras alone is the point
        keras.saving.load_model(path)


@pytest.mark.parametrize("build", [_tk_sequential, _tk_functional], ids=["seq", "func"])
def test_from_tf_keras(build):
    tk_model = build()
    before = [w.copy() for w in tk_model.get_weights()]
    converted = from_tf_keras(tk_model)
    assert isinstance(converted, keras.Model)
    np.testing.assert_allclose(np.asarray(converted(X)), tk_model(X).numpy(), atol=1e-6, rtol=0)
    for a, b in zip(before, tk_model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # the input model is untouched


@pytest.mark.parametrize("obj", [None, "model.h5", object()])
def test_from_tf_keras_rejects_other_objects(obj):
    with pytest.raises(TypeError, match="tf_keras.Model"):
        from_tf_keras(obj)


def test_from_tf_keras_rejects_keras3_model_with_hint():
    with pytest.raises(TypeError, match="already a Keras 3 model"):
        from_tf_keras(_keras3())


# --- Lambda layers --------------------------------------------------------------------------


def _tk_lambda_model():
    L = tf_keras.layers
    inputs = tf_keras.Input((8, 8, 3))
    x = L.Conv2D(2, 3, name="conv")(inputs)
    x = L.Lambda(lambda t: t * 2.0 + 1.0, name="scale_shift")(x)
    model = tf_keras.Model(inputs, x)
    _randomize(model)
    return model


def test_lambda_refused_in_safe_mode(tmp_path):
    path = tmp_path / "lambda.h5"
    _tk_save(_tk_lambda_model(), path)
    with pytest.raises(ValueError, match=r"scale_shift.*safe_mode=False"):
        load_model(path)


def test_lambda_loads_with_safe_mode_false(tmp_path):
    tk_model = _tk_lambda_model()
    path = tmp_path / "lambda.h5"
    _tk_save(tk_model, path)
    loaded = load_model(path, safe_mode=False)
    np.testing.assert_allclose(np.asarray(loaded(X)), tk_model(X).numpy(), atol=1e-6, rtol=0)


def test_from_tf_keras_converts_lambda():
    tk_model = _tk_lambda_model()
    converted = from_tf_keras(tk_model)
    np.testing.assert_allclose(np.asarray(converted(X)), tk_model(X).numpy(), atol=1e-6, rtol=0)


# --- bad input ------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.h5"
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        load_model(path)


def test_text_file(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("this is not a model\n")
    with pytest.raises(ValueError, match=r"notes\.h5.*not a Keras model file.*expected"):
        load_model(path)


def test_npz_renamed(tmp_path):
    path = tmp_path / "arrays.keras"
    with open(tmp_path / "arrays.npz", "wb") as f:
        np.savez(f, a=np.arange(3))
    os.replace(tmp_path / "arrays.npz", path)
    with pytest.raises(ValueError, match=r"arrays\.keras.*config\.json"):
        load_model(path)


def test_weights_only_h5(tmp_path):
    path = tmp_path / "model.weights.h5"
    _keras3().save_weights(path)
    with pytest.raises(ValueError, match="model_config"):
        load_model(path)


def test_corrupt_h5(tmp_path):
    good = tmp_path / "good.h5"
    save_model(_keras3(), good)
    data = good.read_bytes()
    bad = tmp_path / "bad.h5"
    bad.write_bytes(data[: len(data) // 3])  # truncated: HDF5 signature intact, body missing
    with pytest.raises(ValueError, match="bad.h5"):
        load_model(bad)


def test_directory(tmp_path):
    with pytest.raises(ValueError, match="directory"):
        load_model(tmp_path)


# --- save_model -----------------------------------------------------------------------------


def test_save_rejects_bad_extension(tmp_path):
    with pytest.raises(ValueError, match=r"'\.pb'.*allowed"):
        save_model(_keras3(), tmp_path / "model.pb")
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_missing_directory(tmp_path):
    target = tmp_path / "missing" / "model.keras"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_model(_keras3(), target)
    assert not (tmp_path / "missing").exists()


def test_save_rejects_non_keras3(tmp_path):
    with pytest.raises(TypeError, match="from_tf_keras"):
        save_model(_tk_sequential(), tmp_path / "m.keras")
    with pytest.raises(TypeError, match="keras.Model"):
        save_model("model", tmp_path / "m.keras")


def test_save_failure_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.keras"
    path.write_bytes(b"previous")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(keras.saving, "save_model", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_model(_keras3(), path)
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]


def test_save_overwrites_atomically(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"previous")
    model = _keras3()
    save_model(model, path)
    np.testing.assert_array_equal(np.asarray(load_model(path)(X)), np.asarray(model(X)))


def test_single_input_output_not_wrapped_in_lists(tmp_path):
    path = tmp_path / "tk.h5"
    _tk_save(_tk_functional(), path)
    loaded = load_model(path)
    assert not isinstance(loaded.output, list | tuple)
    assert not isinstance(loaded.input, list | tuple)


def test_tf_keras_nested_models(tmp_path):
    """Sequential and functional sub-models (tf-keras numbers their first call node 1)."""
    L = tf_keras.layers
    inner = tf_keras.Sequential(
        [tf_keras.Input((8, 8, 4)), L.DepthwiseConv2D(3, padding="same"), L.BatchNormalization()],
        name="inner_seq",
    )
    sub_in = tf_keras.Input((8, 8, 4))
    inner2 = tf_keras.Model(sub_in, L.SeparableConv2D(4, 3, padding="same")(sub_in), name="sub")
    inputs = tf_keras.Input((8, 8, 3))
    x = inner2(inner2(inner(L.Conv2D(4, 1, name="conv")(inputs))))  # shared sub-model
    tk_model = tf_keras.Model(inputs, L.Dense(2, name="dense")(L.Flatten(name="flat")(x)))
    _randomize(tk_model)
    for sub in (inner, inner2):
        _randomize(sub)
    path = tmp_path / "nested.h5"
    _tk_save(tk_model, path)
    expected = tk_model(X).numpy()
    for loaded in (load_model(path), from_tf_keras(tk_model)):
        np.testing.assert_allclose(np.asarray(loaded(X)), expected, rtol=0, atol=1e-5)
