"""``OpSpec.output_sign``: the signedness rule range alignment reads from the registry."""

import keras
import numpy as np
import pytest

import fixedq
import fixedq.ops  # noqa: F401  (registers every op)
from fixedq.ops.registry import OUTPUT_SIGNS, OpSpec, all_ops, by_name


def test_every_op_declares_a_known_rule():
    for spec in all_ops():
        assert spec.output_sign in OUTPUT_SIGNS, spec.name


def test_a_bad_rule_is_refused_when_the_op_is_defined():
    with pytest.raises(ValueError, match="output_sign 'maybe'"):
        OpSpec(name="x", kind="x", float_layers=(), quantized_layers=(), engine_kinds=(),
               to_engine=None, output_sign="maybe")


@pytest.mark.parametrize("name, inputs, fused, signed", [
    ("relu", [True], False, False),
    ("max_pooling2d", [False], False, False),
    ("max_pooling2d", [True], False, True),
    ("dropout", [False], False, False),
    ("global_average_pooling2d", [False], False, False),
    ("reshape", [False], False, False),
    ("add", [False, False], False, False),
    ("add", [False, True], False, True),
    ("conv2d", [False], True, False),
    ("conv2d", [False], False, True),
    ("dense", [True], True, False),
    ("concatenate", [False, False], False, True),
])
def test_rules(name, inputs, fused, signed):
    assert by_name(name).signed_output(None, inputs, fused) is signed


def test_range_alignment_follows_the_rules():
    """Conv -> ReLU (fused, unsigned) -> max-pool (follows) -> Conv: 4-bit range alignment
    gives the pooled tensor an unsigned grid, so the model is exact in the engine."""
    rng = np.random.default_rng(0)
    inp = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(4, 3, padding="same")(inp)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    out = keras.layers.Conv2D(3, 1)(x)
    model = keras.Model(inp, out)
    samples = rng.normal(size=(64, 8, 8, 2)).astype("float32")
    qp = fixedq.QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4)
    q = fixedq.quantize(model, qp, samples=samples, verbose=False, range_alignment=True)
    from fixedq.engine import convert

    np.testing.assert_array_equal(convert(q).predict(samples[:8]),
                                  q.predict(samples[:8], verbose=0))
