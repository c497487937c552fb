"""The shared quantized-layer harness (tests/ops/harness.py) over every registered op: a new op
gets these tests by registering (and declaring ``OpSpec.example``)."""

from __future__ import annotations

import harness  # tests/ops/harness.py (pytest puts this directory on sys.path)
import pytest

import fixedq.engine as fe
from fixedq.ops import registry

OPS = [spec.name for spec in registry.all_ops()]
#: Ops with a float layer of their own (the others are in harness.SPECIAL).
LAYER_OPS = [n for n in OPS if n not in harness.SPECIAL]


def test_every_registered_op_is_covered():
    """No op silently skipped: each has an example (module or table) or is SPECIAL, and its
    quantized layer really appears in the quantized example."""
    for name in OPS:
        spec = registry.by_name(name)
        if name in harness.SPECIAL:
            assert not spec.float_layers or name == "input", name
            continue
        assert spec.example is not None or name in harness.EXAMPLES, (
            f"op {name!r} has no example model: declare OpSpec.example in its module")
    for name in set(harness.EXAMPLES) | set(harness.SPECIAL) | set(harness.NO_ENGINE):
        assert name in OPS, f"harness entry {name!r} is not a registered op"
    assert {n for n in OPS if registry.by_name(n).to_engine is None} == set(harness.NO_ENGINE)


@pytest.mark.parametrize("name", OPS)
def test_op_is_quantized(name):
    _, _, q = harness.quantized(name)
    assert harness.op_layers(q, name), f"op {name!r}: its example kept the layer float"


@pytest.mark.parametrize("name", LAYER_OPS)
def test_config_round_trip(name):
    _, x, q = harness.quantized(name)
    harness.check_config_round_trip(q, name, x)


@pytest.mark.parametrize("name", LAYER_OPS)
def test_keras_save_load(name, tmp_path):
    _, x, q = harness.quantized(name)
    harness.check_keras_file(q, x, tmp_path)


@pytest.mark.parametrize("name", OPS)
def test_engine_parity_worst_case(name):
    _, x, q = harness.quantized(name)
    if name in harness.NO_ENGINE:
        cls = type(harness.op_layers(q, name)[0]).__name__
        with pytest.raises(ValueError, match=f"{cls}.*not a fixedq quantized layer"):
            fe.convert(q)
        return
    harness.check_engine_parity(q, x)


@pytest.mark.parametrize("name", LAYER_OPS)
def test_straight_through_gradient(name):
    _, x, q = harness.quantized(name)
    checked = harness.check_gradient(q, name, x)
    if registry.by_name(name).weighted:
        assert checked, f"op {name!r} is weighted but has no trainable weight"
