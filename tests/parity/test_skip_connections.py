"""Skip connections that read a ReLU / max-pool output twice (ResNet and DenseNet style).

``read_graph`` once listed a consumer before its producer when a tensor fed two layers (a
post-order walk that marked layers when pushed), and ``quantize`` crashed in sanitize with a
``KeyError``; these models must quantize, stay close to float and convert bit-exactly.
"""

import keras
import numpy as np
import pytest

import fixedq
import fixedq.engine as fe
from fixedq.transforms.graph import read_graph

L = keras.layers


def _model(variant: str) -> keras.Model:
    inp = keras.Input((8, 8, 3), name="img")
    h = L.Conv2D(4, 3, padding="same", name="c1")(inp)
    h = L.BatchNormalization(name="bn")(h)
    r = L.ReLU(name="r1")(h)
    if variant == "pool_to_add":
        p = L.MaxPooling2D(name="mp")(r)
        out = L.Add(name="add")([L.Conv2D(4, 3, padding="same", name="c2")(p), p])
    elif variant == "relu_to_add":
        out = L.Add(name="add")([L.Conv2D(4, 3, padding="same", name="c2")(r), r])
    else:  # dense block: the ReLU output concatenated with two convs of itself
        a = L.Conv2D(4, 3, padding="same", name="c2")(r)
        b = L.Conv2D(4, 1, name="c3")(r)
        out = L.Concatenate(name="cat")([a, b, r])
    out = L.Dense(3, name="fc")(L.Flatten(name="flat")(out))
    return keras.Model(inp, out)


@pytest.mark.parametrize("variant", ["pool_to_add", "relu_to_add", "dense_block"])
def test_tensor_read_twice_quantizes_and_converts(variant):
    model = _model(variant)
    graph = read_graph(model)
    seen = set()
    for node in graph.nodes:  # topological: every input before its reader
        assert {ref.name for ref in node.refs} <= seen, (node.name, seen)
        seen.add(node.name)
    x = np.random.default_rng(0).uniform(0, 1, (64, 8, 8, 3)).astype("float32")
    q = fixedq.quantize(model, samples=x, verbose=False)
    want, got = model.predict(x, verbose=0), q.predict(x, verbose=0)
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()
    assert np.array_equal(fe.convert(q).predict(x), got)
