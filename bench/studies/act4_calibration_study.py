"""Study (issue 18): which calibration method should 4-bit activations get by default?

The QAT bench showed that 4-bit *activations*, not 4-bit weights, hold QAT back: on the
MobileNetV2 0.35 digits model (seed 0, validation images) 4-bit weights with 8-bit
activations end QAT 0.5 point below float, 8-bit weights with 4-bit activations 2.5 points
below. QAT trains the weights but never moves an activation's grid (its power-of-two
``frac_bits`` is fixed by calibration), so the range calibration picks at quantization time
is what QAT has to live with. ``max`` (the default so far at every width) spends a 16-level
grid on the largest value ever seen.

This study quantizes every QAT bench model (``bench/common.py``: the cached floats, 3,400
training / 600 held-out validation digits, 4-bit weights and activations with an 8-bit first
layer, nearest rounding, the other 4-bit defaults) with each calibration method, then runs
``fixedq.qat`` with its defaults and the float model as teacher. It records, per model, seed
and method, the **validation** accuracy of the PTQ model and of the QAT result: the test
images are not loaded.

Arms: ``max`` and ``mse`` pass that method for every tensor (the 8-bit input and model output
too); ``default`` passes nothing, i.e. quantize's default (``auto_method``: ``mse`` for tensors
of 4 bits or less, ``max`` for the 8-bit ones). The recorded rows name the code they ran on
(``--label``): ``max`` and ``mse`` with range alignment as of commit 947553e (an ``mse`` range
already sits at its grid's top, so alignment moves it little); "default (mse at 4 bits,
clip-aligned)" at commit d6e411e, whose alignment put the least-squared-error clip of a grid
of *any* real step on the power-of-two grid's top (tried and dropped in 04b0395: its QAT
results were below plain ``mse``'s in 9 of 15 paired runs, above in 5, one tie);
"default (mse at 4 bits)" at 04b0395, the default as shipped.

Usage::

    python bench/studies/act4_calibration_study.py --seeds 0 1 2 \\
        --out bench/results/act4_calibration_study.jsonl
    python bench/studies/act4_calibration_study.py \
        --render bench/results/act4_calibration_study.jsonl
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common import N_CALIB, accuracy, load_train_digits, qat_models, qat_start  # noqa: E402

REPORT = Path(__file__).with_suffix(".md")
MODELS = qat_models()
METHODS = {"max": "max", "mse": "mse", "p99.9": {"name": "percentile", "percentile": 99.9},
           "histogram": "histogram", "default": None}


def run(name: str, seed: int, methods, data) -> list[dict]:
    import keras

    import fixedq

    model, _, fit, val, _, _ = qat_start(keras, fixedq, name, *data, seed)
    qp = fixedq.QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4)
    rows, float_val = [], accuracy(model, *val)
    for method in methods:
        t0 = time.perf_counter()
        q = fixedq.quantize(model, qp, samples=fit[0][:N_CALIB], verbose=False,
                            weight_rounding=False, calibration=METHODS[method])
        seconds = time.perf_counter() - t0
        tuned, history = fixedq.qat(q, fit, validation=val, teacher=model, verbose=False)
        row = {"model": name, "seed": seed, "method": method, "float_val": float_val,
               "ptq_val": accuracy(q, *val), "qat_val": accuracy(tuned, *val),
               "kept": history.kept_epoch, "quantize_s": round(seconds, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def render(rows: list[dict]) -> str:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    lines = [
        "# Calibration method for 4-bit activations (`bench/studies/act4_calibration_study.py`)",
        "",
        "Validation images only (600 digits held out from float training; the test images are "
        "not loaded). The QAT bench's models and cached floats (`bench/common.py`), 4-bit "
        "weights and activations with an 8-bit first layer, nearest weight rounding, the other "
        "4-bit defaults (bias correction, range alignment); each method calibrates on the "
        f"first {N_CALIB} training images; then `fixedq.qat` with its defaults and the float "
        f"model as teacher. Seeds {', '.join(map(str, seeds))}. The arms, and the commit "
        "each ran on: the script's docstring. Generated "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
        "Validation accuracy (%), PTQ -> QAT, and the gap to float after QAT:",
        "",
        "| model | seed | float | " + " | ".join(methods) + " |",
        "|---|---:|---:|" + "---|" * len(methods),
    ]
    key = {}
    for r in rows:
        key[(r["model"], r["seed"], r["method"])] = r
    for name in dict.fromkeys(r["model"] for r in rows):
        for seed in seeds:
            got = [key.get((name, seed, m)) for m in methods]
            if not any(got):
                continue
            fl = next(g for g in got if g)["float_val"]
            cells = [f"{g['ptq_val']:.1f} -> {g['qat_val']:.1f} ({g['qat_val'] - fl:+.1f})"
                     if g else "-" for g in got]
            lines.append(f"| {name} | {seed} | {fl:.1f} | " + " | ".join(cells) + " |")
    lines += ["", "Per method over all runs:", "",
              "| method | runs | mean PTQ − float | mean QAT − float | QAT within 0.5 of float "
              "| best QAT of the run (ties shared) |",
              "|---|---:|---:|---:|---:|---:|"]
    runs = {(r["model"], r["seed"]) for r in rows}
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        best = 0
        for run_key in runs:
            here = [r for r in rows if (r["model"], r["seed"]) == run_key]
            top = max(r["qat_val"] for r in here)
            best += any(r["method"] == m and r["qat_val"] == top for r in here)
        lines.append(
            f"| {m} | {len(mine)} | "
            f"{statistics.mean(r['ptq_val'] - r['float_val'] for r in mine):+.2f} | "
            f"{statistics.mean(r['qat_val'] - r['float_val'] for r in mine):+.2f} | "
            f"{sum(r['qat_val'] >= r['float_val'] - 0.5 for r in mine)} | {best} |")
    lines += ["", "Paired QAT results (same model and seed), each arm against `max`: "
              + "; ".join(_paired(rows, m, "max") for m in methods if m != "max") + "."]
    if "mse" in methods and len(methods) > 2:
        lines[-1] += (" Against `mse`: " + "; ".join(
            _paired(rows, m, "mse") for m in methods if m not in ("max", "mse")) + ".")
    return "\n".join(lines) + "\n"


def _paired(rows: list[dict], arm: str, base: str) -> str:
    key = {(r["model"], r["seed"], r["method"]): r for r in rows}
    diffs = [r["qat_val"] - key[(r["model"], r["seed"], base)]["qat_val"] for r in rows
             if r["method"] == arm and (r["model"], r["seed"], base) in key]
    return (f"{arm} above in {sum(d > 0 for d in diffs)}, below in "
            f"{sum(d < 0 for d in diffs)}, equal in {sum(d == 0 for d in diffs)}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--out", type=Path, default=None, help="append JSON rows here")
    parser.add_argument("--label", default=None,
                        help="record the method under this name (e.g. a code version)")
    parser.add_argument("--render", type=Path, nargs="+", default=None, metavar="ROWS.jsonl")
    parser.add_argument("--no-write", dest="write", action="store_false")
    args = parser.parse_args(argv)
    if args.render:
        rows = [json.loads(line) for path in args.render for line in path.read_text().splitlines()
                if line.strip()]
    else:
        data = load_train_digits()
        rows = []
        for seed in args.seeds:
            for name in args.models:
                new = run(name, seed, args.methods, data)
                for r in new:
                    r["method"] = args.label or r["method"]
                rows.extend(new)
                if args.out:
                    with args.out.open("a") as fh:
                        fh.writelines(json.dumps(r) + "\n" for r in new)
    text = render(rows)
    print(text)
    if args.write:
        REPORT.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
