"""Validation study: which QAT recipe (batch size, learning rate) within the 3-epoch budget?

Uses ONLY the 4,000 bench train images (``ptq_bench.load_mnist``), exactly like
``weight_rounding_study.py`` (whose cached float models it reuses): each bench model is trained
on the first 3,000, the last 1,000 are the validation split, calibration = the first 1,024. The
bench's test images are never touched. For each model and seed: 4-bit PTQ with nearest rounding
(the QAT start, docs/calibration.md), then 3 QAT epochs with each recipe ``batch:lr``
(Adam, cosine-decayed to 0 over the 3 epochs, same shuffle seed), validation accuracy after each
epoch.

Result (2026-11-22, seeds 0-2): docs/quantization.md "Quantization-aware training".

Usage::

    python bench/qat_recipe_study.py --seeds 0 1 2 --recipes 32:1e-3 16:1e-3 16:5e-4 \
        --out /tmp/qat_recipe.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import ARCHS, accuracy, load_mnist, qat_per_epoch  # noqa: E402
from weight_rounding_study import N_CALIB, N_FIT, float_model  # noqa: E402


def recipes(spec):
    """``batch:lr`` items -> ``[(name, batch, lr)]``."""
    out = []
    for item in spec:
        batch, _, lr = item.partition(":")
        out.append((item, int(batch), float(lr)))
    return out


def study(name, seed, data, args) -> dict:
    import keras

    import fixedq

    x_fit, y_fit, x_val, y_val = data
    model = float_model(name, seed, data,
                        SimpleNamespace(cache=args.cache, epochs=args.float_epochs))
    row = {"model": name, "seed": seed, "float": accuracy(model, x_val, y_val)}
    qp4 = fixedq.QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4)
    for key, batch, lr in recipes(args.recipes):
        q4 = fixedq.quantize(model, qp4, samples=x_fit[:N_CALIB], verbose=False,
                             weight_rounding=False)
        row.setdefault("ptq_nearest", accuracy(q4, x_val, y_val))
        keras.utils.set_random_seed(seed)  # same shuffle order for every recipe
        t0 = time.perf_counter()
        per_epoch = qat_per_epoch(keras, q4, (x_fit, y_fit), (x_val, y_val), lr, args.epochs,
                                  batch)
        row[key] = per_epoch[-1]
        row[f"{key}_epochs"] = per_epoch
        row[f"{key}_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--recipes", nargs="+", default=["32:1e-3", "16:1e-3", "16:5e-4"],
                        help="batch:learning-rate items")
    parser.add_argument("--epochs", type=int, default=3, help="QAT epochs (target: <= 3)")
    parser.add_argument("--float-epochs", dest="float_epochs", type=int, default=6)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/wr_study"))
    parser.add_argument("--out", type=Path, default=None, help="append JSON rows here")
    args = parser.parse_args(argv)
    x_train, y_train, _, _ = load_mnist()
    data = (x_train[:N_FIT], y_train[:N_FIT], x_train[N_FIT:], y_train[N_FIT:])
    for name in args.models:
        for seed in args.seeds:
            row = study(name, seed, data, args)
            if args.out:
                with open(args.out, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
