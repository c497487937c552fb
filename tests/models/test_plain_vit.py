"""A plain Keras 3 ViT written the way the keras.io examples write it -- patches by a strided
``Conv2D`` or ``keras.ops.image.extract_patches`` + a ``Dense`` projection, position embeddings
as ``x + Embedding(input_dim=num_patches)(ops.arange(num_patches))``, pre-norm blocks of
``LayerNormalization``, ``MultiHeadAttention(x, x)`` and a ``Dense(activation="gelu")`` MLP
with ``Dropout``, a ``GlobalAveragePooling1D`` or ``Flatten`` head and a softmax -- goes
through ``fixedq.quantize`` directly: every layer quantized (integer-only, the engine converts
it) and the engine equal to the quantized Keras model on every element, at 8 and 4 bits;
``.keras`` and ``.fqe`` round trips; a trained instance keeps its accuracy at 8 bits. A class
token built with keras.ops is a warning naming the node and ``fixedq.layers.ClassToken``;
with ``ClassToken`` and an ``x[:, 0]`` head the model is integer-only too. ``adapt_vit``
(MAD normalization, shiftmax) still works on the same model.
"""

import warnings

import keras
import numpy as np
import pytest
from keras import ops

import fixedq
import fixedq.engine as fe
from fixedq.layers import ClassToken
from fixedq.layers.base import is_quantized_layer
from fixedq.models.vit_adapt import adapt_vit

L = keras.layers
Q4 = fixedq.QuantizationParams(weight_bits=4, activation_bits=4)


