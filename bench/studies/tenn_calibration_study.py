"""Study (issue 15): which calibration method should the 4-bit TENN streaming models get?

Since quantize's default became ``mse`` for tensors of 4 bits or less (``auto_method``,
bench/studies/act4_calibration_study.md, measured on the five CNNs of the QAT bench), the tenn
bench's 4-bit numbers went down (docs/benchmarks.md "tenn": PTQ plain 0.731 -> 0.717, sparse
0.518 -> 0.469; after 3 QAT epochs plain 0.809 -> 0.805, sparse 0.769 -> 0.747). The TENN
clip models were not in that study. This one asks, on **validation clips only** (the last
``N_VAL`` of the 4,000 training clips; the float models train on the rest; the 1,000 test
clips are not loaded), whether ``max``, ``mse`` or the default is the better 4-bit start for
them, before and after the bench's QAT (the quantized streaming model unrolled over the clips,
Adam 3e-4, 3 epochs, batch 64, labels at every frame).

Models, per seed: **plain** (``bench/common.py``: ``tenn_clip_model``, 12 epochs Adam 3e-3,
the tutorial's recipe) and **sparse** (plain fine-tuned 6 epochs with the Hoyer density
penalty of weight 10 on the three ReLUs that feed a conv, as in the tenn bench). 4-bit weights
and activations, 8-bit first layer, 512 calibration clips. Accuracy: the last frame's
prediction.

Usage::

    python bench/studies/tenn_calibration_study.py --seeds 0 1 \\
        --out bench/results/tenn_calibration_study.jsonl
    python bench/studies/tenn_calibration_study.py \\
        --render bench/results/tenn_calibration_study.jsonl
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
from common import (  # noqa: E402
    add_study_arguments,
    hoyer_density,
    sparsity_finetune,
    study_main,
    tenn_clip_model,
)

REPORT = Path(__file__).with_suffix(".md")
STEPS, EPOCHS, SPARSE_EPOCHS, SPARSITY, QAT_EPOCHS = 8, 12, 6, 10.0, 3
N_VAL, N_CALIB = 800, 512
METHODS = {"max": "max", "mse": "mse", "default": None}


def last_frame_accuracy(outputs, labels) -> float:
    return 100.0 * float(np.mean(np.argmax(outputs[:, -1], -1) == labels))


def run(seed: int) -> list[dict]:
    import keras

    import fixedq
    from fixedq.event_digits import load_event_digits
    from fixedq.models import predict_clips, unroll_clips
    from fixedq.transforms import to_streaming

    keras.utils.set_random_seed(seed)
    x, y, _, _ = load_event_digits(steps=STEPS)  # the test clips are dropped unread
    fit, val = (x[:-N_VAL], y[:-N_VAL]), (x[-N_VAL:], y[-N_VAL:])

    def per_frame(labels):
        return np.repeat(labels[:, None], STEPS, axis=1)

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    plain = tenn_clip_model(keras, STEPS)
    plain.compile(keras.optimizers.Adam(3e-3), loss)
    plain.fit(fit[0], per_frame(fit[1]), epochs=EPOCHS, batch_size=64, verbose=0)
    sparse = tenn_clip_model(keras, STEPS)
    sparse.set_weights(plain.get_weights())
    sparse = sparsity_finetune(keras, sparse, hoyer_density(keras, SPARSITY), fit[0],
                               per_frame(fit[1]), SPARSE_EPOCHS)
    qp4 = fixedq.QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4)
    rows = []
    for tag, clip in (("plain", plain), ("sparse", sparse)):
        stream = to_streaming(clip)
        acc_float = last_frame_accuracy(clip.predict(val[0], verbose=0), val[1])
        weights = stream.get_weights()
        for arm, method in METHODS.items():
            t0 = time.perf_counter()
            keras.utils.set_random_seed(seed)
            stream.set_weights(weights)
            q4 = fixedq.quantize(stream, qp4, samples=fit[0][:N_CALIB], verbose=False,
                                 calibration=method)
            ptq = last_frame_accuracy(predict_clips(q4, val[0]), val[1])
            trainer = unroll_clips(q4, STEPS)
            trainer.compile(keras.optimizers.Adam(3e-4), loss)
            trainer.fit(fit[0], per_frame(fit[1]), epochs=QAT_EPOCHS, batch_size=64, verbose=0)
            qat = last_frame_accuracy(predict_clips(q4, val[0]), val[1])
            row = {"model": tag, "seed": seed, "method": arm, "float_val": acc_float,
                   "ptq_val": ptq, "qat_val": qat, "seconds": round(time.perf_counter() - t0, 1)}
            rows.append(row)
    return rows


def render(rows: list[dict]) -> str:
    arms = list(METHODS)
    lines = ["# TENN 4-bit calibration study (`bench/studies/tenn_calibration_study.py`)", "",
             __doc__.split("Usage::")[0].split("\n\n", 1)[1].strip(), "",
             f"Rendered {datetime.date.today().isoformat()}; {len(rows)} rows. Validation "
             "accuracy (%) of the last frame; `ptq` = the 4-bit start, `qat` = after the "
             "bench's 3 QAT epochs; differences from the float clip model.", "",
             "| model | seed | float | " + " | ".join(f"{a} ptq | {a} qat" for a in arms) + " |",
             "|---|---|---|" + "---|---|" * len(arms)]
    keyed = {(r["model"], r["seed"], r["method"]): r for r in rows}
    cases = sorted({(r["model"], r["seed"]) for r in rows})
    for model, seed in cases:
        got = [keyed.get((model, seed, a)) for a in arms]
        base = next(r for r in got if r)["float_val"]
        cells = []
        for r in got:
            cells += (["—", "—"] if r is None else
                      [f"{r['ptq_val']:.1f} ({r['ptq_val'] - base:+.1f})",
                       f"{r['qat_val']:.1f} ({r['qat_val'] - base:+.1f})"])
        lines.append(f"| {model} | {seed} | {base:.1f} | " + " | ".join(cells) + " |")
    lines += ["", "Means over the rows of each arm (ptq − float, qat − float):", ""]
    for arm in arms:
        sel = [r for r in rows if r["method"] == arm]
        if sel:
            ptq = statistics.mean(r["ptq_val"] - r["float_val"] for r in sel)
            qat = statistics.mean(r["qat_val"] - r["float_val"] for r in sel)
            lines.append(f"- {arm}: PTQ {ptq:+.2f}, QAT {qat:+.2f} ({len(sel)} runs)")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    add_study_arguments(parser)
    args = parser.parse_args(argv)

    def produce():
        for seed in args.seeds:
            yield from run(seed)

    return study_main(args, produce, render, REPORT)


if __name__ == "__main__":
    sys.exit(main())
