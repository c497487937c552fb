"""Study: the integer state width of ``QuantizedStatefulRecurrent`` (q-config key
``state_bits``) vs the float recurrence, to choose its default.

Run from the repository root: ``python bench/studies/state_bits_study.py`` (writes the
``state-bits`` section of docs/benchmarks.md; ``--no-write`` prints it only).

Model: frames (4, 4, 2) -> Conv2D(8, 1) -> StatefulRecurrent (8 channels, eigenvalues of
modulus 0.5 .. 0.995 at random phases: memories of 2 to 200 frames) -> Dense(4) per pixel,
quantized at 8 bits (calibrated on 64 clips) with ``state_bits`` overridden; 64 test clips of
64 frames (Gaussian frames). Measured: the SNR (dB) of the model's output against the float
model over every frame; the engine is asserted bit-exact with the quantized Keras model.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import keras  # noqa: E402
from md_section import replace_section  # noqa: E402

import fixedq  # noqa: E402
import fixedq.engine as fe  # noqa: E402
from fixedq.layers.temporal import StatefulRecurrent  # noqa: E402
from fixedq.models import predict_clips  # noqa: E402

DOC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs",
                   "benchmarks.md")
BITS = (8, 10, 12, 14, 16, 20, 24)


def model(rng):
    x = keras.Input((4, 4, 2))
    y = keras.layers.Conv2D(8, 1, name="proj")(x)
    rec = StatefulRecurrent(name="ssm")
    out = keras.layers.Dense(4, name="head")(rec(y))
    m = keras.Model(x, out)
    mod = np.linspace(0.5, 0.995, 8)
    phase = rng.uniform(0, np.pi, 8)
    rec.set_weights([(mod * np.cos(phase)).astype("float32"),
                     (mod * np.sin(phase)).astype("float32")])
    return m


def snr(ref, got) -> float:
    noise = np.mean((got - ref) ** 2)
    return float(10 * np.log10(np.mean(ref**2) / noise)) if noise else float("inf")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    m = model(rng)
    calib = rng.normal(size=(64, 64, 4, 4, 2)).astype("float32")
    test = rng.normal(size=(64, 64, 4, 4, 2)).astype("float32")
    ref = predict_clips(m, test)
    rows = []
    for bits in BITS:
        q = fixedq.quantize(m, samples=calib, verbose=False,
                            overrides={"ssm": {"state_bits": bits}})
        got = predict_clips(q, test)
        assert np.array_equal(fe.convert(q).predict(test), got), bits
        rows.append((bits, snr(ref, got)))
    lines = ["## StatefulRecurrent state width (`bench/studies/state_bits_study.py`)", "",
             "Frames (4, 4, 2) -> Conv2D(8, 1) -> StatefulRecurrent (eigenvalue moduli 0.5 .. "
             "0.995, random phases) -> Dense(4) per pixel, 8-bit PTQ with the q-config key "
             "`state_bits` overridden; 64 Gaussian clips of 64 frames. SNR against the float "
             "model over every frame (higher is better); every engine output asserted equal to "
             "the quantized Keras model.", "",
             "| state_bits | output SNR (dB) |",
             "|---|---|"]
    lines += [f"| {b} | {r:.1f} |" for b, r in rows]
    best = max(r for _, r in rows)
    at16 = next(r for b, r in rows if b == 16)
    plateau = min(b for b, r in rows if r >= best - 0.1)
    lines += ["", f"The 8-bit activations cap the SNR at about {best:.1f} dB. The narrowest "
              f"state within 0.1 dB of it: {plateau} bits; the default, 16 bits "
              f"({at16:.1f} dB), keeps {16 - plateau} more bits for eigenvalues closer to the "
              "unit circle than 0.995 (a state's rounding errors add up over about 1/(1-|a|) "
              "frames) and still fits an int16 per value."]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        replace_section(DOC, "<!-- state-bits:start -->", "<!-- state-bits:end -->", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
