"""``fixedq inspect``: per-layer quantization error of a quantized model vs its float model.

Example:
    $ fixedq inspect -m digits.keras -q digits_i8_w8_a8.keras -sa samples.npz --plot err.png
"""

from __future__ import annotations

import argparse
import json
import sys

from fixedq.io import read_samples
from fixedq_cli import _args
from fixedq_cli._io import CLIError, check_samples_shape, model_file, output_file

HELP = "per-tensor SNR / relative error and saturation of a quantized model vs its float model"
DESCRIPTION = """\
Compare a quantized model with the float model it was made from, layer by layer:
  - weights and biases: SNR (dB) and relative error of the dequantized integer weights;
  - activations: SNR (dB) and relative error of each layer's output, float vs quantized, on
    the samples (a ReLU fused into a quantized layer is applied to the float output first);
  - saturation: rate of output values at the bounds of their integer range.
--split F uses only the last fraction F of the samples (e.g. the part not used to calibrate).

examples:
  fixedq inspect -m model.keras -q model_i8_w4_a4.keras -sa samples.npz
  fixedq inspect -m model.keras -q model_i8_w4_a4.keras -sa samples.npz --split 0.25 \\
      --plot errors.png --json"""


def _split(text: str) -> float:
    value = _args.finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", required=True, metavar="FLOAT_MODEL",
                        help="the float model file (.keras or .h5)")
    parser.add_argument("-q", "--qmodel", required=True, metavar="QMODEL",
                        help="the quantized model file made from it")
    parser.add_argument("-sa", "--samples", required=True, metavar="SAMPLES.npz",
                        help="input samples (.npz arrays concatenated, or one .npy)")
    parser.add_argument("--split", type=_split, default=1.0, metavar="F",
                        help="use the last fraction F of the samples (default 1: all)")
    parser.add_argument("-ns", "--num_samples", type=_args.positive_int, default=None,
                        metavar="N", help="use at most N samples (after --split)")
    parser.add_argument("-bs", "--batch_size", type=_args.positive_int, default=64,
                        metavar="N", help="batch size (default 64)")
    parser.add_argument("--plot", metavar="OUT.png", help="also write a PNG of SNR by layer")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args) -> int:
    model_path = model_file(args.model)
    qmodel_path = model_file(args.qmodel)
    samples = read_samples(args.samples)
    plot = None
    if args.plot:
        plot = output_file(args.plot, [model_path, qmodel_path], extensions=(".png",),
                           what="plot")

    from fixedq_cli._runtime import import_keras, load_model

    import_keras(args.verbose)
    from fixedq import is_quantized
    from fixedq.analysis import inspect

    model = load_model(model_path, args.verbose)
    qmodel = load_model(qmodel_path, args.verbose)
    if is_quantized(model):
        raise CLIError(f"-m {args.model!r} is a quantized model; -m takes the float model and "
                       "-q the quantized one")
    if not is_quantized(qmodel):
        raise CLIError(f"-q {args.qmodel!r} is not a fixedq quantized model (no quantized "
                       "layers); quantize it first with 'fixedq quantize'")
    if len(qmodel.inputs) == 1:
        check_samples_shape(samples, qmodel.inputs[0].shape, args.samples)
    report = inspect(model, qmodel, samples, split=args.split, num_samples=args.num_samples,
                     batch_size=args.batch_size, verbose=True)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.format_table())
    if plot is not None:
        report.plot(plot)
        print(f"saved plot to {plot}", file=sys.stderr if args.json else sys.stdout)
    return 0
