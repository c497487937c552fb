"""Helpers for the sanitize tests: random BN statistics, function equality, model snapshots."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def randomize_batchnorm(model: keras.Model, seed: int = 0) -> None:
    """Give every BatchNormalization of ``model`` non-trivial gamma/beta/mean/variance."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            values = []
            for w in layer.weights:
                n = w.shape
                if w.name == "moving_variance":
                    values.append(rng.uniform(0.2, 3.0, n).astype("float32"))
                elif w.name == "gamma":
                    values.append(rng.uniform(0.3, 2.0, n).astype("float32"))
                else:
                    values.append(rng.normal(0.0, 1.0, n).astype("float32"))
            layer.set_weights(values)


def randomize_biases(model: keras.Model, seed: int = 1) -> None:
    """Non-zero biases everywhere so that bias folding is exercised."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for w in layer.weights:
            if w.name == "bias":
                w.assign(rng.normal(0.0, 0.5, w.shape).astype("float32"))


def random_inputs(model: keras.Model, batch: int = 2, seed: int = 7) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0.0, 2.0, (batch, *t.shape[1:])).astype("float32") for t in model.inputs]


def assert_same_function(before: keras.Model, after: keras.Model, batch: int = 2) -> None:
    """Outputs agree to 1e-5 relative (absolute tolerance scaled by the output magnitude)."""
    xs = random_inputs(before, batch)
    feed = xs[0] if len(xs) == 1 else xs
    expected = before(feed, training=False)
    actual = after(feed, training=False)
    expected = expected if isinstance(expected, list | tuple) else [expected]
    actual = actual if isinstance(actual, list | tuple) else [actual]
    assert len(expected) == len(actual)
    for e, a in zip(expected, actual, strict=True):
        e, a = np.asarray(e), np.asarray(a)
        assert e.shape == a.shape
        scale = max(float(np.max(np.abs(e))), 1.0)
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5 * scale)


def snapshot(model: keras.Model) -> list:
    """Layer names, classes, configs and weights: compare before/after to prove no mutation."""
    return [
        (
            layer.name,
            type(layer).__name__,
            repr(layer.get_config()) if not isinstance(layer, keras.layers.Lambda) else "",
            [np.array(w.numpy()) for w in layer.weights],
            len(layer._inbound_nodes),
        )
        for layer in model.layers
    ]


def assert_snapshot_equal(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x[:3] == y[:3]
        assert x[4] == y[4]
        assert len(x[3]) == len(y[3])
        for u, v in zip(x[3], y[3], strict=True):
            np.testing.assert_array_equal(u, v)


def layer_types(model: keras.Model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


@pytest.fixture
def helpers():
    """Namespace with the helper functions above."""

    class _Helpers:
        pass

    h = _Helpers()
    for fn in (
        randomize_batchnorm,
        randomize_biases,
        random_inputs,
        assert_same_function,
        snapshot,
        assert_snapshot_equal,
        layer_types,
    ):
        setattr(h, fn.__name__, staticmethod(fn))
    return h
