"""``fixedq insert_rescaling``: add a Rescaling layer at the input of a model.

Example:
    $ fixedq insert_rescaling -m model.keras -s 0.007843 -o -1 -d model_rescaled.keras
    saved model with Rescaling(scale=0.007843, offset=-1.0) to model_rescaled.keras
"""

from __future__ import annotations

import argparse

from fixedq_cli import _args
from fixedq_cli._io import CLIError, model_file, output_file

HELP = "insert a Rescaling layer (x * scale + offset) at the input of a model"
DESCRIPTION = """\
Insert a Rescaling layer at the input of a float model: inputs become x * SCALE + OFFSET, so a
separate preprocessing step (e.g. [0, 255] images to [-1, 1]) moves into the model.

example ([0, 255] -> [-1, 1], 0.007843 = 1/127.5):
  fixedq insert_rescaling -m model.keras -s 0.007843 -o -1 -d model_rescaled.keras"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", required=True, help="float model file")
    parser.add_argument("-s", "--scale", type=_args.finite_float, required=True,
                        help="multiplier applied to the inputs")
    parser.add_argument("-o", "--offset", type=_args.finite_float, required=True,
                        help="added after scaling")
    parser.add_argument("-d", "--destination", required=True, metavar="DEST",
                        help="output model file (.keras or .h5), not the input")


def run(args) -> int:
    model_path = model_file(args.model)
    dest = output_file(args.destination, [model_path], what="destination")
    if args.scale == 0:
        raise CLIError("scale must be non-zero (a zero scale would erase the inputs)")

    from fixedq_cli._runtime import import_keras, load_model

    import_keras(args.verbose)
    import fixedq
    from fixedq.transforms.insert_rescaling import insert_rescaling

    model = load_model(model_path, args.verbose)
    new_model = insert_rescaling(model, args.scale, args.offset)
    fixedq.save_model(new_model, dest)
    print(f"saved model with Rescaling(scale={args.scale:g}, offset={args.offset:g}) to {dest}")
    return 0
