"""Study (issue 18, second target): is the 4-bit QAT gap to float a matter of epochs?

Issue 18 asks for a 4-bit drop of at most 0.5 point after at most 3 epochs of QAT. On the QAT
bench's check seeds, with the float model as teacher, the five models end 0.3-0.9 point below
float on average (docs/benchmarks.md "qat"). This study asks what more training would buy and
how much of the gap the 4-bit activation grids hold, on **validation images only**
(``bench/common.py``: the cached floats, 3,400 training / 600 validation digits; the test
digits are not loaded), with ``fixedq.qat(..., teacher=float, seed=seed)`` and its defaults
otherwise:

* ``e3``: 3 epochs from the bench's 4-bit start (4-bit weights and activations, 8-bit first
  layer, nearest rounding), the bench's call;
* ``e12``: the same start and call with ``epochs=12`` (one cosine schedule over 12 epochs);
* ``a8``: 3 epochs from a start with 8-bit activations (weights as in ``e3``): what the
  activation grids cost after QAT;
* ``b8``: as ``e3`` with ``batch_size=8``: four times the steps of ``e3`` (as many as
  ``e12``) in the same 3 passes over the training images;
* ``s3``: as ``e3`` with ``low_bit_lr_scale=3`` (the layers with 4-bit weights at three times
  the range test's peak, the 8-bit first layer at it): issue 18's per-layer learning rate,
  measured before only at a fixed peak of 3e-4 (docs/quantization.md).

Each row also counts, on the validation images, the images the result gets right and the
float model wrong (``fixed``) and the reverse (``broken``): ``sqrt(fixed + broken)`` is the
standard deviation, in images, of the result − float difference if both were equally good,
the noise of a single run's "drop" (the bench's test set has 1,000 images, this one 600).

Usage::

    python bench/studies/qat_epochs_study.py --seeds 0 1 2 \\
        --out bench/results/qat_epochs_study.jsonl
    python bench/studies/qat_epochs_study.py --render bench/results/qat_epochs_study.jsonl
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common import (  # noqa: E402
    N_CALIB,
    add_study_arguments,
    correct_metric,
    engine_exact,
    load_train_digits,
    paired_summary,
    qat_models,
    qat_start,
    study_main,
)

REPORT = Path(__file__).with_suffix(".md")
ARMS = ("e3", "e12", "a8", "b8", "s3")


def run(name: str, seed: int, arm: str, data) -> dict:
    import keras

    import fixedq

    model, q4, fit, val, _, _ = qat_start(keras, fixedq, name, *data, seed)
    if arm == "a8":
        qp = fixedq.QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=8)
        q4 = fixedq.quantize(model, qp, samples=fit[0][:N_CALIB], verbose=False,
                             weight_rounding=False)
    x_val, y_val = val
    correct = correct_metric(x_val, y_val)
    float_right, start_right = correct(model), correct(q4)
    t0 = time.perf_counter()
    best, history = fixedq.qat(q4, fit, val, epochs=12 if arm == "e12" else 3, teacher=model,
                               seed=seed, batch_size=8 if arm == "b8" else 32,
                               low_bit_lr_scale=3.0 if arm == "s3" else 1.0, verbose=False)
    right = correct(best)
    n = len(y_val)
    return {"model": name, "seed": seed, "arm": arm, "float_val": 100 * float_right.mean(),
            "start_val": 100 * start_right.mean(), "qat_val": 100 * right.mean(),
            "val_epochs": [100 * v for v in history.val_metric],
            "kept_epoch": history.kept_epoch, "peak_lr": history.peak_lr,
            "fixed": int(np.sum(right & ~float_right)),
            "broken": int(np.sum(~right & float_right)), "n_val": n,
            "seconds": round(time.perf_counter() - t0, 1),
            "engine_mismatches": engine_exact(best, x_val[:100])}


def _gap(r) -> float:
    return r["qat_val"] - r["float_val"]


def render(rows: list[dict]) -> str:
    keyed = {(r["model"], r["seed"], r["arm"]): r for r in rows}
    cases = sorted({(r["model"], r["seed"]) for r in rows},
                   key=lambda c: (qat_models().index(c[0]), c[1]))
    lines = ["# Is the 4-bit QAT gap a matter of epochs? (`bench/studies/qat_epochs_study.py`)",
             "", __doc__.split("Usage::")[0].split("\n\n", 1)[1].strip(), "",
             f"Rendered {datetime.date.today().isoformat()}. Validation accuracy (%); in "
             "brackets the result − float, and for `e12` the validation accuracy after "
             "epochs 3, 6, 9 and 12 of its schedule; *noise*: `sqrt(fixed + broken)` of the "
             "`e3` result against float, in points.", "",
             "| model | seed | float | 4-bit PTQ | `e3` | `e12` (epochs 3/6/9/12) | `b8` | "
             "`s3` | 8-bit act. PTQ | `a8` | noise (`e3`) | engine bit-exact |",
             "|---|---:|---:|---:|---|---|---|---|---:|---|---:|---|"]
    gaps = {arm: {} for arm in ARMS}
    for model, seed in cases:
        r = {arm: keyed.get((model, seed, arm)) for arm in ARMS}
        ref = next(v for v in r.values() if v)
        cell = {arm: "—" if v is None else f"{v['qat_val']:.1f} ({_gap(v):+.1f})"
                for arm, v in r.items()}
        if r["e12"]:
            ep = r["e12"]["val_epochs"]
            cell["e12"] += " " + "/".join(f"{ep[i]:.1f}" for i in (2, 5, 8, 11) if i < len(ep))
        noise = "—"
        if r["e3"]:
            e3 = r["e3"]
            noise = f"{100 * math.sqrt(e3['fixed'] + e3['broken']) / e3['n_val']:.2f}"
        for arm, v in r.items():
            if v:
                gaps[arm].setdefault(model, []).append(_gap(v))
        exact = all(v["engine_mismatches"] == 0 for v in r.values() if v)
        a8_start = f"{r['a8']['start_val']:.1f}" if r["a8"] else "—"
        lines.append(f"| {model} | {seed} | {ref['float_val']:.1f} | "
                     f"{(r['e3'] or r['e12'] or ref)['start_val']:.1f} | {cell['e3']} | "
                     f"{cell['e12']} | {cell['b8']} | {cell['s3']} | {a8_start} | "
                     f"{cell['a8']} | {noise} | {'yes' if exact else 'NO'} |")
    lines += ["", "Mean result − float per model (points; runs):", "",
              "| model | " + " | ".join(f"`{a}`" for a in ARMS) + " |",
              "|---|" + "---:|" * len(ARMS)]
    for model in sorted({c[0] for c in cases}, key=qat_models().index):
        cells = [f"{statistics.mean(g[model]):+.2f} ({len(g[model])})" if g.get(model)
                 else "—" for g in gaps.values()]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines.append("")
    for arm in ARMS[1:]:
        diffs = [keyed[(m, sd, arm)]["qat_val"] - keyed[(m, sd, "e3")]["qat_val"]
                 for m, sd in cases if (m, sd, arm) in keyed and (m, sd, "e3") in keyed]
        if diffs:
            lines += ["", paired_summary(diffs, f"`{arm}` − `e3`")]
    return "\n".join(lines) + "\n" + DECISION


DECISION = """
## Decision: `fixedq.qat` keeps its defaults; docs recommend more epochs

