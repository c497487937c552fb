"""``fixedq convert``: convert a quantized Keras model file to an integer engine file (.fqe).

Example:
    $ fixedq convert -m digits_i8_w8_a8.keras -t akida-2.0
    saved engine model to digits_i8_w8_a8.fqe
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fixedq.engine.targets import TARGETS
from fixedq_cli._io import model_file, output_file

HELP = "convert a quantized Keras model to an integer engine model (.fqe)"
DESCRIPTION = f"""\
Convert a FixedPoint model (written by 'fixedq quantize' or fixedq.save_model) to the
integer-only engine format, optionally checking it against a hardware profile, and save it.

The output goes next to the input as <model>.fqe unless -o is given; the input file is never
overwritten. 'fixedq run' executes the .fqe file without TensorFlow.

targets: {', '.join(sorted(TARGETS))}

examples:
  fixedq convert -m model_i8_w8_a8.keras
  fixedq convert -m model_i8_w4_a4.keras -t akida-1.0 -o model.fqe"""

ENGINE_EXTENSION = ".fqe"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", required=True,
                        help="quantized model file (.keras or .h5)")
    parser.add_argument("-t", "--target", choices=sorted(TARGETS), default=None,
                        help="hardware profile the model must satisfy (default: none)")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help=f"engine file to write (default: <model>{ENGINE_EXTENSION} next "
                             "to the input)")


def run(args) -> int:
    # Cheap checks first: no TensorFlow until the arguments and files look right.
    model_path = model_file(args.model)
    out = Path(args.output) if args.output else model_path.with_suffix(ENGINE_EXTENSION)
    out = output_file(out, [model_path], extensions=None, what="engine file")

    from fixedq_cli._runtime import load_model

    qmodel = load_model(model_path, args.verbose)
    import fixedq.engine

    engine_model = fixedq.engine.convert(qmodel, target=args.target)
    engine_model.save(out)  # atomic: never a half-written file, even on errors and signals
    print(engine_model.summary())
    print(f"saved engine model to {out}")
    sys.stdout.flush()
    return 0
