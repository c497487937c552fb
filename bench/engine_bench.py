"""Engine throughput vs Keras (float and quantized) at batch 100, event path, file sizes.

Run: ``python bench/engine_bench.py`` (prints a Markdown table used in docs/engine.md).
"""

from __future__ import annotations

import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import fixedq  # noqa: E402
import fixedq.engine as fe  # noqa: E402
from fixedq.layers.params import QuantizationParams  # noqa: E402

L = keras.layers


def cnn():
    x = keras.Input((28, 28, 1))
    y = L.Conv2D(32, 3, padding="same")(x)
    y = L.ReLU()(y)
    y = L.MaxPooling2D()(y)
    y = L.Conv2D(64, 3, padding="same")(y)
    y = L.ReLU()(y)
    y = L.MaxPooling2D()(y)
    y = L.Conv2D(64, 3, padding="same")(y)
    y = L.ReLU()(y)
    y = L.GlobalAveragePooling2D()(y)
    return keras.Model(x, L.Dense(10)(y), name="cnn")


def best(fn, repeat=5):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(100, 28, 28, 1)).astype("float32")
    model = cnn()
    rows = []
    for label, qp in (("8-bit", QuantizationParams()),
                      ("4-bit", QuantizationParams(weight_bits=4, activation_bits=4,
                                                   per_tensor_activations=True))):
        q = fixedq.quantize(model, qp, samples=x, verbose=False)
        e = fe.convert(q)
        assert np.array_equal(e.predict(x, batch_size=100), q.predict(x, verbose=0))
        t_float = best(lambda: model.predict(x, batch_size=100, verbose=0))
        t_q = best(lambda: q.predict(x, batch_size=100, verbose=0))  # noqa: B023
        t_e = best(lambda: e.predict(x, batch_size=100))  # noqa: B023
        t_ev = best(lambda: e.predict(x, batch_size=100, mode="event"), 2)  # noqa: B023
        with tempfile.TemporaryDirectory() as d:
            model.save(os.path.join(d, "f.keras"))
            e.save(os.path.join(d, "e.fqe"))
            ratio = os.path.getsize(os.path.join(d, "e.fqe")) / os.path.getsize(
                os.path.join(d, "f.keras"))
        rows.append((label, 100 / t_float, 100 / t_q, 100 / t_e, 100 / t_ev, ratio))
    print("| model | float Keras (img/s) | quantized Keras | engine dense | engine event "
          "| engine/float | engine/quantized | file size / float .keras |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| cnn {r[0]} | {r[1]:.0f} | {r[2]:.0f} | {r[3]:.0f} | {r[4]:.0f} | "
              f"{r[3] / r[1]:.2f}x | {r[3] / r[2]:.2f}x | {r[5]:.2f} |")
    # event path vs dense path on a 90%-sparse input to a big conv
    sparse = rng.uniform(0, 1, size=(100, 28, 28, 1)).astype("float32")
    sparse[rng.random(sparse.shape) < 0.9] = 0.0
    e = fe.convert(fixedq.quantize(model, samples=x, verbose=False))
    t_d = best(lambda: e.predict(sparse, batch_size=100))
    t_v = best(lambda: e.predict(sparse, batch_size=100, mode="event"), 2)
    stats = e.event_stats(sparse, batch_size=100)
    print()
    print(f"90%-sparse input: dense {100 / t_d:.0f} img/s, event {100 / t_v:.0f} img/s "
          f"(event/dense {t_d / t_v:.2f}x)")
    from fixedq.engine.events import format_stats

    print(format_stats(stats))


if __name__ == "__main__":
    main()
