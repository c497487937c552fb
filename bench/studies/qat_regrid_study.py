"""Study (issue 18.2): should QAT choose the activation grids again from the trained weights?

QAT trains kernels and biases; every activation keeps the power-of-two grid (``frac_bits``)
calibration gave it, and 4-bit activations are what holds 4-bit QAT back
(docs/quantization.md, "the activation grids QAT starts from"). Learned step sizes (LSQ)
cannot be arbitrary reals between our layers (tensors are on-grid ``v · 2^-f``), so the
"frac_bits-adapting" form of LSQ the issue asks about is: re-choose each grid, in steps of 2x,
for the weights QAT has trained so far. This study measures a coarse version of
it before building anything: run ``fixedq.qat`` for 2 epochs, write the trained kernels and
biases back into the (sanitized, BatchNorm-folded) float model, quantize that again with the
default calibration (``mse`` at 4 bits: every grid re-chosen from the trained weights; no bias
correction and no range alignment: the start's are already in the weights and biases written
back) and run ``fixedq.qat`` for the third epoch; against the plain 3-epoch ``fixedq.qat``.
Both with the float model as teacher and the other defaults. Control: the start's own weights
written back and given new grids the same way, before any training (what the write-back and
the new grids alone cost).

Data and models as the QAT bench (``bench/common.py``: the cached floats, 3,400 training / 600
validation digits, 4-bit weights and activations with an 8-bit first layer, nearest
rounding). **Validation accuracy only**: the test digits are not loaded.

Usage::

    python bench/studies/qat_regrid_study.py --seeds 0 1 --out bench/results/qat_regrid_study.jsonl
    python bench/studies/qat_regrid_study.py --render bench/results/qat_regrid_study.jsonl
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
    N_CALIB,
    accuracy_metric,
    add_study_arguments,
    load_train_digits,
    paired_summary,
    qat_models,
    qat_start,
    study_main,
)

REPORT = Path(__file__).with_suffix(".md")


def trained_float(keras, qmodel, sanitized):
    """A copy of the sanitized float model with ``qmodel``'s trained kernels and biases (the
    layers keep their names through quantize; the integer ``kernel_offset`` of weight
    rounding is zero under the nearest rounding of this start)."""
    model = keras.models.clone_model(sanitized)
    model.set_weights(sanitized.get_weights())
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        # a SeparableConv2D is quantized as "<name>_dw" (depthwise) + "<name>" (pointwise)
        parts = [n for n in (f"{layer.name}_dw", layer.name)
                 if n in {q.name for q in qmodel.layers}]
        trained = [v.numpy() for n in parts for v in qmodel.get_layer(n).trainable_weights]
        if [w.shape for w in trained] != [w.shape for w in weights]:
            raise RuntimeError(f"layer {layer.name!r}: quantized weights {trained!r:.60} do "
                               "not match the float layer's")
        layer.set_weights(trained)
    return model


def regrid(fixedq, trained, qp4, x_fit):
    """``trained`` (float weights from a quantized model) quantized again with new grids
    only: the default calibration (``mse`` at 4 bits), no range alignment and no bias
    correction (the start's are already in the weights and biases written back; applying
    them again measured worse in the control)."""
    return fixedq.quantize(trained, qp4, samples=x_fit[:N_CALIB], verbose=False,
                           weight_rounding=False, bias_correction=False,
                           range_alignment=False)


def run(name: str, seed: int, data) -> dict:
    import keras

    import fixedq

    qp4 = fixedq.QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4)
    model, q4, fit, val, _, _ = qat_start(keras, fixedq, name, *data, seed)
    acc = accuracy_metric(*val)
    sanitized, _ = fixedq.sanitize(model)
    row = {"model": name, "seed": seed, "float_val": acc(model), "ptq_val": acc(q4),
           # control: the start's own weights written back and given new grids
           "control_val": acc(regrid(fixedq, trained_float(keras, q4, sanitized), qp4,
                                     fit[0]))}
    t0 = time.perf_counter()
    plain, _ = fixedq.qat(q4, fit, val, epochs=3, teacher=model, seed=seed, verbose=False)
    row["qat3_val"], row["qat3_s"] = acc(plain), round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    first, _ = fixedq.qat(q4, fit, val, epochs=2, teacher=model, seed=seed, verbose=False)
    row["qat2_val"] = acc(first)
    regridded = regrid(fixedq, trained_float(keras, first, sanitized), qp4, fit[0])
    row["regrid_ptq_val"] = acc(regridded)
    last, _ = fixedq.qat(regridded, fit, val, epochs=1, teacher=model, seed=seed,
                         verbose=False)
    row["regrid_val"], row["regrid_s"] = acc(last), round(time.perf_counter() - t0, 1)
    return row


def render(rows: list[dict]) -> str:
    lines = ["# Re-choosing activation grids during QAT (`bench/studies/qat_regrid_study.py`)",
             "", __doc__.split("Usage::")[0].split("\n\n", 1)[1].strip(), "",
             f"Rendered {datetime.date.today().isoformat()}; {len(rows)} runs. Validation "
             "accuracy (%): `qat` 3 epochs; `2 epochs` the first call of the other arm; "
             "`re-gridded` its trained weights quantized again (new grids), `+1 epoch` the "
             "arm's result.", "",
             "| model | seed | float | 4-bit PTQ | control | `qat` 3 epochs | 2 epochs | "
             "re-gridded | +1 epoch | re-grid − `qat` |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['seed']} | {r['float_val']:.1f} | "
                     f"{r['ptq_val']:.1f} | {r['control_val']:.1f} | {r['qat3_val']:.1f} | "
                     f"{r['qat2_val']:.1f} | "
                     f"{r['regrid_ptq_val']:.1f} | {r['regrid_val']:.1f} | "
                     f"{r['regrid_val'] - r['qat3_val']:+.1f} |")
    if rows:
        lines += ["", paired_summary((r["regrid_val"] - r["qat3_val"] for r in rows),
                                     "Re-gridded minus plain `qat`")]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--models", nargs="+", default=qat_models())
    add_study_arguments(parser)
    args = parser.parse_args(argv)

    def produce():
        data = load_train_digits()
        for seed in args.seeds:
            for name in args.models:
                yield run(name, seed, data)

    return study_main(args, produce, render, REPORT)


if __name__ == "__main__":
    sys.exit(main())
