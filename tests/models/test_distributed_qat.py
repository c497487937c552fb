"""QAT under tf.distribute.MirroredStrategy with 2 logical CPU devices (fresh subprocess)."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import fixedq
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype("float32")[..., None][:512]
    y = d.target[:512]
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, activation="relu")(inp)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, keras.layers.Dense(10)(h))
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    model.fit(x, y, epochs=3, verbose=0)

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        q = fixedq.quantize(model, fixedq.QuantizationParams(weight_bits=4, activation_bits=4),
                            samples=x, verbose=False)
        q.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # calibration under the strategy sees every replica's extremes: the same model as without
    q0 = fixedq.quantize(model, fixedq.QuantizationParams(weight_bits=4, activation_bits=4),
                         samples=x, verbose=False)
    assert np.array_equal(q0.predict(x[:64], verbose=0), q.predict(x[:64], verbose=0))
    # trainable variables only: a layer's kernel_offset (integers held by weight rounding) is
    # not trained
    before = [np.array(v) for v in q.trainable_weights]
    history = q.fit(x, y, epochs=2, batch_size=64, verbose=0)
    losses = history.history["loss"]
    assert all(np.isfinite(losses)), losses
    after = [np.array(v) for v in q.trainable_weights]
    assert before and all(not np.array_equal(a, b) for a, b in zip(before, after)), "no update"
    print("MIRRORED_OK", losses)
""")


def test_qat_under_mirrored_strategy():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MIRRORED_OK" in result.stdout
