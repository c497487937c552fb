"""``fixedq config``: dump the q-config of a quantized model as JSON.

Example:
    $ fixedq config -m digits_i8_w8_a8.keras -o config.json
    saved q-config of 5 layers to config.json
"""

from __future__ import annotations

import argparse
import json
import sys

from fixedq.io import write_atomic
from fixedq_cli._io import model_file, output_file

HELP = "dump the q-config (bit widths, calibration ranges) of a quantized model as JSON"
DESCRIPTION = """\
Dump the q-config of a quantized model: the QuantizationParams, and per layer its bit widths,
per-tensor flag and calibration ranges. Edit it and re-apply it with 'fixedq quantize -c'.

examples:
  fixedq config -m model_i8_w8_a8.keras                # JSON on stdout
  fixedq config -m model_i8_w8_a8.keras -o config.json
  fixedq quantize -m model.keras -c config.json"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", required=True, help="quantized model file")
    parser.add_argument("-o", "--output", metavar="CONFIG.json",
                        help="write the JSON here (default: stdout)")


def run(args) -> int:
    model_path = model_file(args.model)
    out = None
    if args.output:
        out = output_file(args.output, [model_path], extensions=None)

    from fixedq_cli._runtime import import_keras, load_model

    import_keras(args.verbose)
    import fixedq

    qmodel = load_model(model_path, args.verbose)
    config = fixedq.dump_config(qmodel)
    text = json.dumps(config, indent=2) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        write_atomic(out, text)
        print(f"saved q-config of {len(config['layers'])} layers to {out}")
    return 0
