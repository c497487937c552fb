"""Validation study: should weight rounding optimization be the default at <= 4-bit weights?

Uses ONLY the 4,000 bench train images (``ptq_bench.load_mnist``): each bench model is trained
on the first 3,000 (same recipe as ``ptq_bench.py``: 6 epochs, batch 64, Adam cosine 2e-3 -> 0),
the last 1,000 are the validation split; calibration = first 1,024 of the 3,000. The bench's
test images are never touched. For each model and seed, on validation: 4-bit PTQ
(``input_weight_bits=8, weight_bits=4, activation_bits=4``, default range alignment / bias
correction) with each ``weight_rounding`` variant, then (``--qat``) 3 QAT epochs from the
nearest-rounding and from the optimized 4-bit models (Adam 1e-3 cosine-decayed to 0, batch 32,
same shuffle order). Optimized models are checked against the integer engine bit for bit.

Trained float models are cached in ``--cache`` (one ``.keras`` per model and seed) so that
variants can be re-run without retraining.

Result (2026-11-22, seeds 0-2): docs/calibration.md "Weight rounding": on by default for PTQ
at <= 4-bit weights; QAT starts better from nearest rounding.

Usage (the runs recorded in the docs; the first also ran ``keep_latent=False`` QAT)::

    python bench/weight_rounding_study.py --seeds 0 1 2 --variants nearest=false wr=true \
        --qat nearest wr --out /tmp/wr_study.jsonl
    python bench/weight_rounding_study.py --seeds 0 1 2 --exact-n 0 --variants nearest=false \
        q='{"target": "quantized", "damp": 0.01}' f='{"damp": 0.01}' l='{"method": "local"}'
    python bench/weight_rounding_study.py --models mobilenet_like --exact-n 0 \
        --variants nobc='{"_kwargs": {"bias_correction": false}}' \
        hist='{"_kwargs": {"calibration": "histogram"}}' --qat nobc hist
    python bench/weight_rounding_study.py --exact-n 300 \
        --variants hist='{"_kwargs": {"calibration": "histogram"}}' \
        histwr='{"_kwargs": {"calibration": "histogram"}, "frames": 256}'

"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (  # noqa: E402
    ARCHS,
    accuracy,
    engine_exact,
    load_mnist,
    qat_per_epoch,
    train_float,
)

N_FIT, N_CALIB = 3000, 1024


def float_model(name, seed, data, args):
    """The float model of ``name``/``seed``, trained once and cached."""
    import keras

    import fixedq

    path = args.cache / f"{name}_s{seed}_e{args.epochs}.keras"
    if path.exists():
        return fixedq.load_model(str(path))
    x_fit, y_fit = data[0], data[1]
    model = train_float(keras, name, x_fit, y_fit, args.epochs, seed)
    args.cache.mkdir(parents=True, exist_ok=True)
    model.save(str(path))
    return model


def variants(spec: str):
    """``name=json`` items of ``--variants`` -> ``{name: weight_rounding argument}``."""
    out = {}
    for item in spec:
        key, _, value = item.partition("=")
        out[key] = json.loads(value) if value else key
    return out


def study(name, seed, data, args) -> dict:
    import keras

    import fixedq

    x_fit, y_fit, x_val, y_val = data
    x_calib = x_fit[:N_CALIB]
    model = float_model(name, seed, data, args)
    row = {"model": name, "seed": seed, "float": accuracy(model, x_val, y_val)}
    ref = np.asarray(model.predict(x_val, batch_size=200, verbose=0), np.float64)
    if args.train_only:
        print(json.dumps(row), flush=True)
        return row
    x_chk = x_val[:args.exact_n]
    qp4 = fixedq.QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4)
    qmodels = {}
    for key, option in variants(args.variants).items():
        t0 = time.perf_counter()
        kwargs = dict(option.pop("_kwargs")) if isinstance(option, dict) and "_kwargs" in option \
            else {}
        if isinstance(option, dict) and not option:
            option = False
        q4 = fixedq.quantize(model, qp4, samples=x_calib, verbose=False,
                             weight_rounding=option, **kwargs)
        row[f"{key}_s"] = round(time.perf_counter() - t0, 2)
        logits = np.asarray(q4.predict(x_val, batch_size=200, verbose=0), np.float64)
        row[key] = 100.0 * float(np.mean(np.argmax(logits, -1) == y_val))
        row[f"{key}_agree"] = 100.0 * float(np.mean(np.argmax(logits, -1)
                                                    == np.argmax(ref, -1)))
        row[f"{key}_snr"] = round(10 * float(np.log10(np.sum(ref**2)
                                                      / np.sum((logits - ref) ** 2))), 2)
        if option is not False and args.exact_n:
            row[f"{key}_engine_diff"] = engine_exact(q4, x_chk)
        qmodels[key] = q4
    if args.qat:
        for key in args.qat:
            q4 = qmodels[key]
            keras.utils.set_random_seed(seed)  # same QAT shuffle order for every variant
            per_epoch = qat_per_epoch(keras, q4, (x_fit, y_fit), (x_val, y_val), args.qat_lr,
                                      args.qat_epochs)
            row[f"qat_{key}"] = per_epoch[-1]
            row[f"qat_{key}_epochs"] = per_epoch
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--variants", nargs="+", default=["nearest=false", "wr=true"],
                        help="name=JSON weight_rounding argument, e.g. 'wr=true'; a dict "
                             "may carry other quantize arguments under '_kwargs' "
                             "({'_kwargs': {...}} alone: nearest rounding)")
    parser.add_argument("--qat", nargs="*", default=[],
                        help="variant names to fine-tune with the QAT recipe")
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--qat-lr", type=float, default=1e-3)
    parser.add_argument("--exact-n", type=int, default=500,
                        help="validation images checked engine vs Keras (0: skip)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/wr_study"))
    parser.add_argument("--train-only", action="store_true")
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
