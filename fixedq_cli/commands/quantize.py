"""``fixedq quantize``: quantize a float Keras model file to a FixedPoint model file.

Example:
    $ fixedq quantize -m digits.keras -sa samples.npz
    saved quantized model to digits_i8_w8_a8.keras
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fixedq.io import read_samples
from fixedq_cli import _args
from fixedq_cli._io import (
    CLIError,
    check_samples_shape,
    derived_path,
    model_file,
    output_file,
    read_qconfig,
)

HELP = "quantize a float Keras model (.keras/.h5) to a FixedPoint model"
DESCRIPTION = """\
Quantize a float Keras model to FixedPoint (integer-only) layers and save it.

For a streaming model (temporal layers with FIFO/recurrent state, docs/tenn.md) the samples
may be clips (N, T, *frame): they are streamed frame by frame, each batch of clips from a
clean state.

Without -sa, calibration uses random samples (with a warning): give real samples in a .npz
file (its arrays are concatenated) for a useful model. The output goes next to the input as
<model>_i<I>_w<W>_a<A>.<ext> (or <model>_<config>.<ext> with -c) unless -s is given; the input
file is never overwritten.

examples:
  fixedq quantize -m model.keras -i 8 -w 8 -a 8 -sa samples.npz -bs 128 -e 2
  fixedq quantize -m model.h5 -i 8 -w 4 -a 4 --per_tensor_activations
  fixedq quantize -m model.keras -c config.json"""

_BITS = ("input_weight_bits", "weight_bits", "activation_bits")


METHODS = ("max", "moving_average", "mean_std", "percentile", "histogram", "mse")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", required=True, help="float model file (.keras or .h5)")
    parser.add_argument("-i", "--input_weight_bits", type=_args.weight_bits, default=None,
                        metavar="BITS", help="weight bits of the first layer (default 8)")
    parser.add_argument("-w", "--weight_bits", type=_args.weight_bits, default=None,
                        metavar="BITS", help="weight bits of the other layers (default 8)")
    parser.add_argument("-a", "--activation_bits", type=_args.activation_bits, default=None,
                        metavar="BITS", help="activation bits (default 8)")
    parser.add_argument("--per_tensor_activations", action="store_true", default=None,
                        help="one frac_bits per activation tensor instead of one per channel")
    parser.add_argument("-sa", "--samples", metavar="SAMPLES.npz",
                        help="calibration samples (.npz of arrays shaped (N, *input_shape), "
                             "concatenated; or one .npy)")
    parser.add_argument("-ns", "--num_samples", type=_args.positive_int, default=1024,
                        metavar="N", help="number of calibration samples to use (default 1024)")
    parser.add_argument("-bs", "--batch_size", type=_args.positive_int, default=None,
                        metavar="N", help="calibration batch size (default 32)")
    parser.add_argument("-e", "--epochs", type=_args.positive_int, default=1, metavar="N",
                        help="passes over the calibration samples (default 1)")
    parser.add_argument("-c", "--config", metavar="CONFIG.json",
                        help="q-config written by 'fixedq config' to re-apply (bit widths "
                             "and ranges per layer); cannot be combined with -i/-w/-a")
    parser.add_argument("-s", "--save_name", metavar="PATH",
                        help="output file (.keras or .h5; default: next to the input)")
    acc = parser.add_argument_group("accuracy options (docs/accuracy.md)")
    acc.add_argument("--calibration", choices=METHODS, default=None,
                     help="how ranges are chosen from the calibration samples (default: mse for "
                     "tensors of 4 bits or less, max for wider ones)")
    acc.add_argument("--asymmetric_activations", action="store_true", default=None,
                     help="fit a per-channel integer window [lo, lo+2^n-1] to signed activations "
                          "instead of the symmetric range (lo is folded into the next bias)")
    acc.add_argument("--percentile", type=float, default=None,
                     help="percentile for --calibration percentile (default 99.99)")
    acc.add_argument("--bias_correction", nargs="?", const="on", default="auto",
                     choices=("auto", "on", "off"),
                     help="compensate the mean output shift of quantization on calibration "
                          "frames (needs -sa); alone: on; default auto: on at <= 4 bits with "
                          "-sa and without -c")
    acc.add_argument("--calibration_frames", type=_args.positive_int, default=64, metavar="N",
                     help="frames used by --bias_correction (default 64)")
    acc.add_argument("--calibration_iterations", type=_args.positive_int, default=1,
                     metavar="N", help="passes of --bias_correction (default 1)")
    acc.add_argument("--weight_clip_std", type=float, default=None, metavar="K",
                     help="with --bias_correction, clip weights to K standard deviations")
    acc.add_argument("--weight_rounding", choices=("auto", "on", "off"), default="auto",
                     help="choose the integer weights of <= 4-bit layers that minimize each "
                          "layer's output error on calibration frames instead of rounding to "
                          "nearest (needs -sa; default auto: on at <= 4-bit weights with -sa)")
    acc.add_argument("--rounding_frames", type=_args.positive_int, default=None, metavar="N",
                     help="with --weight_rounding on: calibration frames used (default 256)")
    acc.add_argument("--params_16bit", default="", metavar="NAMES",
                     help="comma-separated layers whose weights stay 16-bit")
    acc.add_argument("--features_16bit", default="", metavar="NAMES",
                     help="comma-separated layers whose outputs are 16-bit")


def _output_path(args, model_path: Path) -> Path:
    if args.save_name:
        out = Path(args.save_name)
        if out.suffix == "":
            out = out.with_name(out.name + (model_path.suffix or ".keras"))
        return out
    if args.config:
        return derived_path(model_path, f"_{Path(args.config).stem}")
    bits = [getattr(args, name) or 8 for name in _BITS]
    return derived_path(model_path, "_i{}_w{}_a{}".format(*bits))


def run(args) -> int:
    # Cheap checks first: no TensorFlow until the arguments and files look right.
    model_path = model_file(args.model)
    given = [f"--{n}" for n in (*_BITS, "per_tensor_activations", "asymmetric_activations")
             if getattr(args, n) is not None]
    q_config = None
    if args.config:
        if given:
            raise CLIError(f"-c/--config sets the bit widths; do not combine it with "
                           f"{', '.join(given)} (edit the config instead)")
        q_config = read_qconfig(args.config)
    samples = read_samples(args.samples) if args.samples else None
    if args.bias_correction == "on" and samples is None:
        raise CLIError("--bias_correction needs calibration samples (-sa SAMPLES.npz)")
    if args.weight_rounding == "on" and samples is None:
        raise CLIError("--weight_rounding on needs calibration samples (-sa SAMPLES.npz)")
    if args.rounding_frames is not None and args.weight_rounding != "on":
        raise CLIError("--rounding_frames needs --weight_rounding on")
    if args.percentile is not None and not 0 < args.percentile <= 100:
        raise CLIError(f"--percentile must be in (0, 100], got {args.percentile}")
    out = output_file(_output_path(args, model_path), [model_path])

    from fixedq_cli._runtime import import_keras, load_model

    import_keras(args.verbose)
    import fixedq
    from fixedq.models.overrides import mixed_precision

    model = load_model(model_path, args.verbose)
    if samples is not None:
        if len(model.inputs) != 1:
            raise CLIError(f"model {model.name!r} has {len(model.inputs)} inputs; quantize "
                           "supports one")
        shape = tuple(model.inputs[0].shape)
        from fixedq.models.streaming import is_streaming

        if is_streaming(model) and samples.ndim == len(shape) + 1:  # clips (N, T, *frame)
            shape = (shape[0], None, *shape[1:])
        check_samples_shape(samples, shape, args.samples)
    num_samples = args.num_samples
    if samples is not None:
        num_samples = min(num_samples, len(samples))  # progress then ends at 100%
    qparams = None
    if q_config is None:
        qparams = fixedq.QuantizationParams(
            input_weight_bits=args.input_weight_bits or 8, weight_bits=args.weight_bits or 8,
            activation_bits=args.activation_bits or 8,
            per_tensor_activations=bool(args.per_tensor_activations),
            asymmetric_activations=bool(args.asymmetric_activations))
    calibration = None
    if args.calibration or args.percentile is not None:
        calibration = {"name": args.calibration or "percentile"}
        if args.percentile is not None:
            calibration["percentile"] = args.percentile
    bias = {"auto": "auto", "off": False}.get(args.bias_correction)  # like quantize()
    if args.bias_correction == "on":
        bias = {"frames": args.calibration_frames, "iterations": args.calibration_iterations,
                "weight_clip_std": args.weight_clip_std}
    rounding = {"off": False, "auto": "auto", "on": True}[args.weight_rounding]
    if rounding is True and args.rounding_frames is not None:
        rounding = {"frames": args.rounding_frames}
    names = [[n.strip() for n in text.split(",") if n.strip()]
             for text in (args.params_16bit, args.features_16bit)]
    overrides = mixed_precision(*names) if any(names) else None
    qmodel = fixedq.quantize(model, qparams=qparams, samples=samples,
                             num_samples=num_samples, batch_size=args.batch_size,
                             epochs=args.epochs, q_config=q_config, verbose=True,
                             calibration=calibration, overrides=overrides,
                             bias_correction=bias, weight_rounding=rounding)
    fixedq.save_model(qmodel, out)
    print(f"saved quantized model to {out}")
    sys.stdout.flush()
    return 0
