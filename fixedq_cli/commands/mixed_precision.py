"""``fixedq mixed_precision``: choose per-layer bit widths automatically (q-config edits).

Example:
    $ fixedq mixed_precision -m digits.keras -sa calib.npz --eval test.npz --tolerance 1 \\
          -o digits_amp.json
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from fixedq.io import Terminated, read_labelled_samples, read_labels, read_samples, write_atomic
from fixedq_cli import _args
from fixedq_cli._io import CLIError, check_samples_shape, model_file, output_file, read_qconfig

HELP = "automatic mixed precision: 4/8-bit weights within an accuracy tolerance, or 16-bit " \
       "layers within a cost budget"
DESCRIPTION = """\
Search per-layer bit widths by editing the q-config, re-quantizing from one calibration.

--mode accuracy (default; seed 003 "full_auto"): activations keep 8 bits; find the fewest
  layers whose weights must stay at --high_bits (8) while the others use --low_bits (4), so
  that the top-1 accuracy on --eval stays within --tolerance points of all-8-bit. Layers are
  ranked statically (total weights, weights per output channel, execution order) and the
  search bisects over that ranking.
--mode cost (seed 001 "mixed_precision_factor"): move the most sensitive layers (--sensitivity
  snr: noise each layer adds, measured on the samples; metric: accuracy gain of each layer
  alone) to 16-bit weights and activations while the bit-operation cost
  (sum of MACs x weight bits x input activation bits) stays within --cost_ratio x all-8-bit.

Evaluation data (--eval): a .npz with arrays 'x' and 'y' (class ids or one-hot), or samples
with --labels LABELS.npy. Every trial is printed on stderr; --log writes the trial log as JSON
after each trial, and Ctrl-C stops the search keeping that log (exit code 130).

