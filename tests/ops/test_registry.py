"""The op registry: kinds unchanged (q-configs stay valid), every lookup goes through it, the
engine knows every engine kind, and the docs' table is the generated one."""

import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

import fixedq
import fixedq.ops
from fixedq.engine import converter, validate
from fixedq.engine.ops import KERNELS, NEURAL_TYPES, Op, run_op
from fixedq.engine.targets import TARGETS
from fixedq.layers import transformers as tr
from fixedq.layers.depthwise_conv2d_transpose import DepthwiseConv2DTranspose
from fixedq.layers.slicing import StridedSlice
from fixedq.layers.temporal import BufferTempConv, DepthwiseBufferTempConv, StatefulRecurrent
from fixedq.models import builders
from fixedq.ops import registry
from fixedq.transforms.graph import read_graph

L = keras.layers
DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "quantization.md"

#: The kinds quantize used before the registry (q-configs and calibration keys depend on them).
LEGACY_KINDS = {
    L.Conv2D: "neural", L.DepthwiseConv2D: "neural", L.Conv2DTranspose: "neural",
    L.Dense: "neural", DepthwiseConv2DTranspose: "neural", L.Flatten: "reshape",
    L.Reshape: "reshape", L.Permute: "reshape", L.Dropout: "dropout", L.MaxPooling2D: "maxpool",
    L.Add: "add", L.Concatenate: "concat", L.GlobalAveragePooling2D: "gap", L.ReLU: "relu",
    L.BatchNormalization: "affine", L.Rescaling: "affine", L.InputLayer: "input",
    tr.Attention: "attention", tr.Shiftmax: "shiftmax", tr.LayerMadNormalization: "madnorm",
    tr.ClassToken: "class_token", tr.AddPositionEmbs: "add_pos",
    tr.ExtractToken: "extract_token",
}
#: Ops added through the registry since (docs/architecture.md "How to add an op").
NEW_KINDS = {L.Conv1D: "neural", L.AveragePooling2D: "avgpool",
             L.GlobalAveragePooling1D: "gap",
             L.Normalization: "affine", L.Activation: "table", L.LeakyReLU: "table",
             L.PReLU: "table", L.ELU: "table", L.Softmax: "softmax", BufferTempConv: "neural",
             DepthwiseBufferTempConv: "neural", StatefulRecurrent: "recurrent",
             L.Multiply: "mul", L.ZeroPadding2D: "pad",
             L.ZeroPadding1D: "pad",
             L.GlobalMaxPooling2D: "gmp", L.GlobalMaxPooling1D: "gmp", L.UpSampling2D: "upsample",
             L.LayerNormalization: "layernorm", L.Identity: "dropout",
             StridedSlice: "reshape"}


def test_every_legacy_layer_keeps_its_kind():
    for cls, kind in {**LEGACY_KINDS, **NEW_KINDS}.items():
        spec = registry.for_float(cls)
        assert spec is not None and spec.kind == kind, cls.__name__
    matched = {c for s in registry.all_ops() for c in s.float_layers}
    assert matched == set(LEGACY_KINDS) | set(NEW_KINDS)
    assert builders.REQUANTIZING == {"neural", "affine", "gap", "add", "attention", "madnorm",
                                     "class_token", "add_pos", "avgpool", "table", "mul",
                                     "recurrent", "layernorm"}


def test_config_conditions_fall_back():
    x = keras.Input((8, 8, 3), name="x")
    outs = [L.Conv2D(4, 3, activation="relu", name="conv_act")(x),
            L.Conv2D(3, 3, groups=3, name="grouped")(x),
            L.ReLU(negative_slope=0.1, name="leaky")(x), L.ReLU(name="relu")(x),
            L.GlobalAveragePooling2D(keepdims=True, name="gap_keep")(x),
            L.AveragePooling2D(2, padding="same", name="avg_same")(x),
            L.BatchNormalization(axis=1, name="bn_axis1")(x),
            L.BatchNormalization(axis=2, name="bn_axis2")(x)]
    g = read_graph(keras.Model(x, outs))
    kinds = {n.name: builders.kind_of(n) for n in g.nodes}
    assert kinds == {"x": "input", "conv_act": "unsupported", "grouped": "unsupported",
                     "leaky": "unsupported", "relu": "relu", "gap_keep": "unsupported",
                     "avg_same": "avgpool",
                     "bn_axis1": "affine", "bn_axis2": "unsupported"}


#: Engine kinds no registered op produces (documented in docs/architecture.md). Empty: the
#: model input is the input_quantizer op's 'input'; the converter's pool fusion keeps 'neural'.
ENGINE_ONLY_KINDS: set[str] = set()


def test_every_op_kind_has_one_kernel_and_every_kernel_an_op():
    produced = {k for spec in registry.all_ops() for k in spec.engine_kinds}
    assert produced <= set(KERNELS), produced - set(KERNELS)
    assert set(KERNELS) - produced == ENGINE_ONLY_KINDS
    types = {spec.neural_type for spec in registry.all_ops() if spec.neural_type is not None}
    assert types == set(NEURAL_TYPES)
    for spec in registry.all_ops():
        assert (spec.neural_type is not None) == ("neural" in spec.engine_kinds), spec.name
        assert (spec.to_engine is None) == (not spec.engine_kinds), spec.name
    assert set(converter.SUPPORTED) == {*registry.quantized_classes(),
                                        fixedq.layers.quantizers.Dequantizer}


