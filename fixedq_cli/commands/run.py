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
import zipfile
from pathlib import Path

import numpy as np

from fixedq_cli import _args
from fixedq_cli._io import CLIError, load_samples

HELP = "run an engine model (.fqe) on samples with the integer engine (no TensorFlow)"
DESCRIPTION = """\
Run an engine model written by 'fixedq convert' on samples and summarize its predictions.

Samples: a .npz file (its array 'x' if present, else all its arrays except 'y', concatenated)
or one .npy array. Labels (for accuracy): --labels LABELS.npy, else the .npz array 'y' if
present; integer class ids, or one-hot rows. TensorFlow is never imported.

examples:
  fixedq run -m model.fqe -sa test.npz
  fixedq run -m model.fqe -sa x.npy --labels y.npy -bs 256 --events
  fixedq run -m model.fqe -sa test.npz --json"""

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
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of text")


def _read_samples(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Samples and the labels stored with them (``'x'``/``'y'`` arrays of a ``.npz``)."""
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"samples file not found: {path!r}")
    try:
        data = np.load(p, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            return load_samples(path), None  # one .npy array, checked there
        with data:
            if "x" in data.files:
                x, y = data["x"], data["y"] if "y" in data.files else None
            elif "y" in data.files:
                rest = [k for k in data.files if k != "y"]
                if not rest:
                    raise CLIError(f"samples {path!r} hold only labels 'y', no input arrays")
                x = np.concatenate([data[k].astype(np.float32, copy=False) for k in rest]) \
                    if len(rest) > 1 else data[rest[0]]
                y = data["y"]
            else:
                return load_samples(path), None  # plain arrays: checked and concatenated there
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise CLIError(f"cannot read samples {path!r} as a NumPy .npz/.npy file: "
                       f"{' '.join(str(exc).split())}") from exc
    return x, y


def _read_labels(path: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"labels file not found: {path!r}")
    try:
        labels = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CLIError(f"cannot read labels {path!r} as a NumPy .npy file: "
                       f"{' '.join(str(exc).split())}") from exc
    if not isinstance(labels, np.ndarray):
        labels.close()
        raise CLIError(f"labels {path!r} must be one .npy array, not an .npz archive")
    return labels


def _class_ids(labels: np.ndarray, n: int, what: str) -> np.ndarray:
    """Integer class ids from integer labels ``(N,)``/``(N, 1)`` or one-hot rows ``(N, C)``."""
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = labels.argmax(axis=1)
    elif labels.ndim == 2:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.dtype.kind not in "iuf" or labels.shape[0] != n:
        raise CLIError(f"{what} have shape {labels.shape} and dtype {labels.dtype}; expected "
                       f"{n} integer class ids (or {n} one-hot rows) for the {n} samples")
    ids = labels.astype(np.int64)
    if labels.dtype.kind == "f" and not np.array_equal(ids, labels):
        raise CLIError(f"{what} are not integer class ids")
    return ids


def _predicted_classes(y: np.ndarray) -> np.ndarray:
    flat = y.reshape(y.shape[0], -1)
    if flat.shape[1] == 1:  # one logit: binary decision at 0
        return (flat[:, 0] > 0).astype(np.int64)
    return flat.argmax(axis=1)


def run(args) -> int:
    import fixedq.engine
    from fixedq.engine.events import format_stats

    x, y = _read_samples(args.samples)
    if args.labels:
        y = _read_labels(args.labels)
    what = f"labels {args.labels!r}" if args.labels else f"labels 'y' of {args.samples!r}"
    labels = _class_ids(y, x.shape[0], what) if y is not None else None
    model = fixedq.engine.load(args.model)
    outputs = model.predict(x, batch_size=args.batch_size)
    if isinstance(outputs, list):
        outputs = outputs[0]
    output_name = model.outputs[0]["name"]
    pred = _predicted_classes(outputs)
    classes, counts = np.unique(pred, return_counts=True)
    report = {"model": str(args.model), "samples": int(x.shape[0]), "output": output_name,
              "output_shape": [int(d) for d in outputs.shape[1:]],
              "predictions": pred.tolist(),
              "histogram": {str(int(c)): int(k) for c, k in zip(classes, counts, strict=True)}}
    if labels is not None:
        report["accuracy"] = float(np.mean(pred == labels))
    if args.events:
        report["events"] = model.event_stats(x, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['samples']} samples, output {output_name!r} of shape "
          f"{tuple(report['output_shape'])}")
    shown = " ".join(str(p) for p in pred[:SHOW_PREDICTIONS])
    more = " ..." if len(pred) > SHOW_PREDICTIONS else ""
    print(f"predicted classes: {shown}{more}")
    print("class histogram: " + ", ".join(f"{c}: {k}" for c, k in report["histogram"].items()))
    if labels is not None:
        correct = int(np.sum(pred == labels))
        print(f"accuracy: {report['accuracy']:.4f} ({correct}/{len(labels)})")
    if args.events:
        print(format_stats(report["events"]))
    sys.stdout.flush()
    return 0
