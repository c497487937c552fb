"""``fixedq qat``: fine-tune a quantized model, keeping it only where validation improves.

Example:
    $ fixedq qat -m digits_i8_w4_a4.keras --train train.npz -e 3 -s digits_qat.keras
    saved model (epoch 3, validation accuracy 97.14 %, start 96.67 %) to digits_qat.keras
"""

from __future__ import annotations

import argparse
import json

from fixedq.io import read_labelled_samples
from fixedq_cli import _args
from fixedq_cli._io import CLIError, derived_path, model_file, output_file

HELP = "quantization-aware training that never returns a model worse than its start"
DESCRIPTION = """\
Fine-tune a quantized model (made by 'fixedq quantize') on labelled samples with
fixedq.qat: Adam, a peak learning rate from a learning-rate range test on the training data
(or --lr), cosine-decayed to 0 over the epochs. After each epoch the validation accuracy is
measured. With --teacher the last epoch is saved unless it is below the start or below an
earlier epoch with a clear gain, else that epoch or the starting weights; without one only an
epoch with a clear gain (--keep). The saved model is never worse than the input on the
validation samples.

--train and --val are .npz files holding the samples 'x' and the labels 'y' (class ids or
one-hot rows). Without --val, a seeded --val_split of the training samples is held out. The
output goes to <model>_qat.<ext> unless -s is given; the input file is never overwritten.

examples:
  fixedq qat -m model_i8_w4_a4.keras --train train.npz -e 3 -s model_qat.keras
  fixedq qat -m model_i8_w4_a4.keras --train train.npz --val val.npz --lr 1e-4 --json
  fixedq qat -m model_i8_w4_a4.keras --train train.npz --val val.npz --teacher model.keras

--teacher FLOAT_MODEL adds distillation: the float model's outputs on the training samples
become soft targets weighted by --distill (default 0.5) at --temperature (default 2)."""


def _split(text: str) -> float:
    value = _args.finite_float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {value}")
    return value


def _lr(text: str) -> float:
    value = _args.finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive learning rate, got {value}")
    return value


def _weight(text: str) -> float:
    value = _args.finite_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a weight in [0, 1], got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", required=True, metavar="QMODEL",
                        help="quantized model file (.keras or .h5) made by 'fixedq quantize'")
    parser.add_argument("--train", required=True, metavar="TRAIN.npz",
                        help="training samples 'x' and labels 'y'")
    parser.add_argument("--val", metavar="VAL.npz",
                        help="validation samples 'x' and labels 'y' (default: a split of "
                             "--train)")
    parser.add_argument("--val_split", type=_split, default=0.15, metavar="F",
                        help="fraction of --train held out when --val is not given "
                             "(default 0.15)")
    parser.add_argument("-e", "--epochs", type=_args.positive_int, default=3, metavar="N",
                        help="training epochs (default 3; 12 ended higher in 13 of 15 bench "
                        "runs at about twice the time: docs/quantization.md 'More epochs')")
    parser.add_argument("-bs", "--batch_size", type=_args.positive_int, default=32,
                        metavar="N", help="batch size (default 32)")
    parser.add_argument("--lr", type=_lr, default=None,
                        help="peak learning rate (default: from a learning-rate range test)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the split and the shuffling (default 0)")
    parser.add_argument("--teacher", metavar="FLOAT_MODEL",
                        help="the float model the quantized one came from (.keras or .h5): "
                             "distill from its outputs")
    parser.add_argument("--distill", type=_weight, default=0.5, metavar="W",
                        help="weight of the teacher term in [0, 1] (default 0.5; needs "
                             "--teacher)")
    parser.add_argument("--temperature", type=_lr, default=2.0, metavar="T",
                        help="softening temperature of the teacher term (default 2)")
    parser.add_argument("--keep", choices=("auto", "end", "clear"), default="auto",
                        help="which epoch replaces the start: 'end' the last epoch unless it "
                             "is below the start or a clearly better epoch on validation; "
                             "'clear' only an epoch whose gain is clear on its own; 'auto' "
                             "(default): 'end' with --teacher, else 'clear'")
    parser.add_argument("-s", "--save_name", metavar="PATH",
                        help="output model file (default <model>_qat.<ext>)")
    parser.add_argument("--json", action="store_true", help="print the history as JSON")


def run(args) -> int:
    model_path = model_file(args.model)
    teacher_path = model_file(args.teacher) if args.teacher else None
    inputs = [model_path] + ([teacher_path] if teacher_path else [])
    out = output_file(args.save_name or derived_path(model_path, "_qat"), inputs)
    train = read_labelled_samples(args.train, what="train")
    if train[1] is None:
        raise CLIError(f"--train {args.train!r} has no labels: store them as array 'y' next to "
                       "the samples 'x'")
    val = None
    if args.val:
        val = read_labelled_samples(args.val, what="validation")
        if val[1] is None:
            raise CLIError(f"--val {args.val!r} has no labels: store them as array 'y' next to "
                           "the samples 'x'")

    from fixedq_cli._runtime import import_keras, load_model

    import_keras(args.verbose)
    import fixedq
    from fixedq import is_quantized

    qmodel = load_model(model_path, args.verbose)
    if not is_quantized(qmodel):
        raise CLIError(f"-m {args.model!r} is not a fixedq quantized model (no quantized "
                       "layers); quantize it first with 'fixedq quantize'")
    teacher = None
    if teacher_path:
        teacher = load_model(teacher_path, args.verbose)
        if is_quantized(teacher):
            raise CLIError(f"--teacher {args.teacher!r} is a quantized model; pass the float "
                           "model the quantized one was made from")
    model, history = fixedq.qat(qmodel, train, val, epochs=args.epochs, lr=args.lr,
                                batch_size=args.batch_size, validation_split=args.val_split,
                                seed=args.seed, teacher=teacher, distill=args.distill,
                                temperature=args.temperature, keep=args.keep, verbose=True)
    fixedq.save_model(model, out)
    if args.json:
        print(json.dumps(history.to_dict(), indent=2))
    what = (f"epoch {history.kept_epoch}" if history.improved
            else "starting weights, no epoch beat them")
    print(f"saved model ({what}, validation {_metric(history, history.best_metric)}, start "
          f"{_metric(history, history.start_metric)}) to {out}")
    return 0


def _metric(history, value: float) -> str:
    if history.metric == "accuracy":
        return f"accuracy {100 * value:.2f} %"
    return f"loss {value:.4f}"