def test_every_kernel_runs_is_validated_and_names_existing_targets():
    for kind, k in KERNELS.items():
        assert callable(k.run) and k.description, kind
        assert set(k.targets) <= set(TARGETS), (kind, k.targets)
        with pytest.raises(Exception) as err:  # its runner is reached: not "unknown kind"
            run_op(Op("t", kind, ["x"]), [])
        assert "unknown engine op kind" not in str(err.value)
    assert set(validate.KIND_RULES) == set(KERNELS)  # .fqe validation knows every kind
    for t in NEURAL_TYPES.values():
        assert set(t.targets) <= set(TARGETS)
    for name, target in TARGETS.items():  # the profiles are read from the table
        assert target.kinds == tuple(k for k, v in KERNELS.items() if name in v.targets)
        assert target.neural_types == tuple(t for t, v in NEURAL_TYPES.items()
                                            if name in v.targets)
    with pytest.raises(ValueError, match="unknown engine op kind 'nope' .op 't'.; known: "):
        run_op(Op("t", "nope", ["x"]), [])
    with pytest.raises(ValueError, match="unknown neural op type 'conv3d'"):
        run_op(Op("t", "neural", ["x"], {"type": "conv3d"}), [np.zeros((1, 4), np.int64)])


def test_register_rejects_a_second_owner():
    spec = registry.by_name("relu")
    with pytest.raises(ValueError, match="already"):
        registry.register(spec)


def test_supported_layers_is_exported():
    rows = fixedq.supported_layers()
    assert "supported_layers" in fixedq.__all__
    dense = next(r for r in rows if r.op == "dense")
    assert dense.float_layers == ("Dense",) and dense.quantized_layers == ("QuantizedDense",)
    assert dense.engine_ops == ("neural/dense",) and "akida-2.0" in dense.targets
    assert all(r.float_layers for r in rows)


def test_docs_table_is_the_generated_one():
    text = DOCS.read_text()
    start, end = "<!-- supported-layers:start -->\n", "<!-- supported-layers:end -->"
    table = text[text.index(start) + len(start):text.index(end)]
    assert table == fixedq.ops.markdown_table(), (
        "docs/quantization.md is out of date: paste fixedq.ops.markdown_table() between the "
        "supported-layers markers")


def test_engine_imports_no_keras():
    code = ("import sys, fixedq.engine.ops, fixedq.engine.model, fixedq.engine.targets; "
            "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_new_ops_config_conditions_fall_back():
    x = keras.Input((10, 3), name="s")
    xd = keras.Input((None, None, 3), name="img")
    outs = [L.Conv1D(4, 3, padding="causal", name="causal")(x),
            L.Conv1D(4, 3, padding="same", name="c1d")(x),
            L.GlobalAveragePooling1D(keepdims=True, name="gap1d_keep")(x),
            L.GlobalAveragePooling1D(name="gap1d")(x)]
    g = read_graph(keras.Model(x, outs))
    kinds = {n.name: builders.kind_of(n) for n in g.nodes}
    assert kinds == {"s": "input", "causal": "unsupported", "c1d": "neural",
                     "gap1d_keep": "unsupported", "gap1d": "gap"}
    causal = next(n for n in g.nodes if n.name == "causal")
    assert registry.by_name("conv1d").reason(causal) == "padding 'causal'"
    # 'same' average pooling divides by a per-position count: it needs a static size
    g = read_graph(keras.Model(xd, [L.AveragePooling2D(2, padding="same", name="a")(xd),
                                    L.AveragePooling2D(2, name="b")(xd)]))
    kinds = {n.name: builders.kind_of(n) for n in g.nodes}
    assert kinds["a"] == "unsupported" and kinds["b"] == "avgpool"


def test_converter_fusion_and_offset_fields():
    """The converter's pool fusion and offset folding read OpSpec fields: conv-type neural ops
    absorb max_pooling2d (its epilogue gives the ``pool`` attrs), neural ops fold an
    asymmetric input's offset into the bias; range alignment and dynamic-size pinning read
    in_channel_axis / channel_homogeneous / size_dependent."""
    for spec in registry.all_ops():
        for name in spec.absorbs:
            assert registry.by_name(name).epilogue is not None, (spec.name, name)
        assert spec.in_channel_axis is None or spec.weighted, spec.name
        assert spec.fold_input_offset is None or spec.engine_kinds, spec.name
    assert registry.by_name("conv2d").absorbs == ("max_pooling2d",)
    assert registry.by_name("dense").absorbs == ()
    assert {s.name for s in registry.all_ops() if s.size_dependent} >= {
        "global_average_pooling2d", "global_average_pooling1d"}
    x = keras.Input((8, 8, 2), name="x")
    a = L.Conv2D(3, 3, padding="same", name="a")(x)
    pa = L.MaxPooling2D(name="pa")(a)                     # a's only consumer: fused
    b = L.Conv2D(3, 3, padding="same", name="b")(pa)
    pb = L.MaxPooling2D(name="pb")(b)                     # b also feeds c: kept apart
    c = L.Conv2D(2, 1, name="c")(b)
    out = L.Concatenate(name="cat")([L.Flatten(name="fp")(pb), L.Flatten(name="fc")(c)])
    model = keras.Model(x, L.Dense(2, name="d")(out))
    samples = np.random.default_rng(0).normal(size=(16, 8, 8, 2)).astype("float32")
    q = fixedq.quantize(model, samples=samples, verbose=False)
    engine = converter.convert(q)
    ops = {op.name: op for op in engine.ops}
    assert ops["pa"].kind == "neural" and ops["pa"].layers == ["a", "pa"]
    assert ops["pa"].attrs["pool"] == {"pool_size": [2, 2], "strides": [2, 2],
                                       "padding": "valid"}
    assert ops["pb"].kind == "maxpool" and "b" in ops
    assert np.array_equal(engine.predict(samples), q.predict(samples, verbose=0))
    assert len(converter.convert(q, fuse=False).ops) == len(engine.ops) + 1
