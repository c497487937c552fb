"""A plain Keras 3 ViT as the Keras examples write it (patches by a strided Conv2D,
``x + Embedding(arange)`` position embeddings, ``MultiHeadAttention(x, x)``,
``LayerNormalization``, an MLP, ``GlobalAveragePooling1D``): ``quantize`` takes it directly
(falling back to float at the MultiHeadAttention with one warning), and after
``adapt_vit`` it is integer-only and engine bit-exact. (The MLP uses ReLU here; GELU is an
integer table of the activation work.)"""

import warnings

import keras
import numpy as np
from keras import ops

import fixedq
import fixedq.engine as fe
from fixedq.models.vit_adapt import adapt_vit

L = keras.layers


def _plain_vit(tokens=16, dim=16, heads=2):
    x = keras.Input((16, 16, 3))
    p = L.Reshape((tokens, dim))(L.Conv2D(dim, 4, strides=4, name="patches")(x))
    h = p + L.Embedding(tokens, dim, name="pos")(ops.arange(tokens))
    y = L.LayerNormalization(epsilon=1e-6, name="ln1")(h)
    y = L.MultiHeadAttention(heads, dim // heads, name="mha")(y, y)
    h = L.Add()([h, y])
    y = L.Dense(2 * dim, activation="relu")(L.LayerNormalization(epsilon=1e-6, name="ln2")(h))
    h = L.Add()([h, L.Dense(dim)(y)])
    h = L.GlobalAveragePooling1D()(L.LayerNormalization(epsilon=1e-6, name="ln3")(h))
    return keras.Model(x, L.Dense(3, name="head")(h))


def _images(n, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, 16, 16, 3)).astype("float32")


def test_plain_vit_quantizes_directly_with_one_fallback_warning():
    model = _plain_vit()
    samples = _images(32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = fixedq.quantize(model, fixedq.QuantizationParams(), samples)
    stops = [str(w.message) for w in caught if "quantization stops" in str(w.message)]
    assert len(stops) == 1 and "'mha' (MultiHeadAttention)" in stops[0], stops
    names = [type(layer).__name__ for layer in q.layers]
    assert "QuantizedLayerNormalization" in names  # quantized directly (eq. 47)
    assert "QuantizedAddPositionEmbs" in names  # x + Embedding(arange) read as an op
    float_out = model.predict(samples, verbose=0)
    assert np.abs(q.predict(samples, verbose=0) - float_out).max() < 0.1 * np.abs(
        float_out).max()


def test_adapted_plain_vit_is_integer_only_and_engine_exact():
    model = _plain_vit()
    adapted = adapt_vit(model)
    samples = _images(32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        q = fixedq.quantize(adapted, fixedq.QuantizationParams(), samples)
    names = [type(layer).__name__ for layer in q.layers]
    assert names.count("Dequantizer") == 1 and names[-1] == "Dequantizer"
    for kind in ("QuantizedAddPositionEmbs", "QuantizedAttention",
                 "QuantizedLayerMadNormalization", "QuantizedGlobalAveragePooling1D"):
        assert kind in names, (kind, names)
    x = np.concatenate([_images(4, seed=1), np.zeros((1, 16, 16, 3), "float32"),
                        np.full((1, 16, 16, 3), 40.0, "float32")])
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
