"""Validation study: should ``asymmetric_activations`` be the default at <= 4-bit per-axis?

Uses ONLY the 4,000 bench train images (``ptq_bench.load_mnist``): each bench model is trained
on the first 3,000 (same recipe as ``ptq_bench.py``: 6 epochs, batch 64, Adam cosine 2e-3 -> 0),
the last 1,000 are the validation split; calibration = first 1,024 of the 3,000. The bench's
test images are never touched. For each model and seed, on validation: 8-bit PTQ and 4-bit PTQ
(``input_weight_bits=8, weight_bits=4, activation_bits=4``, default range alignment / bias
correction) with ``asymmetric_activations`` False vs True, then 3 QAT epochs from each 4-bit
model (Adam 1e-3 cosine-decayed to 0, batch 32). Asymmetric models are also checked against
the integer engine bit for bit.

Result (2026-11-22, seeds 0-1; mobilenet_like also 2-3): docs/accuracy.md section 3c;
asymmetric activations stay an option, not the default.

Usage::

    python bench/asym_default_study.py --seeds 0 1 --out /tmp/asym_study.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import ARCHS, accuracy, engine_exact, load_mnist, qat_per_epoch, train_float  # noqa: E402

N_FIT, N_CALIB = 3000, 1024


def study(name, seed, data, args) -> dict:
    import keras

    import fixedq

    x_fit, y_fit, x_val, y_val = data
    x_calib = x_fit[:N_CALIB]
    model = train_float(keras, name, x_fit, y_fit, args.epochs, seed)
    row = {"model": name, "seed": seed, "float": accuracy(model, x_val, y_val)}
    x_chk = x_val[:args.exact_n]
    for mode, asym in (("sym", False), ("asym", True)):
        t0 = time.perf_counter()
        q8 = fixedq.quantize(model, fixedq.QuantizationParams(asymmetric_activations=asym),
                             samples=x_calib, verbose=False)
        row[f"q8_{mode}"] = accuracy(q8, x_val, y_val)
        qp4 = fixedq.QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4,
                                        asymmetric_activations=asym)
        q4 = fixedq.quantize(model, qp4, samples=x_calib, verbose=False)
        row[f"q4_{mode}"] = accuracy(q4, x_val, y_val)
        if asym:
            row["asym_tensors_q4"] = sum(
                1 for layer in q4.layers
                if getattr(layer, "output_spec", None) is not None and layer.output_spec.lo)
            row["engine_diff_q8"] = engine_exact(q8, x_chk)
            row["engine_diff_q4"] = engine_exact(q4, x_chk)
        keras.utils.set_random_seed(seed)   # same QAT shuffle order for sym and asym
        per_epoch = qat_per_epoch(keras, q4, (x_fit, y_fit), (x_val, y_val), args.qat_lr,
                                  args.qat_epochs)
        row[f"qat_{mode}"] = per_epoch[-1]
        row[f"qat_{mode}_epochs"] = per_epoch
        if asym:
            row["engine_diff_qat"] = engine_exact(q4, x_chk)
        row[f"{mode}_s"] = time.perf_counter() - t0
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--models", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--qat-lr", type=float, default=1e-3)
    parser.add_argument("--exact-n", type=int, default=1000,
                        help="validation images checked engine vs Keras")
    parser.add_argument("--out", type=Path, help="append JSON rows to this file")
    args = parser.parse_args(argv)
    x_train, y_train, _, _ = load_mnist()           # the test split is never used
    data = (x_train[:N_FIT], y_train[:N_FIT], x_train[N_FIT:], y_train[N_FIT:])
    for seed in args.seeds:
        for name in args.models:
            row = study(name, seed, data, args)
            if args.out:
                with args.out.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
