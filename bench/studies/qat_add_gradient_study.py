"""Study (issue 18.2): QAT's gradient through an Add where the integer sum saturates.

numerics.md eq. 24 says a quantized layer's training gradient is that of its float
computation with the same clip bounds: "saturation cuts it". The neural layers did so; the
Add (the residual joins of MobileNetV2-style nets) passed the gradient of the *unclipped*
float sum, also for the sums its 4-bit output saturates (signed 4 bits: 8 levels each side of
zero, and ``mse`` calibration clips on purpose). Commit 6d9d044 cuts it there (forward values
and the engine unchanged). This study measures what that does to ``fixedq.qat`` on the QAT
bench models that have an Add (``mobilenet_like`` and keras.applications MobileNetV2 0.35;
the other three have none, so their QAT is unchanged), seeds 0-2, with the float model as
teacher, ``seed=`` the model's seed and the other defaults, on **validation images only**
(``bench/common.py``: the cached floats, 3,400 training / 600 validation digits, 4-bit
weights and activations with an 8-bit first layer, nearest rounding; the test digits are not
loaded).

Each row names the code it ran on (``--label``): "unclipped" at ef2af94 (the parent of
6d9d044), "saturating" at 6d9d044. The first rows of both were made by an ad-hoc script doing
the same calls, with the change behind an environment variable; its "unclipped" rows equal
the 3-epoch ``fixedq.qat`` of bench/studies/qat_regrid_study.md for the seeds both ran (0, 1),
run for run.

Usage::

    python bench/studies/qat_add_gradient_study.py --seeds 0 1 2 --label saturating \\
        --out bench/results/qat_add_gradient_study.jsonl
    python bench/studies/qat_add_gradient_study.py \\
        --render bench/results/qat_add_gradient_study.jsonl
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common import (  # noqa: E402
    accuracy_metric,
    add_study_arguments,
    engine_exact,
    load_train_digits,
    paired_summary,
    qat_start,
    study_main,
)

REPORT = Path(__file__).with_suffix(".md")
MODELS = ("mobilenet_like", "mobilenet_v2_0.35")
BEFORE, AFTER = "unclipped", "saturating"


def run(name: str, seed: int, label: str, data) -> dict:
    import keras

    import fixedq

    model, q4, fit, val, _, _ = qat_start(keras, fixedq, name, *data, seed)
    acc = accuracy_metric(*val)
    t0 = time.perf_counter()
    best, history = fixedq.qat(q4, fit, val, epochs=3, teacher=model, seed=seed,
                               verbose=False)
    return {"model": name, "seed": seed, "label": label, "float_val": acc(model),
            "ptq_val": acc(q4), "qat_val": acc(best),
            "val_epochs": [100 * v for v in history.val_metric],
            "kept_epoch": history.kept_epoch, "seconds": round(time.perf_counter() - t0, 1),
            "engine_mismatches": engine_exact(best, val[0][:100])}


def render(rows: list[dict]) -> str:
    keyed = {(r["model"], r["seed"], r["label"]): r for r in rows}
    cases = sorted({(r["model"], r["seed"]) for r in rows})
    lines = ["# QAT gradient through a saturating Add "
             "(`bench/studies/qat_add_gradient_study.py`)", "",
             __doc__.split("Usage::")[0].split("\n\n", 1)[1].strip(), "",
             f"Rendered {datetime.date.today().isoformat()}. Validation accuracy (%) after "
             "`fixedq.qat` (3 epochs, teacher); in brackets the difference from float.", "",
             f"| model | seed | float | 4-bit PTQ | {BEFORE} | {AFTER} | {AFTER} − {BEFORE} | "
             "engine bit-exact |", "|---|---|---|---|---|---|---|---|"]
    diffs = []
    for model, seed in cases:
        a, b = keyed.get((model, seed, BEFORE)), keyed.get((model, seed, AFTER))
        ref = a or b
        cells = ["—" if r is None else
                 f"{r['qat_val']:.1f} ({r['qat_val'] - r['float_val']:+.1f})" for r in (a, b)]
        diff = "—"
        if a and b:
            diffs.append(b["qat_val"] - a["qat_val"])
            diff = f"{diffs[-1]:+.1f}"
        exact = all(r["engine_mismatches"] == 0 for r in (a, b) if r)
        lines.append(f"| {model} | {seed} | {ref['float_val']:.1f} | {ref['ptq_val']:.1f} | "
                     f"{cells[0]} | {cells[1]} | {diff} | {'yes' if exact else 'NO'} |")
    if diffs:
        lines += ["", paired_summary(diffs, f"{AFTER} − {BEFORE}")]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--label", default=AFTER, choices=(BEFORE, AFTER),
                        help="the code this run is on (see the module docstring)")
    add_study_arguments(parser)
    args = parser.parse_args(argv)

    def produce():
        data = load_train_digits()
        for seed in args.seeds:
            for name in args.models:
                yield run(name, seed, args.label, data)

    return study_main(args, produce, render, REPORT)


if __name__ == "__main__":
    sys.exit(main())
