"""onnxruntime running the exported engine program vs the integer engine (issue 16.1).

Run from the repository root: ``python bench/onnx_bench.py`` (writes the ``onnx`` section of
docs/benchmarks.md); ``--no-write`` prints it only; ``--repeats N`` sets the repeats.

The engine bench CNN (``common.engine_cnn``: 28x28x1 -> Conv 32 -> pool -> Conv 64 -> pool
-> Conv 64 -> GAP -> Dense 10) at 8-bit per-axis and 4-bit per-tensor is quantized, converted
and exported with :func:`fixedq.interop.to_onnx`; onnxruntime's outputs are asserted equal to
the engine's on every element (float32 and int64 outputs) before timing. Throughput of
``engine.predict`` and ``InferenceSession.run`` at batch 100 and batch 1 (a run of batch 1 is
``SINGLES`` single-image calls), medians of interleaved runs in one process, each after a short
pause (``common.interleaved_medians``).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from common import (  # noqa: E402
    ENGINE_BATCH,
    blas_one_thread,
    engine_cnn,
    engine_configs,
    interleaved_medians,
)
from md_section import replace_section  # noqa: E402

import fixedq  # noqa: E402
import fixedq.engine as fe  # noqa: E402
from fixedq.interop import to_onnx  # noqa: E402

DOC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks.md")
START, END = "<!-- onnx:start -->", "<!-- onnx:end -->"
SINGLES = 20
BATCH = ENGINE_BATCH


def session(proto):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def rows(repeats, rng):
    x = rng.uniform(0, 1, size=(BATCH, 28, 28, 1)).astype("float32")
    model = engine_cnn(keras)
    out = []
    for label, qp in engine_configs():
        e = fe.convert(fixedq.quantize(model, qp, samples=x, verbose=False))
        proto = to_onnx(e)
        s = session(proto)
        for output in ("float", "int"):  # exact on every element before timing
            got = session(to_onnx(e, output)).run(None, {"input": x})[0]
            assert np.array_equal(got, e.predict(x, output=output, batch_size=BATCH))
        ones = [x[i:i + 1] for i in range(SINGLES)]
        t = interleaved_medians({
            "engine": lambda: e.predict(x, batch_size=BATCH),  # noqa: B023
            "ort": lambda: s.run(None, {"input": x}),  # noqa: B023
            "engine1": lambda: [e.predict(v) for v in ones],  # noqa: B023
            "ort1": lambda: [s.run(None, {"input": v}) for v in ones],  # noqa: B023
        }, repeats)
        one = None
        limit = blas_one_thread()
        if limit is not None:  # OpenBLAS threads on tiny GEMMs stall under load: one thread
            with limit:
                one = SINGLES / interleaved_medians(
                    {"engine1": lambda: [e.predict(v) for v in ones]}, repeats)["engine1"]  # noqa: B023
        out.append({"model": label, "nodes": len(proto.graph.node),
                    "engine": BATCH / t["engine"], "ort": BATCH / t["ort"],
                    "engine1": SINGLES / t["engine1"], "ort1": SINGLES / t["ort1"],
                    "engine1_1t": one})
    return out


def section(rs, repeats, load) -> str:
    lines = ["## ONNX export: onnxruntime vs the engine (`bench/onnx_bench.py`, issue 16)", "",
             f"onnxruntime {ort.__version__} (CPU provider, default threads) running the "
             "program written by `fixedq.interop.to_onnx` vs `engine.predict` (dense path), "
             "engine bench CNN, 2 shared cores; outputs asserted equal on every element (float32 "
             f"and int64) first. Medians of {repeats} interleaved runs; batch 1 = {SINGLES} "
             f"single-image calls per run. Load average (1 min) at start / end: {load[0]:.1f} / "
             f"{load[1]:.1f}.", "",
             f"| model | ONNX nodes | engine, batch {BATCH} (img/s) | onnxruntime, batch {BATCH} "
             "| ort/engine | engine, batch 1 (img/s) | engine, batch 1, BLAS 1 thread | "
             "onnxruntime, batch 1 | ort/engine (1 thread) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rs:
        one = r["engine1_1t"]
        lines.append(f"| {r['model']} | {r['nodes']} | {r['engine']:.0f} | {r['ort']:.0f} | "
                     f"{r['ort'] / r['engine']:.2f}× | {r['engine1']:.0f} | "
                     + ("n/a" if one is None else f"{one:.0f}") + f" | {r['ort1']:.0f} | "
                     + ("n/a" if one is None else f"{r['ort1'] / one:.2f}×") + " |")
    lines += ["", "At batch 1 the engine's time goes to OpenBLAS: its worker threads on tiny "
              "GEMMs stall on a loaded 2-core machine (one single-image predict measured "
              "~150 ms with default threads vs ~1.5 ms with one BLAS thread); the one-thread "
              "column is the engine's fair batch-1 figure. onnxruntime uses its own thread "
              "pool."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    load0 = os.getloadavg()[0]
    rs = rows(args.repeats, np.random.default_rng(0))
    text = section(rs, args.repeats, (load0, os.getloadavg()[0]))
    print(text)
    if not args.no_write:
        replace_section(DOC, START, END, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
