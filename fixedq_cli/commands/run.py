"""``fixedq run``: run an integer engine model (.fqe) on samples, without TensorFlow.

Example:
    $ fixedq run -m digits.fqe -sa test.npz
    1797 samples, 10 classes (output 'fc')
    ...
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from fixedq.io import read_labelled_samples, read_labels, read_samples
from fixedq_cli import _args

HELP = "run an engine model (.fqe) on samples with the integer engine (no TensorFlow)"
DESCRIPTION = """\
Run an engine model written by 'fixedq convert' on samples and summarize its predictions.

Samples: a .npz file (its array 'x' if present, else all its arrays except 'y', concatenated)
or one .npy array. Labels (for accuracy): --labels LABELS.npy, else the .npz array 'y' if
present; integer class ids, or one-hot rows. Both are checked (see docs/cli.md, input
files). TensorFlow is never imported.

examples:
  fixedq run -m model.fqe -sa test.npz
  fixedq run -m model.fqe -sa x.npy --labels y.npy -bs 256 --events
  fixedq run -m model.fqe -sa test.npz --profile
  fixedq run -m model.fqe -sa test.npz --json
  fixedq run -m stream.fqe -sa clips.npz --frames all    (streaming model, clips (N, T, ...))"""

SHOW_PREDICTIONS = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", required=True, metavar="ENGINE_MODEL",
                        help="engine model file (.fqe, written by 'fixedq convert')")
    parser.add_argument("-sa", "--samples", required=True, metavar="SAMPLES.npz",
                        help="input samples (.npz or .npy), shaped (N, *input_shape)")
    parser.add_argument("-bs", "--batch_size", type=_args.positive_int, default=32,
                        metavar="N", help="samples per batch (default 32)")
    parser.add_argument("--labels", metavar="LABELS.npy",
                        help="class labels for accuracy (default: the .npz array 'y')")
    parser.add_argument("--events", action="store_true",
                        help="also report per-op event statistics (events, sparsity, synops)")
    parser.add_argument("--profile", action="store_true",
                        help="also print the per-op time breakdown (a second, timed pass)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of text")
    parser.add_argument("--frames", choices=("last", "all"), default="last",
                        help="streaming models, samples as clips (N, T, *frame): report the "
                             "last frame's outputs of each clip (default) or every frame's")


def _predicted_classes(y: np.ndarray) -> np.ndarray:
    flat = y.reshape(y.shape[0], -1)
    if flat.shape[1] == 1:  # one logit: binary decision at 0
        return (flat[:, 0] > 0).astype(np.int64)
    return flat.argmax(axis=1)


def run(args) -> int:
    import fixedq.engine
    from fixedq.engine.events import format_stats
    from fixedq.engine.profile import format_profile
    from fixedq.engine.streaming import StreamingModel

    if args.labels:
        x = read_samples(args.samples)
        labels = read_labels(args.labels, len(x))
    else:
        x, labels = read_labelled_samples(args.samples)
    model = fixedq.engine.load(args.model)
    streaming = isinstance(model, StreamingModel)
    if not streaming and args.frames == "all":
        raise ValueError(f"--frames all needs a streaming model (with FIFO/recurrent state); "
                         f"{args.model!r} has none")
    outputs = model.predict(x, batch_size=args.batch_size)
    if isinstance(outputs, list):
        outputs = outputs[0]
    per_frame = None
    if streaming and x.ndim == len(model.input_shape) + 1:  # clips: outputs (N, T, ...)
        per_frame, outputs = outputs, outputs[:, -1]
    output_name = model.outputs[0]["name"]
    pred = _predicted_classes(outputs)
    classes, counts = np.unique(pred, return_counts=True)
    report = {"model": str(args.model), "samples": int(x.shape[0]), "output": output_name,
              "output_shape": [int(d) for d in outputs.shape[1:]],
              "predictions": pred.tolist(),
              "histogram": {str(int(c)): int(k) for c, k in zip(classes, counts, strict=True)}}
    if labels is not None:
        report["accuracy"] = float(np.mean(pred == labels))
    if per_frame is not None:
        frame_pred = np.stack([_predicted_classes(per_frame[:, t])
                               for t in range(per_frame.shape[1])], axis=1)
        report["frames"] = int(per_frame.shape[1])
        if args.frames == "all":
            report["frame_predictions"] = frame_pred.tolist()
            if labels is not None:
                report["frame_accuracy"] = [float(np.mean(frame_pred[:, t] == labels))
                                            for t in range(frame_pred.shape[1])]
    if args.events:
        report["events"] = model.event_stats(x, batch_size=args.batch_size)
    if args.profile:
        report["profile"] = model.profile(x, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['samples']} samples, output {output_name!r} of shape "
          f"{tuple(report['output_shape'])}")
    if per_frame is not None:
        print(f"streaming: {report['samples']} clips of {report['frames']} frames, each from a "
              f"clean state; results of the last frame")
    shown = " ".join(str(p) for p in pred[:SHOW_PREDICTIONS])
    more = " ..." if len(pred) > SHOW_PREDICTIONS else ""
    print(f"predicted classes: {shown}{more}")
    print("class histogram: " + ", ".join(f"{c}: {k}" for c, k in report["histogram"].items()))
    if labels is not None:
        correct = int(np.sum(pred == labels))
        print(f"accuracy: {report['accuracy']:.4f} ({correct}/{len(labels)})")
    if "frame_predictions" in report:
        for i, row in enumerate(report["frame_predictions"][:SHOW_PREDICTIONS]):
            print(f"clip {i}: classes per frame {' '.join(map(str, row))}")
        if "frame_accuracy" in report:
            print("accuracy per frame: " + " ".join(f"{a:.4f}"
                                                    for a in report["frame_accuracy"]))
    if args.events:
        print(format_stats(report["events"]))
    if args.profile:
        print(format_profile(report["profile"]))
    sys.stdout.flush()
    return 0
