"""Training on clips through time: float streaming models and QAT of quantized ones."""

import keras
import numpy as np
import tensorflow as tf

import fixedq
import fixedq.engine as fe
from fixedq.layers.temporal import BufferTempConv, DepthwiseBufferTempConv
from fixedq.models import predict_clips, unroll_clips

L = keras.layers


def _model():
    x = keras.Input((3, 3, 2))
    y = BufferTempConv(4, 3, use_bias=True, name="tc")(x)
    y = L.ReLU()(y)
    y = DepthwiseBufferTempConv(2, name="dw")(y)
    y = L.GlobalAveragePooling2D()(y)
    return keras.Model(x, L.Dense(2, name="fc")(y))


def _task(rng, n=32, steps=5):
    """Label at frame t: whether the clip's first frame was bright (needs memory)."""
    clips = rng.normal(size=(n, steps, 3, 3, 2)).astype("float32") * 0.3
    bright = rng.random(n) < 0.5
    clips[bright, 0] += 1.0
    labels = np.repeat(bright[:, None].astype("int32"), steps, axis=1)
    return clips, labels


def test_unrolled_equals_streaming_and_gradient_reaches_the_past():
    rng = np.random.default_rng(0)
    model = _model()
    clips, _ = _task(rng, n=4)
    trainer = unroll_clips(model, 5)
    np.testing.assert_allclose(trainer.predict_on_batch(clips), predict_clips(model, clips),
                               atol=1e-5)
    x = tf.constant(clips)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = trainer(x)[:, 3]  # frame 3 sees frames 1..3 through tc, 0..3 through tc + dw
    grad = tape.gradient(y, x).numpy()
    assert np.abs(grad[:, 0]).max() > 0  # through both FIFOs: frame 0 reaches frame 3
    assert np.abs(grad[:, 4]).max() == 0  # causal


def test_qat_through_time_improves_and_stays_bit_exact():
    rng = np.random.default_rng(1)
    model = _model()
    clips, labels = _task(rng)
    q = fixedq.quantize(model, fixedq.QuantizationParams(weight_bits=4, activation_bits=4),
                        samples=clips, verbose=False)
    trainer = unroll_clips(q, 5)
    trainer.compile(keras.optimizers.Adam(1e-2),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = trainer.evaluate(clips, labels, verbose=0)
    weights = q.get_layer("tc").get_weights()[0].copy()
    trainer.fit(clips, labels, epochs=2, batch_size=16, verbose=0)
    assert not np.array_equal(q.get_layer("tc").get_weights()[0], weights)
    assert trainer.evaluate(clips, labels, verbose=0) < before
    np.testing.assert_array_equal(fe.convert(q).predict(clips), predict_clips(q, clips))


def test_recurrent_qat_gradient_reaches_both_eigenvalue_parts():
    from fixedq.layers.temporal import StatefulRecurrent

    x = keras.Input((2, 2, 3))
    rec = StatefulRecurrent(name="ssm")
    model = keras.Model(x, L.Dense(2)(L.Flatten()(rec(x))))
    rec.set_weights([np.array([0.8, 0.5, -0.3], "float32"),
                     np.array([0.4, -0.6, 0.7], "float32")])
    clips = np.random.default_rng(2).normal(size=(4, 4, 2, 2, 3)).astype("float32")
    q = fixedq.quantize(model, samples=clips, verbose=False)
    trainer = unroll_clips(q, 4)
    layer = q.get_layer("ssm")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(trainer(tf.constant(clips), training=True)[:, -1] ** 2)
    g_re, g_im = tape.gradient(loss, [layer.a_real.value, layer.a_imag.value])
    assert np.all(np.asarray(g_re) != 0) and np.all(np.asarray(g_im) != 0)
