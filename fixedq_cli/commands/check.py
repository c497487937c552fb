"""``fixedq check``: report quantization problems of a quantized model.

Exit code 0: no problem found; 1: problems found; 2: bad input.

Example:
    $ fixedq check -m digits_i8_w8_a8.keras -sa samples.npz
    $ fixedq check -m imported.fqe -sa q_inputs.npy --target akida-2.0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fixedq.engine.targets import TARGETS
from fixedq.io import read_samples
from fixedq_cli import _args
from fixedq_cli._io import CLIError, check_samples_shape, model_file

HELP = ("check a quantized model (.keras/.h5) or an engine program (.fqe, e.g. imported) for "
        "weight-scale errors, saturation and per-tensor ranges, or lint a float model")
DESCRIPTION = """\
Check a quantized model and report, per layer:
  - weights whose quantization error is large (relative RMS error of the worst channel);
  - integer accumulators that can saturate (static bound sum|w_q| x max|v| + |b_q| against
    the accumulator range) and, with -sa, accumulators and outputs that did saturate on the
    samples (count and rate);
  - per-tensor activations whose channel ranges differ by more than 2^4 (use per-axis).
Given a float model, lint it instead (before quantizing, seed 001 guidelines): depthwise
convolutions without BatchNormalization after them, other convolutions without it (except the
last ones), and kernels without weight decay or with an L2 factor below --min_weight_decay.
Given an engine program (.fqe: converted, or imported from TFLite/ONNX), check its integers:
per op the static accumulator bound against the accumulator range, with -sa the accumulator
values and outputs that saturated on the samples (the inputs the program reads: integers for
an imported program), and with --target the reasons it does not fit a hardware profile.
Exit code: 0 no problem, 1 problems found, 2 bad input.

examples:
  fixedq check -m model_i8_w8_a8.keras
  fixedq check -m model_i8_w8_a8.keras -sa samples.npz --json
  fixedq check -m float_model.keras
  fixedq check -m imported.fqe -sa q_inputs.npy --target akida-2.0"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", required=True,
                        help="quantized model file (.keras/.h5), or engine program (.fqe)")
    parser.add_argument("-sa", "--samples", metavar="SAMPLES.npz",
                        help="samples to measure saturation on (.npz, arrays concatenated)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--weight_error", type=_args.fraction, default=0.05, metavar="R",
                        help="largest acceptable relative weight error (default 0.05)")
    parser.add_argument("--saturation_rate", type=_args.fraction, default=0.01, metavar="R",
                        help="largest acceptable rate of saturated outputs (default 0.01)")
    parser.add_argument("--min_weight_decay", type=_args.finite_float, default=1e-5,
                        metavar="F", help="float models: smallest acceptable L2 factor of a "
                        "kernel regularizer (default 1e-5)")
    parser.add_argument("-t", "--target", choices=sorted(TARGETS), default=None,
                        help=".fqe programs: also list what does not fit this hardware profile")
    parser.add_argument("-bs", "--batch_size", type=_args.positive_int, default=32,
                        help=".fqe programs: samples per batch (default 32)")


def _check_program(args, samples) -> int:
    import fixedq.engine
    from fixedq.engine.program_check import check_program

    program = fixedq.engine.load(args.model)
    report = check_program(program, samples, batch_size=args.batch_size,
                           saturation_rate_threshold=args.saturation_rate, target=args.target)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format_table())
    return 0 if report.ok else 1


def run(args) -> int:
    samples = read_samples(args.samples) if args.samples else None
    if Path(args.model).suffix.lower() == ".fqe":  # no TensorFlow needed
        return _check_program(args, samples)
    if args.target is not None:
        raise CLIError("--target applies to engine programs (.fqe); convert the model with "
                       "'fixedq convert --target' to check a quantized Keras model")
    model_path = model_file(args.model)

    from fixedq_cli._runtime import import_keras, load_model

    import_keras(args.verbose)
    from fixedq import is_quantized
    from fixedq.analysis import check, lint

    qmodel = load_model(model_path, args.verbose)
    if not is_quantized(qmodel):  # a float model: lint it (samples are not needed)
        report = lint(qmodel, min_weight_decay=args.min_weight_decay)
        print(json.dumps(report.to_dict(), indent=2) if args.json else report.format_table())
        return 0 if report.ok else 1
    if samples is not None and len(qmodel.inputs) == 1:
        check_samples_shape(samples, qmodel.inputs[0].shape, args.samples)
    report = check(qmodel, samples, weight_error_threshold=args.weight_error,
                   saturation_rate_threshold=args.saturation_rate)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.format_table())
    return 0 if report.ok else 1