examples:
  fixedq mixed_precision -m model.keras -sa calib.npz --eval test.npz --tolerance 1 \\
      -o model_amp.json -s model_amp.keras --log trials.json
  fixedq mixed_precision -m model.keras -sa calib.npz --mode cost --cost_ratio 1.2 \\
      --eval test.npz -o model_16.json"""


def _ratio(text: str) -> float:
    value = _args.finite_float(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a cost ratio >= 1, got {value}")
    return value


def _tolerance(text: str) -> float:
    value = _args.finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a tolerance >= 0, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", required=True, help="float model file (.keras/.h5)")
    parser.add_argument("-sa", "--samples", metavar="SAMPLES.npz",
                        help="calibration samples (not needed with -c)")
    parser.add_argument("-c", "--config", metavar="CONFIG.json",
                        help="start from this q-config (from 'fixedq config') instead of "
                             "calibrating")
    parser.add_argument("-ns", "--num_samples", type=_args.positive_int, default=1024,
                        metavar="N", help="calibration samples to use (default 1024)")
    parser.add_argument("--eval", metavar="EVAL.npz",
                        help="labelled evaluation data: the metric is top-1 accuracy in %%")
    parser.add_argument("--labels", metavar="LABELS.npy", help="labels for --eval samples")
    parser.add_argument("--mode", choices=("accuracy", "cost"), default="accuracy",
                        help="accuracy budget (default) or cost budget")
    parser.add_argument("--tolerance", type=_tolerance, default=1.0, metavar="POINTS",
                        help="accuracy mode: accepted accuracy drop vs all-8-bit, in points "
                             "(default 1)")
    parser.add_argument("--low_bits", type=_args.weight_bits, default=4, metavar="BITS",
                        help="accuracy mode: low weight bits (default 4)")
    parser.add_argument("--high_bits", type=_args.weight_bits, default=None, metavar="BITS",
                        help="high bits (default 8 in accuracy mode, 16 in cost mode)")
    parser.add_argument("--cost_ratio", type=_ratio, default=1.2, metavar="R",
                        help="cost mode: tolerated bit-operation cost vs all-8-bit (default "
                             "1.2)")
    parser.add_argument("--sensitivity", choices=("snr", "metric"), default="snr",
                        help="cost mode: how layers are ranked (default snr)")
    parser.add_argument("-o", "--output", metavar="CONFIG.json",
                        help="write the chosen q-config (apply with 'fixedq quantize -c')")
    parser.add_argument("-s", "--save", metavar="QMODEL.keras",
                        help="save the chosen quantized model")
    parser.add_argument("--log", metavar="TRIALS.json", help="write the trial log (JSON)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _eval_data(args):
    if args.labels:
        x = read_samples(args.eval, "evaluation data")
        return x, read_labels(args.labels, len(x))
    x, y = read_labelled_samples(args.eval, "evaluation data")
    if y is None:
        raise CLIError(f"evaluation data {args.eval!r} has no labels: store arrays 'x' and 'y' "
                       "in the .npz or pass --labels")
    return x, y


def run(args) -> int:
    model_path = model_file(args.model)
    if args.config and args.samples:
        raise CLIError("give either -sa (calibrate) or -c (start from a q-config), not both")
    config = read_qconfig(args.config) if args.config else None
    samples = read_samples(args.samples)[:args.num_samples] if args.samples else None
    if config is None and samples is None:
        raise CLIError("calibration samples are needed: pass -sa SAMPLES.npz (or -c CONFIG)")
    if args.mode == "accuracy" and not args.eval:
        raise CLIError("--mode accuracy needs labelled evaluation data: --eval EVAL.npz")
    if args.mode == "cost" and args.sensitivity == "metric" and not args.eval:
        raise CLIError("--sensitivity metric needs labelled evaluation data: --eval EVAL.npz")
    if args.mode == "cost" and args.sensitivity == "snr" and samples is None:
        raise CLIError("--sensitivity snr needs samples (-sa) to measure the noise per layer")
    x_eval, y_eval = _eval_data(args) if args.eval else (None, None)
    inputs = [model_path]
    out = output_file(args.output, inputs, extensions=(".json",), what="config") \
        if args.output else None
    save = output_file(args.save, inputs) if args.save else None
    log = output_file(args.log, inputs, extensions=(".json",), what="log") if args.log else None

    from fixedq_cli._runtime import import_keras, load_model

    import_keras(args.verbose)
    import fixedq
    from fixedq import is_quantized
    from fixedq.analysis import mixed_precision as mp

    model = load_model(model_path, args.verbose)
    if is_quantized(model):
        raise CLIError(f"{args.model!r} is a quantized model; give the float model")
    shape = model.inputs[0].shape
    for data, path in ((samples, args.samples), (x_eval, args.eval)):
        if data is not None:
            check_samples_shape(data, shape, path)

    metric = None
    if x_eval is not None:
        def accuracy(qmodel) -> float:
            """Top-1 accuracy (%) on the --eval data."""
            # direct calls: predict() would trace a new function for every trial's model
            pred = np.concatenate([np.asarray(qmodel(x_eval[i:i + 256], training=False))
                                   for i in range(0, len(x_eval), 256)])
            return 100.0 * float(np.mean(np.argmax(pred.reshape(len(pred), -1), -1) == y_eval))

        metric = accuracy
    try:
        if args.mode == "accuracy":
            result = mp.search_accuracy_budget(
                model, metric, samples, accuracy_tolerance=args.tolerance,
                low_bits=args.low_bits, high_bits=args.high_bits or 8, q_config=config,
                log_path=log)
        else:
            result = mp.search_cost_budget(
                model, samples, cost_ratio=args.cost_ratio, metric=metric,
                sensitivity=args.sensitivity, high_bits=args.high_bits or 16, q_config=config,
                log_path=log)
    except mp.MixedPrecisionInterrupted as exc:
        print(exc.result.format_table(), file=sys.stderr)
        term = isinstance(exc.__cause__, Terminated)
        print(f"fixedq mixed_precision: {'terminated' if term else 'interrupted'}"
              + (f"; trial log saved to {log}" if log else ""), file=sys.stderr)
        return 143 if term else 130
    except mp.MetricError as exc:
        raise CLIError(str(exc)) from exc
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.format_table())
    done = sys.stderr if args.json else sys.stdout
    if out is not None:
        write_atomic(out, json.dumps(result.q_config, indent=2) + "\n")
        print(f"saved q-config to {out}", file=done)
    if save is not None:
        fixedq.save_model(fixedq.quantize(model, q_config=result.q_config, verbose=False), save)
        print(f"saved quantized model to {save}", file=done)
    if log is not None:
        print(f"saved trial log to {log}", file=done)
    return 0
