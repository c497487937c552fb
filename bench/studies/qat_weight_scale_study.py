"""Study (issue 18.3): how much could a learned 4-bit weight step size (LSQ-style) buy?

A quantized neural layer's weight step is ``s = max|w| / qmax`` per output channel (eq. 14),
recomputed from its float kernel at every call. An LSQ-style learned step ``s' = c s`` with
``c < 1`` clips the largest weights to ``±qmax`` and rounds all the others on a finer grid.
Clipping the float kernel itself at ``c max|w|`` gives exactly that quantization (the layer
then computes ``s' = c max|w| / qmax``), so the headroom of a learned step can be measured
without a new variable: per 4-bit layer and output channel, the ``c`` in [0.30, 1.00] that
minimizes the weight quantization error ``||w - s' clip(round(w / s'), -qmax, qmax)||^2``
(the best a step learned toward weight fidelity reaches), applied to the 4-bit PTQ start of
``bench/qat_bench.py`` (nearest rounding). Validation images only (the 600 held out from float
training; the test images are not loaded).

Usage::

    python bench/studies/qat_weight_scale_study.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import numpy as np  # noqa: E402
from common import load_mnist, qat_models, qat_start  # noqa: E402

REPORT = Path(__file__).with_suffix(".md")
MODELS = qat_models()
N_VAL, FLOAT_EPOCHS = 600, 20
FACTORS = np.round(np.arange(0.30, 1.0001, 0.02), 2)


def _round_half_up(v: np.ndarray) -> np.ndarray:
    return np.floor(v + 0.5)


def best_clip(kernel: np.ndarray, axes: tuple[int, ...], qmax: int) -> tuple[np.ndarray, float]:
    """Per-channel clip factor minimizing the quantization error, and the error ratio
    (best / max-scale) summed over the layer."""
    k = kernel.astype("float64")
    maxabs = np.max(np.abs(k), axis=axes, keepdims=True)
    maxabs = np.where(maxabs > 0, maxabs, 1.0)
    errors = []
    for c in FACTORS:
        s = c * maxabs / qmax
        q = s * np.clip(_round_half_up(k / s), -qmax, qmax)
        errors.append(np.sum((k - q) ** 2, axis=axes, keepdims=True))
    errors = np.stack(errors)  # (factors, 1.., channels)
    best = FACTORS[np.argmin(errors, axis=0)].reshape(maxabs.shape)
    ratio = float(np.sum(np.min(errors, axis=0)) / max(np.sum(errors[-1]), 1e-300))
    return best, ratio


def _axes(layer, kernel: np.ndarray) -> tuple[int, ...]:
    """The layer's per-output-channel scale axes (depthwise: per input channel and multiplier),
    checked against the layer's own nearest rounding."""
    axes = ((0, 1, 3) if "Depthwise" in type(layer).__name__ and kernel.ndim == 4
            else tuple(range(kernel.ndim - 1)))
    maxabs = np.max(np.abs(kernel.astype("float64")), axis=axes, keepdims=True)
    s = np.where(maxabs > 0, maxabs, 1.0) / 7
    mine = np.clip(_round_half_up(kernel.astype("float64") / s), -7, 7)
    if not np.array_equal(mine, layer.nearest_integer_kernel()):
        raise AssertionError(f"{layer.name}: scale axes {axes} do not reproduce the layer's w_q")
    return axes


def study(name: str, seed: int, data) -> dict:
    import keras

    import fixedq

    model, q4, fit, val, _, _ = qat_start(keras, fixedq, name, *data, seed, n_val=N_VAL,
                                float_epochs=FLOAT_EPOCHS)
    start = _acc(q4, *val)
    ratios, factors, layers = [], [], 0
    for layer in q4.layers:
        if getattr(layer, "qmax", None) != 7 or getattr(layer, "kernel_unit", None) is not None:
            continue
        kernel = np.asarray(keras.ops.convert_to_numpy(layer.kernel))
        axes = _axes(layer, kernel)
        c, ratio = best_clip(kernel, axes, 7)
        maxabs = np.max(np.abs(kernel), axis=axes, keepdims=True)
        layer.kernel.assign(np.clip(kernel, -c * maxabs, c * maxabs).astype(kernel.dtype))
        ratios.append(ratio)
        factors.extend(c.ravel().tolist())
        layers += 1
    row = {"model": name, "seed": seed, "layers": layers, "ptq_val": start,
           "clipped_val": _acc(q4, *val), "error_ratio": statistics.mean(ratios),
           "factor_median": float(np.median(factors))}
    print(json.dumps(row), flush=True)
    return row


def _acc(model, x, y) -> float:
    return 100.0 * float(np.mean(np.argmax(model.predict(x, batch_size=200, verbose=0), -1) == y))


def render(rows: list[dict]) -> str:
    lines = [
        "# 4-bit weight step size headroom (`bench/studies/qat_weight_scale_study.py`)",
        "",
        "Validation images only (600 digits held out from float training). 4-bit PTQ start of "
        "`bench/qat_bench.py` (8-bit first layer, nearest rounding); per 4-bit layer and output "
        "channel the step `c max|w| / 7` with the `c` in [0.30, 1.00] that minimizes the weight "
        "quantization error, applied by clipping the float kernel (the same integers a learned "
        "step would give). Error ratio: weight quantization error with the best `c` / with "
        "`c = 1`, mean over layers. Generated "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
        "| model | seed | 4-bit layers | error ratio | median c | PTQ val % | best-step PTQ "
        "val % | change |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['seed']} | {r['layers']} | {r['error_ratio']:.2f} | "
                     f"{r['factor_median']:.2f} | {r['ptq_val']:.1f} | {r['clipped_val']:.1f} | "
                     f"{r['clipped_val'] - r['ptq_val']:+.1f} |")
    gain = [r["clipped_val"] - r["ptq_val"] for r in rows]
    lines += ["", f"Mean change {statistics.mean(gain):+.2f} points over {len(rows)} runs; "
              f"better in {sum(g > 0 for g in gain)}, worse in {sum(g < 0 for g in gain)}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--no-write", dest="write", action="store_false")
    args = parser.parse_args(argv)
    x, y, _, _ = load_mnist()
    rows = [study(name, seed, (x, y)) for seed in args.seeds for name in args.models]
    text = render(rows)
    print(text)
    if args.write:
        REPORT.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
