"""Study: can training make the TENN bench model's deeper conv inputs >= 90 % zeros (issue 15's
"event mode >= 2x dense on event frames with >= 90 % zeros") at its accuracy?

Run from the repository root: ``python bench/studies/tenn_sparsity_study.py`` (writes
``bench/studies/tenn_sparsity_study.md``; ``--no-write`` prints it only).

Variants of the TENN bench clip model (``bench/common.py``: ``tenn_clip_model``), seed 0:

- ``plain``: 12 epochs, Adam 3e-3 (the bench's and tutorial's recipe);
- ``L1 w from scratch``: the same with ``keras.regularizers.L1(w)`` as activity regularizer
  on the three ReLUs that feed a conv (Keras sums it over the activation);
- ``plain + Hoyer w``: the plain model fine-tuned 6 epochs (Adam 1e-3) with the Hoyer density
  penalty of weight ``w`` on those ReLUs (``bench/common.py``: ``hoyer_density``);
- ``no bias``: the four convs without bias (an all-zero neighbourhood stays zero), 12 epochs;
  ``no bias + Hoyer w``: fine-tuned as above.

Per variant: last-frame accuracy on the 1,000 test clips (float clip model, 8-bit PTQ with 512
calibration clips), each weighted op's input sparsity in the 8-bit engine (64 test clips), the
fraction of all-zero pixel windows of the two buffer convs, and event / dense of ``predict``
(256 clips, batch 64, medians of 5 interleaved runs; outputs asserted equal).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import keras  # noqa: E402
from common import hoyer_density, sparsity_finetune, tenn_clip_model  # noqa: E402

import fixedq  # noqa: E402
import fixedq.engine as fe  # noqa: E402
from fixedq.event_digits import load_event_digits  # noqa: E402
from fixedq.models import predict_clips  # noqa: E402
from fixedq.transforms import to_streaming  # noqa: E402

STEPS, EPOCHS, FINE = 8, 12, 6
OUT = Path(__file__).with_suffix(".md")


def per_frame(y):
    return np.repeat(y[:, None], STEPS, axis=1)


def train(bias=True, l1=None, x=None, y=None):
    keras.utils.set_random_seed(0)
    model = tenn_clip_model(keras, STEPS, bias=bias)
    if l1:
        for name in ("relu1", "relu2", "relu3"):
            model.get_layer(name).activity_regularizer = keras.regularizers.L1(l1)
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, per_frame(y), epochs=EPOCHS, batch_size=64, verbose=0)
    if l1:
        for name in ("relu1", "relu2", "relu3"):
            model.get_layer(name).activity_regularizer = None
    return model


def fine_tuned(base, weight, bias, x, y):
    keras.utils.set_random_seed(0)
    model = tenn_clip_model(keras, STEPS, bias=bias)
    model.set_weights(base.get_weights())
    return sparsity_finetune(keras, model, hoyer_density(keras, weight), x, per_frame(y), FINE)


def zero_windows(engine, clips) -> dict:
    """Fraction of all-zero pixel windows (k frames x channels) per buffer conv."""
    seen: dict = {}
    plan = engine.fast_plan("event")
    for op, st in zip(engine.ops, plan.steps, strict=True):
        if op.kind == "buffer_conv" and hasattr(getattr(st, "inner", None), "window"):
            inner = st.inner
            orig = inner.window

            def rec(win, orig=orig, name=op.name):
                rows = np.moveaxis(win, 1, -2).reshape(-1, win.shape[1] * win.shape[3])
                tot = seen.setdefault(name, [0, 0])
                tot[0] += int(np.count_nonzero(~rows.any(axis=1)))
                tot[1] += rows.shape[0]
                return orig(win)

            inner.window = rec
    engine.predict(clips, 64, mode="event")
    for st in plan.steps:
        if getattr(st, "inner", None) is not None:
            st.inner.__dict__.pop("window", None)  # the method again
    return {k: v[0] / v[1] for k, v in seen.items()}


def measure(tag, model, data):
    xtr, ytr, xte, yte = data
    acc_f = float(np.mean(np.argmax(model.predict(xte, verbose=0)[:, -1], -1) == yte))
    q8 = fixedq.quantize(to_streaming(model), fixedq.QuantizationParams(), samples=xtr[:512],
                         verbose=False)
    out = predict_clips(q8, xte)
    acc8 = float(np.mean(np.argmax(out[:, -1], -1) == yte))
    engine = fe.convert(q8, target="akida-2.0")
    batch = xte[:256]
    assert np.array_equal(engine.predict(batch, 64, mode="event"), out[:256]), tag
    sparsity = {s["name"]: s["sparsity"] for s in engine.event_stats(xte[:64])
                if s["kind"] in ("neural", "buffer_conv")}
    windows = zero_windows(engine, xte[:64])
    times = {"dense": [], "event": []}
    for _ in range(5):
        for mode in times:
            t = time.perf_counter()
            engine.predict(batch, 64, mode=mode)
            times[mode].append(time.perf_counter() - t)
    ratio = float(np.median(times["dense"]) / np.median(times["event"]))
    row = (tag, acc_f, acc8, sparsity, windows, ratio)
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    load0 = os.getloadavg()[0]
    xtr, ytr, xte, yte = data = load_event_digits(steps=STEPS)
    rows = []
    plain = train(x=xtr, y=ytr)
    rows.append(measure("plain", plain, data))
    for l1 in (1e-5, 3e-5):
        rows.append(measure(f"L1 {l1:g} from scratch", train(l1=l1, x=xtr, y=ytr), data))
    for w in (1, 10, 30):
        rows.append(measure(f"plain + Hoyer {w:g}", fine_tuned(plain, w, True, xtr, ytr),
                            data))
    nobias = train(bias=False, x=xtr, y=ytr)
    rows.append(measure("no bias", nobias, data))
    for w in (10, 30):
        rows.append(measure(f"no bias + Hoyer {w:g}", fine_tuned(nobias, w, False, xtr, ytr),
                            data))
    names = ["spatial1", "temporal1", "spatial2", "pleiades"]
    lines = [
        "# TENN sparse-activation study (`bench/studies/tenn_sparsity_study.py`)",
        "",
        __doc__.split("\n\n", 1)[1].split("\n\n", 1)[1].strip(),
        "",
        f"2 shared cores, load average {load0:.1f} / {os.getloadavg()[0]:.1f} at start / end.",
        "",
        "| variant | float | 8-bit | input zeros " + " / ".join(names) + " | all-zero "
        "windows temporal1 / pleiades | event / dense (batch 64) |",
        "|---|---|---|---|---|---|",
    ]
    for tag, af, a8, sp, win, ratio in rows:
        lines.append(f"| {tag} | {af:.3f} | {a8:.3f} | " + " / ".join(
            f"{sp[n]:.2f}" for n in names) + " | " + " / ".join(
            f"{win.get(n, 0.0):.2f}" for n in ("temporal1", "pleiades")) + f" | {ratio:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        OUT.write_text(text)


if __name__ == "__main__":
    main()
