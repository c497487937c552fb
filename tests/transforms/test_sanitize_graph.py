"""Graph reading/rebuilding: structure, inputs, errors for unsupported models."""

import keras
import numpy as np
import pytest

from fixedq.transforms import sanitize
from fixedq.transforms.graph import build_model, read_graph


def _two_input_model():
    a = keras.Input((6,), name="a")
    b = keras.Input((6,), name="b")
    x = keras.layers.Dense(4, name="da")(a)
    y = keras.layers.Dense(4, name="db")(b)
    c = keras.layers.Concatenate(name="cat")([x, y])
    out1 = keras.layers.Dense(3, name="head1")(c)
    out2 = keras.layers.Dense(2, name="head2")(c)
    return keras.Model([a, b], [out1, out2], name="two")


def test_roundtrip_multi_input_output(helpers):
    model = _two_input_model()
    graph = read_graph(model)
    names = [n.name for n in graph.nodes]
    assert names.index("cat") > names.index("da") and names.index("cat") > names.index("db")
    rebuilt = build_model(graph)
    assert [t.name for t in rebuilt.inputs] == [t.name for t in model.inputs]
    assert rebuilt.name == "two"
    helpers.assert_same_function(model, rebuilt)
    for layer in rebuilt.layers:
        assert layer is not model.get_layer(layer.name)


def test_sequential_becomes_functional_with_same_input(helpers):
    model = keras.Sequential(
        [keras.Input((8, 8, 3), name="img"), keras.layers.Conv2D(2, 3), keras.layers.Flatten()]
    )
    new_model, report = sanitize(model)
    assert not isinstance(new_model, keras.Sequential)
    assert len(report) == 0
    assert new_model.inputs[0].shape == (None, 8, 8, 3)
    assert new_model.layers[0].name == model.inputs[0]._keras_history.operation.name
    helpers.assert_same_function(model, new_model)


def test_sequential_built_without_input(helpers):
    model = keras.Sequential([keras.layers.Dense(3, activation="relu")])
    model.build((None, 5))
    new_model, report = sanitize(model)
    assert len(report.by_rewrite("split_activations")) == 1
    helpers.assert_same_function(model, new_model)


def test_unbuilt_sequential_rejected():
    with pytest.raises(ValueError, match="not built"):
        sanitize(keras.Sequential([keras.layers.Dense(3)]))


def test_subclassed_model_is_traced_into_a_functional_graph():
    class Mine(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2, name="fc")
            self.relu = keras.layers.ReLU(name="act")

        def call(self, x):
            return self.relu(self.dense(x) * 2.0)

    model = Mine()
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    model(x)
    new_model, _ = sanitize(model)
    assert [type(layer).__name__ for layer in new_model.layers][1:] == ["Dense", "Rescaling",
                                                                         "ReLU"]
    np.testing.assert_allclose(new_model.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6)


def test_subclassed_model_with_tensor_control_flow_is_one_clear_error():
    class Branchy(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            if keras.ops.sum(x) > 0:  # a Python branch on a tensor value
                return self.dense(x)
            return -self.dense(x)

    model = Branchy()
    model(np.ones((1, 3), "float32"))
    with pytest.raises(TypeError, match=r"\(Branchy\).*not a plain graph.*functional model"):
        sanitize(model)
    with pytest.raises(ValueError, match="not built"):
        sanitize(Branchy())


def test_non_model_rejected():
    with pytest.raises(TypeError, match="Dense"):
        sanitize(keras.layers.Dense(3))


def test_shared_layer_rejected():
    x = keras.Input((4,))
    shared = keras.layers.Dense(4, name="shared")
    model = keras.Model(x, shared(shared(x)))
    with pytest.raises(ValueError, match="'shared'.*shared layers are not supported"):
        sanitize(model)


def test_layer_reused_in_another_model_is_fine(helpers):
    dense = keras.layers.Dense(3, name="reused")
    x1, x2 = keras.Input((4,)), keras.Input((4,))
    keras.Model(x1, dense(x1))
    model = keras.Model(x2, dense(x2))
    new_model, _ = sanitize(model)
    helpers.assert_same_function(model, new_model)


def test_nested_model_kept_as_one_layer(helpers):
    inner_in = keras.Input((4,))
    inner = keras.Model(inner_in, keras.layers.Dense(3, activation="relu")(inner_in), name="inner")
    x = keras.Input((4,))
    model = keras.Model(x, keras.layers.Dense(2, name="out")(inner(x)))
    new_model, report = sanitize(model)
    assert len(report) == 0
    assert new_model.get_layer("inner") is not inner
    helpers.assert_same_function(model, new_model)


def test_dict_inputs_and_outputs_keep_their_structure(helpers):
    a = keras.Input((3,), name="a")
    b = keras.Input((3,), name="b")
    s = keras.layers.Add(name="s")([a, b])
    outputs = {"y": keras.layers.Dense(2, activation="relu", name="y")(s), "z": s}
    model = keras.Model({"a": a, "b": b}, outputs)
    new_model, report = sanitize(model)
    assert len(report) == 1
    feed = {"a": np.ones((2, 3), "float32"), "b": np.full((2, 3), -2.0, "float32")}
    expected, actual = model(feed), new_model(feed)
    assert set(actual) == {"y", "z"}
    for key in ("y", "z"):
        np.testing.assert_allclose(np.asarray(actual[key]), np.asarray(expected[key]), rtol=1e-6)
