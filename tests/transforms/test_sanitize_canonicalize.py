"""Rewrite 1: Activation/Lambda layers replaced by standard layers only when exactly equal."""

import keras
import pytest
from keras import ops

from fixedq.transforms import sanitize
from fixedq.transforms.lambda_probe import identify_lambda


def _single(layer, shape=(4, 5, 3)):
    x = keras.Input(shape, name="x")
    return keras.Model(x, layer(x))


@pytest.mark.parametrize(
    ("layer", "max_value"),
    [
        (keras.layers.Activation("relu", name="l"), None),
        (keras.layers.Activation("relu6", name="l"), 6.0),
        (keras.layers.Lambda(lambda t: ops.relu(t), name="l"), None),
        (keras.layers.Lambda(lambda t: ops.maximum(t, 0.0), name="l"), None),
        (keras.layers.Lambda(lambda t: ops.relu6(t), name="l"), 6.0),
        (keras.layers.Lambda(lambda t: ops.clip(t, 0.0, 6.0), name="l"), 6.0),
    ],
)
def test_relu_like_become_relu(helpers, layer, max_value):
    model = _single(layer)
    new_model, report = sanitize(model)
    new = new_model.get_layer("l")
    assert isinstance(new, keras.layers.ReLU)
    assert new.max_value == max_value
    assert [c.layers for c in report] == [("l",)]
    helpers.assert_same_function(model, new_model)


def test_lambda_transpose_becomes_permute(helpers):
    model = _single(keras.layers.Lambda(lambda t: ops.transpose(t, (0, 2, 1, 3)), name="l"))
    new_model, _ = sanitize(model)
    new = new_model.get_layer("l")
    assert isinstance(new, keras.layers.Permute)
    assert tuple(new.dims) == (2, 1, 3)
    helpers.assert_same_function(model, new_model)


def test_lambda_transpose_equal_dims_picks_right_permutation(helpers):
    layer = keras.layers.Lambda(lambda t: ops.transpose(t, (0, 3, 2, 1)), name="l")
    model = _single(layer, (3, 3, 3))
    new_model, _ = sanitize(model)
    assert tuple(new_model.get_layer("l").dims) == (3, 2, 1)
    helpers.assert_same_function(model, new_model)


def test_lambda_reshape_becomes_reshape(helpers):
    model = _single(keras.layers.Lambda(lambda t: ops.reshape(t, (-1, 20, 3)), name="l"))
    new_model, _ = sanitize(model)
    new = new_model.get_layer("l")
    assert isinstance(new, keras.layers.Reshape)
    assert tuple(new.target_shape) == (20, 3)
    helpers.assert_same_function(model, new_model)


def test_lambda_add_becomes_add(helpers):
    a, b = keras.Input((4, 4, 2)), keras.Input((4, 4, 2))
    out = keras.layers.Lambda(lambda t: t[0] + t[1], name="l")([a, b])
    model = keras.Model([a, b], out)
    new_model, _ = sanitize(model)
    assert isinstance(new_model.get_layer("l"), keras.layers.Add)
    helpers.assert_same_function(model, new_model)


@pytest.mark.parametrize(
    "fn",
    [
        lambda t: ops.relu(t) * 2.0,  # scaled relu
        lambda t: ops.leaky_relu(t, 0.1),
        lambda t: ops.clip(t, 0.0, 5.0),  # relu5 is not relu6
        lambda t: ops.reshape(t, (2, -1)),  # hard-coded batch size
        lambda t: ops.flip(t, axis=1),
        lambda t: ops.transpose(t, (0, 2, 1, 3)) + 1.0,
        lambda t: t[:, :, :, :1],
        lambda t: undefined_name(t),  # noqa: F821 - raises when probed
    ],
)
def test_other_lambdas_are_left_alone(fn):
    model = _single(keras.layers.Lambda(fn, output_shape=lambda s: s, name="l"))
    new_model, report = sanitize(model)
    assert isinstance(new_model.get_layer("l"), keras.layers.Lambda)
    assert len(report) == 0


def test_lambda_subtract_not_add():
    a, b = keras.Input((4,)), keras.Input((4,))
    model = keras.Model([a, b], keras.layers.Lambda(lambda t: t[0] - t[1], name="l")([a, b]))
    new_model, report = sanitize(model)
    assert isinstance(new_model.get_layer("l"), keras.layers.Lambda)
    assert len(report) == 0


def test_other_activations_left_alone():
    model = _single(keras.layers.Activation("sigmoid", name="l"))
    new_model, report = sanitize(model)
    assert isinstance(new_model.get_layer("l"), keras.layers.Activation)
    assert len(report) == 0


def test_identify_lambda_unknown_dims():
    layer = keras.layers.Lambda(lambda t: ops.transpose(t, (0, 2, 1, 3)))
    assert isinstance(identify_lambda(layer, [(None, None, None, 3)], "p"), keras.layers.Permute)
    reshape = keras.layers.Lambda(lambda t: ops.reshape(t, (ops.shape(t)[0], -1)))
    assert identify_lambda(reshape, [(None, None, 4)], "r") is None
    assert isinstance(identify_lambda(reshape, [(None, 3, 4)], "r"), keras.layers.Reshape)


@pytest.mark.parametrize("activation", ["linear", None])
def test_linear_activation_becomes_identity_and_passes_integers_through(helpers, activation):
    """Activation("linear") / Activation(None) (keras.applications' classifier_activation=None)
    become Identity: quantized as a pass-through (no table, no requantization: the output spec
    is the input's) and the engine op is ``identity``."""
    import numpy as np

    import fixedq
    import fixedq.engine as fe

    x = keras.Input((6,), name="x")
    h = keras.layers.Dense(5, name="d")(x)
    model = keras.Model(x, keras.layers.Activation(activation, name="l")(h))
    new_model, report = sanitize(model)
    assert isinstance(new_model.get_layer("l"), keras.layers.Identity)
    assert [c.layers for c in report] == [("l",)]
    helpers.assert_same_function(model, new_model)
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(32, 6)).astype("float32")
    q = fixedq.quantize(model, fixedq.QuantizationParams(), xs)
    layer = q.get_layer("l")
    assert layer.output_spec == layer.input_specs[0] == q.get_layer("d").output_spec
    engine = fe.convert(q)
    assert [op.kind for op in engine.ops if op.name == "l"] == ["identity"]
    probe = np.concatenate([xs, 100 * xs[:4], np.zeros_like(xs[:1])])
    np.testing.assert_array_equal(engine.predict(probe), q.predict(probe, verbose=0))
    dense_only = keras.Model(q.input, q.get_layer("d").output).predict(probe, verbose=0)
    np.testing.assert_array_equal(q.predict(probe, verbose=0), dense_only)  # unchanged values
