"""Study (issue 18.2): distillation on teacher-labelled mixtures of training samples (``mix``).

``fixedq.qat(..., teacher=float_model)`` fine-tunes on the training samples, which the float
model (and mostly the 4-bit model) already fit at 99-100 %: the labels and the teacher's
outputs on them carry little signal about the images the model gets wrong. With ``mix=f`` a
fraction ``f`` of every epoch's samples is replaced by mixtures ``lam x_i + (1 - lam) x_j``
(``lam ~ Beta(alpha, alpha)``) whose only target is the teacher's output on the mixture: new
inputs every epoch, where the 4-bit model and the float model still disagree.

Same setup as ``bench/qat_bench.py`` (``bench/common.py``: the float models cached there, 600
held-out validation digits, the 4-bit PTQ start). Per model, seed and variant the row records
the validation accuracy and (fixed, broken) counts of every epoch, the kept epoch and the
test accuracy of the returned model. **The choice of a default reads the validation columns
only** (the kept validation gain); the test accuracy is reported, never used.

Usage::

    python bench/studies/qat_mix_study.py --models sep_cnn ds_cnn --seeds 0 \\
        --variants 0 0.5 1.0 --out bench/results/qat_mix_study.jsonl
    python bench/studies/qat_mix_study.py --render bench/results/qat_mix_study.jsonl
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common import (  # noqa: E402
    accuracy,
    engine_exact,
    load_mnist,
    model_inputs,
    qat_models,
    qat_start,
)

REPORT = Path(__file__).with_suffix(".md")
MODELS = qat_models()


def run(name: str, seed: int, mixes: list[float], alpha: float, data) -> list[dict]:
    import keras

    import fixedq

    x_train, y_train, x_test, y_test = data
    model, q4, fit, val, _, _ = qat_start(keras, fixedq, name, x_train, y_train, seed)
    x_test = model_inputs(name, x_test)
    base = {"model": name, "seed": seed, "float": accuracy(model, x_test, y_test),
            "ptq": accuracy(q4, x_test, y_test)}
    rows = []
    for mix in mixes:
        t0 = time.perf_counter()
        epoch_test = []  # reported for the analysis only: no choice reads it
        best, h = fixedq.qat(q4, fit, val, seed=seed, teacher=model, mix=mix, mix_alpha=alpha,
                             keep="clear",
                             verbose=False, on_epoch=lambda e, m, seen=epoch_test: seen.append(
                                 accuracy(m, x_test, y_test)))
        row = {**base, "mix": mix, "alpha": alpha, "s": round(time.perf_counter() - t0, 1),
               "peak_lr": h.peak_lr, "kept": h.kept_epoch, "val_start": 100 * h.start_metric,
               "val_epochs": [100 * v for v in h.val_metric],
               "val_changes": [list(c) for c in h.val_changes],
               "collapsed": list(h.collapsed_peaks), "test": accuracy(best, x_test, y_test),
               "epoch_test": epoch_test[len(epoch_test) - len(h.val_metric):],
               "engine_mismatches": engine_exact(best, x_test[:100])}
        if row["engine_mismatches"]:
            raise AssertionError(f"{name}/{seed} mix {mix}: engine differs from the QAT model")
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _kept_gain(r: dict) -> float:
    return (r["val_epochs"][r["kept"] - 1] - r["val_start"]) if r["kept"] else 0.0


def _best_gain(r: dict) -> float:
    return max([0.0, *(v - r["val_start"] for v in r["val_epochs"])])


def render(rows: list[dict]) -> str:
    mixes = sorted({r["mix"] for r in rows})
    runs = sorted({(r["model"], r["seed"]) for r in rows}, key=lambda k: (MODELS.index(k[0]), k[1]))
    lines = [
        "# Distillation on teacher-labelled mixtures (`bench/studies/qat_mix_study.py`)", "",
        "`fixedq.qat(q4, fit, val, teacher=float, mix=f)` from the 4-bit PTQ start of "
        "`bench/qat_bench.py` (600 held-out validation digits; `mix_alpha` "
        f"{rows[0]['alpha']}). Per variant: the validation gain of the epoch `qat` kept "
        "(0 when it returned the start), the best epoch's validation gain (kept or not), and "
        "the test accuracy of the returned model and of the last epoch's weights (reported, "
        "never used for a choice; the returned model is the one `keep=\"clear\"`, the rule "
        "of the time, chose). "
        f"Generated {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.", "",
        "| model | seed | float test | PTQ test | "
        + " | ".join(f"mix {m}: kept val gain / best val gain / test / last epoch test"
                     for m in mixes) + " |",
        "|---|---:|---:|---:|" + "---|" * len(mixes)]
    for model, seed in runs:
        cells = []
        base = None
        for m in mixes:
            r = next((r for r in rows if (r["model"], r["seed"], r["mix"]) == (model, seed, m)),
                     None)
            if r is None:
                cells.append("—")
                continue
            base = r
            cells.append(f"{_kept_gain(r):+.2f} / {_best_gain(r):+.2f} / {r['test']:.1f} / "
                         f"{r['epoch_test'][-1]:.1f}")
        lines.append(f"| {model} | {seed} | {base['float']:.1f} | {base['ptq']:.1f} | "
                     + " | ".join(cells) + " |")
    lines += ["", "| mix | runs | mean kept val gain | runs kept | mean best val gain | "
              "mean test − PTQ | last epoch: mean test − PTQ / runs below PTQ |",
              "|---:|---:|---:|---:|---:|---:|---|"]
    complete = [k for k in runs if all(any((r["model"], r["seed"], r["mix"]) == (*k, m)
                                           for r in rows) for m in mixes)]
    for m in mixes:
        sub = [r for r in rows if r["mix"] == m and (r["model"], r["seed"]) in complete]
        if sub:
            lines.append(
                f"| {m} | {len(sub)} | {statistics.mean(map(_kept_gain, sub)):+.2f} | "
                f"{sum(r['kept'] > 0 for r in sub)} | {statistics.mean(map(_best_gain, sub)):+.2f}"
                f" | {statistics.mean(r['test'] - r['ptq'] for r in sub):+.2f} | "
                f"{statistics.mean(r['epoch_test'][-1] - r['ptq'] for r in sub):+.2f} / "
                f"{sum(r['epoch_test'][-1] < r['ptq'] for r in sub)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", type=float, nargs="+", default=[0.0, 0.5, 1.0],
                        help="mix fractions")
    parser.add_argument("--alpha", type=float, default=0.4)
    parser.add_argument("--out", type=Path, default=None, help="append JSON rows here")
    parser.add_argument("--render", type=Path, nargs="+", default=None)
    args = parser.parse_args()
    if args.render:
        rows = [json.loads(line) for p in args.render for line in p.read_text().splitlines()
                if line.strip()]
        REPORT.write_text(render(rows))
        print(REPORT.read_text())
        return
    data = load_mnist()
    for seed in args.seeds:
        for name in args.models:
            for row in run(name, seed, args.variants, args.alpha, data):
                if args.out:
                    with args.out.open("a") as f:
                        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
