"""A shared quantized-layer harness (in the spirit of Keras' ``run_layer_test``), run over every
registry entry by ``tests/ops/test_every_op.py``.

For one op it takes a tiny float model exercising it -- the op module's
:attr:`fixedq.ops.registry.OpSpec.example` when it declares one, else :data:`EXAMPLES` below --
quantizes it once (:func:`quantized`, cached per op) and checks:

1. the op really is quantized (a layer of the quantized model converts through this op);
2. **config round trip**: every such layer ``from_config(get_config())``, given the same
   weights, gives the same outputs on the same inputs;
3. **``.keras`` save/load** gives bit-identical model outputs;
4. **engine parity** at worst-case magnitudes: ``fixedq.engine.convert(q).predict`` equals
   ``q.predict`` on every element, for the samples, inputs at the input quantizer's range
   edges (random sign patterns), far beyond them (saturating), ``±1e9`` and zeros;
5. **straight-through gradient**: for layers with trainable weights, a ``GradientTape`` on
   the quantized model's output (``training=True``) gives non-None, finite, not all-zero
   gradients for each of them.

Ops that are not plain float layers are declared in :data:`SPECIAL` with the reason and the
op whose example covers them; a test asserts that no registered op is silently skipped.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import tensorflow as tf

import fixedq
import fixedq.engine as fe
from fixedq.layers.params import QuantizationParams
from fixedq.layers.quantizers import InputQuantizer
from fixedq.ops import registry

L = keras.layers
Q8 = QuantizationParams()
#: Per-tensor 4-bit activations: concatenated tensors get different frac_bits, so quantize
#: inserts an OutputQuantizer (re-gridding) in front of the Concatenate.
Q4T = QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4,
                         per_tensor_activations=True)


def _seq(shape, layers, rng, n=32, scale=1.0):
    x = keras.Input(shape)
    y = x
    for layer in layers:
        y = layer(y)
    return keras.Model(x, y), (rng.normal(size=(n, *shape)) * scale).astype("float32")


def _conv(rng):
    return _seq((8, 8, 3), [L.Conv2D(5, 3, padding="same"), L.ReLU(), L.Conv2D(4, 3, strides=2)],
                rng)


def _depthwise(rng):
    return _seq((8, 8, 3), [L.DepthwiseConv2D(3, depth_multiplier=2, padding="same"), L.ReLU(),
                            L.Conv2D(3, 1)], rng)


def _transpose(rng):
    return _seq((5, 5, 3), [L.Conv2DTranspose(4, 3, strides=2, padding="same"), L.ReLU()], rng)


def _depthwise_transpose(rng):
    from fixedq.layers.depthwise_conv2d_transpose import DepthwiseConv2DTranspose

    return _seq((5, 5, 3), [L.Conv2D(3, 1), DepthwiseConv2DTranspose(3, 2, "same")], rng)


def _dense(rng):
    return _seq((10,), [L.Dense(8), L.ReLU(), L.Dense(3)], rng)


def _batchnorm(rng):
    model, x = _seq((6, 6, 3), [L.Conv2D(4, 3), L.ReLU(), L.BatchNormalization(),
                                L.Conv2D(2, 1)], rng)
    for layer in model.layers:  # non-trivial statistics: the affine op is not an identity
        if isinstance(layer, L.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2, c), rng.normal(size=c),
                               rng.normal(size=c), rng.uniform(0.5, 2, c)])
    return model, x


def _rescaling(rng):
    # at the model input or before a conv a Rescaling is folded: here it stays an affine op
    return _seq((6, 6, 3), [L.Conv2D(4, 3), L.ReLU(), L.Rescaling(0.5, offset=0.25)], rng)


def _maxpool(rng):
    return _seq((8, 8, 3), [L.Conv2D(4, 3, padding="same"), L.MaxPooling2D(),
                            L.MaxPooling2D(3, 1, padding="same"), L.Conv2D(2, 1)], rng)


def _gap(rng):
    return _seq((6, 6, 3), [L.Conv2D(5, 3), L.ReLU(), L.GlobalAveragePooling2D(), L.Dense(2)],
                rng)


def _add_concat(rng):
    x = keras.Input((6, 6, 3))
    a = L.ReLU()(L.Conv2D(4, 3, padding="same")(x))
    b = L.Conv2D(4, 1)(a)
    y = L.Add()([a, b])
    y = L.Concatenate()([y, L.Rescaling(8.0)(y)])  # 8x the range: frac_bits differ
    return keras.Model(x, L.Conv2D(3, 1)(y)), rng.normal(size=(32, 6, 6, 3)).astype("float32")


def _reshape_dropout(rng):
    return _seq((12,), [L.Dense(16), L.Dropout(0.3), L.Reshape((4, 4)), L.Permute((2, 1)),
                        L.Flatten(), L.Dense(3)], rng)


def _relu(rng):
    # a ReLU right after a quantized op fuses into its clip: after a Reshape it stays a clip
    return _seq((12,), [L.Dense(16), L.Reshape((4, 4)), L.ReLU(max_value=2.0), L.Flatten(),
                        L.Dense(3)], rng)


def _shiftmax(rng):
    from fixedq.layers.transformers import Shiftmax

    return _seq((6, 10), [L.Dense(10), Shiftmax(), L.Dense(4)], rng, scale=3.0)


def _vit(rng):
    from fixedq.layers.transformers import AddPositionEmbs, ClassToken, LayerMadNormalization
    from fixedq.models.vit_adapt import build_vit

    model = build_vit((8, 8, 1), patch=4, dim=8, heads=2, blocks=1, mlp_dim=8, num_classes=3,
                      rescale=None)
    for layer in model.layers:
        if isinstance(layer, (ClassToken, AddPositionEmbs)):
            layer.set_weights([rng.normal(size=w.shape) * 0.5 for w in layer.weights])
        if isinstance(layer, LayerMadNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(-1.5, 1.5, c), rng.normal(size=c) * 0.3])
    return model, rng.normal(size=(32, 8, 8, 1)).astype("float32")


#: Example models of the ops whose module declares no ``example``: op name -> factory.
EXAMPLES = {
    "conv2d": _conv, "depthwise_conv2d": _depthwise, "conv2d_transpose": _transpose,
    "depthwise_conv2d_transpose": _depthwise_transpose, "dense": _dense,
    "batch_normalization": _batchnorm, "rescaling": _rescaling, "relu": _relu,
    "max_pooling2d": _maxpool, "global_average_pooling2d": _gap, "add": _add_concat,
    "concatenate": _add_concat, "reshape": _reshape_dropout, "permute": _reshape_dropout,
    "dropout": _reshape_dropout,
    "shiftmax": _shiftmax, "attention": _vit, "layer_mad_normalization": _vit,
    "class_token": _vit, "add_position_embs": _vit, "extract_token": _vit,
}

#: Ops that are not a float layer of their own: op name -> (op whose example covers it, why).
SPECIAL = {
    "input": ("dense", "the model input: quantize inserts an InputQuantizer in every model; "
                       "every example exercises it (its engine op is each parity test's first)"),
    "output_quantizer": ("concatenate", "matches no float layer: quantize inserts it to "
                                        "re-grid a Concatenate input whose frac_bits differ "
                                        "(per-tensor 4-bit activations)"),
}

#: Ops without an engine op: parity asserts that ``convert`` refuses them by name instead.
NO_ENGINE = {
    "depthwise_conv2d_transpose": "Keras only: no engine kernel for a depthwise transposed "
                                  "convolution yet (OpSpec.to_engine is None)",
}

#: Per-tensor 8-bit activations: per-axis frac_bits cannot follow a Reshape / Permute.
Q8T = QuantizationParams(per_tensor_activations=True)

#: Quantization parameters per op (default :data:`Q8`).
QPARAMS = {"output_quantizer": Q4T, "concatenate": Q4T, "reshape": Q8T, "permute": Q8T,
           "dropout": Q8T, "relu": Q8T}


def _factory(name: str):
    spec = registry.by_name(name)
    name = SPECIAL.get(name, (name,))[0]
    factory = registry.by_name(name).example or EXAMPLES.get(name)
    if factory is None:
        raise LookupError(f"op {spec.name!r} has no example model: give its OpSpec an example")
    return factory


def example(name: str):
    """``(float model, samples)`` exercising op ``name`` (module's example, else the table)."""
    return _factory(name)(np.random.default_rng(0))


@functools.cache
def _quantized(factory, qp):
    model, x = factory(np.random.default_rng(0))
    return model, x, fixedq.quantize(model, qp, samples=x, verbose=False)


def quantized(name: str):
    """``(float model, samples, quantized model)`` for op ``name``; cached per (example,
    qparams), so ops sharing an example model (the ViT's five) quantize it once."""
    return _quantized(_factory(name), QPARAMS.get(name, Q8))


def once(check):
    """Run a whole-model ``check(qmodel, x, ...)`` once per quantized model (ops sharing an
    example share its result)."""
    done: dict[int, BaseException | None] = {}

    @functools.wraps(check)
    def run(qmodel, x, *args):
        key = id(qmodel)
        if key not in done:
            try:
                check(qmodel, x, *args)
                done[key] = None
            except BaseException as err:
                done[key] = err
        if done[key] is not None:
            raise done[key]

    return run


def op_layers(qmodel, name: str) -> list:
    """The layers of ``qmodel`` that convert through op ``name``."""
    spec = registry.by_name(name)
    return [layer for layer in qmodel.layers if registry.for_layer(layer) is spec]


def worst_case_inputs(qmodel, x: np.ndarray, seed: int = 1) -> np.ndarray:
    """The samples, plus inputs at the input quantizer's range edges (random signs), far
    beyond them (x 1000: saturating), ``±1e9`` and zeros."""
    iq = next(layer for layer in qmodel.layers if isinstance(layer, InputQuantizer))
    p = iq.integer_params()
    frac = np.asarray(p["frac"], np.float64)
    lo = np.asarray(p["lo"], np.float64) * 2.0 ** -frac
    hi = np.asarray(p["hi"], np.float64) * 2.0 ** -frac
    rng = np.random.default_rng(seed)
    shape = (16, *x.shape[1:])
    edges = np.where(rng.random(shape) < 0.5, lo, hi).astype("float32")
    return np.concatenate([x, edges, edges[:8] * 1000, np.full_like(x[:2], 1e9),
                           np.full_like(x[:2], -1e9), np.zeros_like(x[:2])]).astype("float32")


def check_config_round_trip(qmodel, name: str, x: np.ndarray) -> None:
    """Each layer of op ``name``: ``from_config(get_config())`` + same weights = same outputs."""
    for layer in op_layers(qmodel, name):
        feed = keras.Model(qmodel.inputs, layer.input)
        inputs = feed(x[:8])
        clone = type(layer).from_config(layer.get_config())
        clone(inputs)  # build
        clone.set_weights(layer.get_weights())
        want, got = np.asarray(layer(inputs)), np.asarray(clone(inputs))
        assert np.array_equal(want, got), f"{layer.name}: config round trip changed outputs"


@once
def check_keras_file(qmodel, x: np.ndarray, tmp_path) -> None:
    """``.keras`` save/load gives bit-identical outputs."""
    path = tmp_path / "q.keras"
    qmodel.save(path)
    again = fixedq.load_model(path)
    assert np.array_equal(qmodel.predict(x, verbose=0), again.predict(x, verbose=0))


@once
def check_engine_parity(qmodel, x: np.ndarray) -> None:
    """Engine == Keras on every element of the worst-case inputs (dense and event paths)."""
    engine = fe.convert(qmodel)
    xs = worst_case_inputs(qmodel, x)
    want = qmodel.predict(xs, verbose=0, batch_size=64)
    for mode in ("dense", "event"):
        got = engine.predict(xs, batch_size=64, mode=mode)
        bad = int(np.count_nonzero(want != got))
        assert bad == 0, f"{mode}: {bad} of {want.size} elements differ"


def check_gradient(qmodel, name: str, x: np.ndarray) -> int:
    """Straight-through gradients reach every trainable weight of op ``name``'s layers;
    returns how many weights were checked."""
    weights = [w for layer in op_layers(qmodel, name) for w in layer.trainable_weights]
    if not weights:
        return 0
    rng = np.random.default_rng(3)
    xt = tf.constant(x[:16])
    qmodel(xt)  # a first frame: streaming layers then have a state to differentiate through
    with tf.GradientTape() as tape:
        y = qmodel(xt, training=True)
        loss = tf.reduce_sum(y * tf.constant(rng.normal(size=y.shape), y.dtype))
    grads = tape.gradient(loss, [w.value for w in weights])
    # a streaming layer's state weights act through past frames: on one frame after a
    # first one, some may have a zero gradient (tests/temporal checks them through time)
    stateful = {id(w) for layer in op_layers(qmodel, name) if getattr(layer, "streaming", False)
                for w in layer.trainable_weights}
    for w, g in zip(weights, grads, strict=True):
        assert g is not None, f"{w.path}: no gradient"
        g = np.asarray(g)
        assert np.all(np.isfinite(g)), f"{w.path}: non-finite gradient"
        assert np.any(g != 0) or id(w) in stateful, f"{w.path}: all-zero gradient"
    assert any(np.any(np.asarray(g) != 0) for g in grads), f"{name}: every gradient is zero"
    return len(weights)
