"""Study: how many frames weight rounding and bias correction need (issue 13.6).

At real sizes the layer-by-layer passes of a 4-bit ``quantize`` (weight rounding, bias
correction) keep the live activations of their frames in memory, so ``quantize`` caps the
frames at what fits :data:`fixedq.models.weight_rounding.CACHE_BUDGET` (MobileNetV2 1.0 @ 224:
about 20 of the default 256 / 64). The bench models (28x28 digits) are never capped. This study
measures what a cap would cost there: the three PTQ bench models (bench/common.py, trained as
bench/ptq_bench.py does) quantized to 4 bits (``weight_bits=4, activation_bits=4``, first layer
8-bit weights) with weight rounding on F frames and bias correction on ``min(F, 64)`` frames
(what the cap does: the first F calibration samples), test accuracy on the 1,000 test digits.

Usage (from the repository root, with the project venv)::

    python bench/studies/frame_cap_study.py               # ~10 min on 2 cores
    python bench/studies/frame_cap_study.py --frames 256 16 --archs ds_cnn
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import keras  # noqa: E402
from common import ARCHS, N_CALIB, SEED, accuracy, load_mnist, train_float  # noqa: E402

import fixedq  # noqa: E402

QP4 = fixedq.QuantizationParams(weight_bits=4, activation_bits=4)


def run(archs, frames, epochs: int) -> list[dict]:
    x_train, y_train, x_test, y_test = load_mnist()
    calib = x_train[:N_CALIB]
    rows = []
    for arch in archs:
        model = train_float(keras, arch, x_train, y_train, epochs, SEED)
        row = {"model": arch, "float": accuracy(model, x_test, y_test)}
        for count in frames:
            t0 = time.perf_counter()
            q = fixedq.quantize(model, QP4, samples=calib, verbose=False,
                                weight_rounding={"frames": count},
                                bias_correction={"frames": min(count, 64)})
            row[f"F={count}"] = accuracy(q, x_test, y_test)
            row[f"s F={count}"] = time.perf_counter() - t0
        q = fixedq.quantize(model, QP4, samples=calib, verbose=False, weight_rounding=False)
        row["nearest"] = accuracy(q, x_test, y_test)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="*", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--frames", nargs="*", type=int, default=[256, 64, 32, 16])
    p.add_argument("--epochs", type=int, default=6)
    args = p.parse_args()
    rows = run(args.archs, args.frames, args.epochs)
    cols = [f"F={c}" for c in args.frames] + ["nearest"]
    print("| model | float | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for r in rows:
        print(f"| {r['model']} | {r['float']:.1f} | "
              + " | ".join(f"{r[c]:.1f}" for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