Made on the validation rows above (seeds 0-2); the QAT bench then checked `epochs=12` on the
test images of seeds 6-8 (docs/benchmarks.md "qat").

- **More steps in the same 3 epochs do not help**: batch 8 (`b8`, as many steps as `e12`)
  against batch 32: mean −0.01 point, better 5 / worse 5 / equal 5; MobileNetV2 0.35 lower in
  all 3 runs. The batch size stays 32.
- **A per-layer learning rate for the 4-bit layers does not help either**: `s3`
  (`low_bit_lr_scale=3` at the range test's peak) against `e3`: mean +0.01 point, better 5 /
  worse 6 / equal 4. `low_bit_lr_scale` stays an option with default 1.
- **More epochs do**: `e12` against `e3` +1.02 points on average, better in 11 of 15 runs,
  worse in 3. On the four small nets +0.33 (8 better, 3 worse, 1 equal); on MobileNetV2 0.35
  +2.7 to +4.3, ending 3.5-5.0 points *above* its float model (why was not measured). After
  12 epochs every model's mean is at or above float; after 3, mobilenet_like and kws_ds_cnn
  are 0.2 below. The same validation images chose the kept epoch and score it (`e12` kept
  an earlier epoch in 3 runs); the last epoch against the last gives +0.96, 12 better / 3
  worse: the same conclusion. The default stays 3 epochs (issue 18's budget; 12 took about
  twice the wall time here, 1.6-2.8x per run: four times the training steps, while the range
  test and the teacher's outputs are paid once): docs/quantization.md recommends
  `epochs=12` when that time is affordable.
- **The 4-bit activation grids cost little after QAT here**: 3 epochs from a start with
  8-bit activations (`a8`) end +0.26 point above the 4-bit start's on average (10 better, 5
  worse), although that start is up to 11.7 points better before QAT (MobileNetV2 0.35;
  -0.3 to +1.7 on the small nets).
- **One run's drop is noisy at the size of the target**: the standard deviation of a 3-epoch
  result − float (`sqrt(fixed + broken)` images) is 0.37-0.62 point of the 600 validation
  images on the small nets and 1.2-1.35 on MobileNetV2 0.35; on the bench's 1,000 test
  images (measured there afterwards) 0.3-0.6 and about 1.1 point. A model as good as float on
  average still ends more than 0.5 point below it in some runs.
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=qat_models())
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    add_study_arguments(parser)
    args = parser.parse_args(argv)

    def produce():
        data = load_train_digits()
        for seed in args.seeds:
            for name in args.models:
                for arm in args.arms:
                    yield run(name, seed, arm, data)

    return study_main(args, produce, render, REPORT)


if __name__ == "__main__":
    sys.exit(main())