def keras_io_vit(image=16, channels=3, patch=4, dim=16, heads=2, blocks=2, mlp=32, classes=5,
                 patches="conv", head="gap", class_token=False):
    """The keras.io ViT in functional form (small sizes)."""
    inp = keras.Input((image, image, channels), name="image")
    n = (image // patch) ** 2
    if patches == "conv":
        x = L.Reshape((n, dim), name="tokens")(L.Conv2D(dim, patch, strides=patch,
                                                        name="patches")(inp))
    else:
        x = ops.image.extract_patches(inp, patch)
        x = L.Dense(dim, name="projection")(L.Reshape((n, patch * patch * channels))(x))
    x = x + L.Embedding(input_dim=n, output_dim=dim, name="position")(ops.arange(n))
    if class_token:
        x = ClassToken(name="cls")(x)
    for i in range(blocks):
        y = L.LayerNormalization(epsilon=1e-6, name=f"b{i}_ln1")(x)
        y = L.MultiHeadAttention(heads, dim // heads, dropout=0.1, name=f"b{i}_mha")(y, y)
        x = L.Add(name=f"b{i}_add1")([y, x])
        y = L.LayerNormalization(epsilon=1e-6, name=f"b{i}_ln2")(x)
        y = L.Dropout(0.1)(L.Dense(mlp, activation="gelu", name=f"b{i}_mlp1")(y))
        y = L.Dropout(0.1)(L.Dense(dim, activation="gelu", name=f"b{i}_mlp2")(y))
        x = L.Add(name=f"b{i}_add2")([y, x])
    x = L.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    if head == "gap":
        x = L.GlobalAveragePooling1D(name="gap")(x)
    elif head == "flatten":
        x = L.Dropout(0.5)(L.Flatten(name="flatten")(x))
    else:  # class-token head
        x = x[:, 0]
    out = L.Dense(classes, activation="softmax", name="head")(x)
    return keras.Model(inp, out, name="keras_io_vit")


def _images(n, seed=0, shape=(16, 16, 3)):
    return np.random.default_rng(seed).uniform(0, 1, (n, *shape)).astype("float32")


def _probe(shape=(16, 16, 3)):
    """Samples, all-zero, saturating and out-of-range images."""
    return np.concatenate([_images(6, seed=1, shape=shape), np.zeros((1, *shape), "float32"),
                           np.ones((1, *shape), "float32"), np.full((1, *shape), 40.0, "float32"),
                           np.full((1, *shape), -40.0, "float32")])


def _quantize_quietly(model, qp, samples):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # any float fallback is a failure
        return fixedq.quantize(model, qp, samples, verbose=False)


def _assert_integer_only(q):
    layers = [ly for ly in q.layers if type(ly).__name__ != "InputLayer"]
    floats = [ly.name for ly in layers if not is_quantized_layer(ly)]
    assert not floats, floats
    dequantizers = [ly.name for ly in layers if type(ly).__name__ == "Dequantizer"]
    assert dequantizers == [layers[-1].name]  # only the output is turned back into floats


@pytest.mark.parametrize("patches,head,qp", [("conv", "gap", fixedq.QuantizationParams()),
                                             ("conv", "gap", Q4),
                                             ("extract", "flatten", fixedq.QuantizationParams()),
                                             ("extract", "flatten", Q4)])
def test_plain_vit_quantizes_directly_integer_only_and_engine_exact(patches, head, qp,
                                                                     tmp_path):
    model = keras_io_vit(patches=patches, head=head)
    q = _quantize_quietly(model, qp, _images(64))
    _assert_integer_only(q)
    kinds = {type(ly).__name__ for ly in q.layers}
    assert {"QuantizedLayerNormalization", "QuantizedAttention", "QuantizedAddPositionEmbs",
            "QuantizedActivation", "QuantizedSoftmax"} <= kinds, kinds
    engine = fe.convert(q)
    assert "attention_softmax" in {op.kind for op in engine.ops}
    x = _probe()
    want = q.predict(x, verbose=0)
    np.testing.assert_array_equal(engine.predict(x), want)
    if patches == "conv":  # .keras and .fqe round trips, bit for bit
        q.save(tmp_path / "vit.keras")
        np.testing.assert_array_equal(fixedq.load_model(tmp_path / "vit.keras").predict(
            x, verbose=0), want)
        engine.save(tmp_path / "vit.fqe")
        np.testing.assert_array_equal(fe.load(tmp_path / "vit.fqe").predict(x), want)


@pytest.mark.parametrize("qp", [fixedq.QuantizationParams(asymmetric_activations=True),
                                fixedq.QuantizationParams(activation_bits=16)])
def test_plain_vit_asymmetric_and_16_bit_activations_are_engine_exact(qp):
    q = _quantize_quietly(keras_io_vit(), qp, _images(32))
    _assert_integer_only(q)
    x = _probe()
    np.testing.assert_array_equal(fe.convert(q).predict(x), q.predict(x, verbose=0))


def test_class_token_layer_and_token_head_are_integer_only():
    model = keras_io_vit(class_token=True, head="token")
    q = _quantize_quietly(model, fixedq.QuantizationParams(), _images(64))
    _assert_integer_only(q)
    assert {"QuantizedClassToken", "QuantizedExtractToken"} <= {type(ly).__name__
                                                                for ly in q.layers}
    x = _probe()
    np.testing.assert_array_equal(fe.convert(q).predict(x), q.predict(x, verbose=0))


def test_class_token_built_from_ops_names_the_node_and_the_way_out():
    inp = keras.Input((16, 16, 3))
    x = L.Reshape((16, 16))(L.Conv2D(16, 4, strides=4, name="patches")(inp))
    token = ops.zeros_like(x[:, :1]) + np.linspace(-1, 1, 16, dtype="float32")
    x = L.Concatenate(axis=1)([token, x])
    model = keras.Model(inp, L.Dense(3)(L.GlobalAveragePooling1D()(x)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fixedq.quantize(model, fixedq.QuantizationParams(), _images(16), verbose=False)
    stops = [str(w.message) for w in caught if "quantization stops" in str(w.message)]
    assert len(stops) == 1 and "fixedq.layers.ClassToken()" in stops[0], stops


def test_trained_plain_vit_keeps_its_accuracy_at_8_bits():
    """scikit-learn digits (8x8, 1,797 images): float vs 8-bit within 1 point, 4-bit sensible."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[..., None] / 16.0).astype("float32")
    y = d.target
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:1400], order[1400:]
    keras.utils.set_random_seed(0)
    model = keras_io_vit(image=8, channels=1, patch=2, dim=32, heads=4, blocks=2, mlp=64,
                         classes=10)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(x[train], y[train], epochs=25, batch_size=64, verbose=0)

    def acc(m):
        return 100.0 * np.mean(np.argmax(m.predict(x[test], verbose=0), -1) == y[test])

    q8 = _quantize_quietly(model, fixedq.QuantizationParams(), x[train][:256])
    q4 = _quantize_quietly(model, Q4, x[train][:256])
    a_float, a8, a4 = acc(model), acc(q8), acc(q4)
    print(f"plain ViT digits: float {a_float:.2f} 8-bit {a8:.2f} 4-bit {a4:.2f}")
    assert a_float > 90.0, a_float
    assert a8 >= a_float - 1.0, (a_float, a8)
    assert a4 > 70.0, (a_float, a4)
    np.testing.assert_array_equal(fe.convert(q8).predict(x[test]), q8.predict(x[test],
                                                                              verbose=0))


def test_adapted_plain_vit_is_integer_only_and_engine_exact():
    adapted = adapt_vit(keras_io_vit())
    q = _quantize_quietly(adapted, fixedq.QuantizationParams(), _images(32))
    _assert_integer_only(q)
    for kind in ("QuantizedAddPositionEmbs", "QuantizedAttention",
                 "QuantizedLayerMadNormalization", "QuantizedGlobalAveragePooling1D"):
        assert kind in {type(ly).__name__ for ly in q.layers}, kind
    x = _probe()
    np.testing.assert_array_equal(fe.convert(q).predict(x), q.predict(x, verbose=0))


def test_custom_layer_fallback_names_the_way_out():
    class PatchEncoder(L.Layer):
        def build(self, shape):
            self.pos = self.add_weight(shape=(shape[1], shape[2]), initializer="ones")

        def call(self, x):
            return x + self.pos

    x = keras.Input((4, 8))
    model = keras.Model(x, L.Dense(2)(PatchEncoder(name="enc")(L.Dense(8)(x))))
    samples = np.random.default_rng(2).normal(size=(16, 4, 8)).astype("float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fixedq.quantize(model, fixedq.QuantizationParams(), samples)
    stops = [str(w.message) for w in caught if "quantization stops" in str(w.message)]
    assert len(stops) == 1 and "'enc' (PatchEncoder)" in stops[0]
    assert "custom layer" in stops[0] and "ClassToken" in stops[0]
