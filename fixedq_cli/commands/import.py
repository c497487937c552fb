"""``fixedq import``: read a pre-quantized TFLite (int8) or ONNX (QDQ) model into an engine file.

Example:
    $ fixedq import -m model_int8.tflite -o model.fqe
    imported model_int8.tflite (TFLite, 66 ops) -> model.fqe (71 engine ops); input: int8 ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fixedq_cli._io import CLIError, output_file

HELP = "import a TFLite int8 or ONNX QDQ model as an engine model (.fqe)"
DESCRIPTION = """\
Read a model quantized by another tool into an engine program (.fqe) that reproduces its
runtime's integer arithmetic: a full-integer .tflite (TFLiteConverter with a representative
dataset; outputs equal the TFLite reference kernels', or with --kernels xnnpack the default
interpreter's XNNPACK delegate) or an .onnx QDQ model written by
onnxruntime.quantization.quantize_static. The engine file then works with 'fixedq run',
event statistics and the other engine tools. The program's input and outputs are the source
model's quantized integers (scales and zero points are kept in the file's metadata). An
operator, option or quantization the importer does not read is one error naming it, and
nothing is written. See docs/interop.md.

examples:
  fixedq import -m model_int8.tflite -o model.fqe
  fixedq import -m model_int8.tflite --kernels xnnpack   # TFLite's default interpreter
  fixedq import -m model_qdq.onnx"""

EXTENSIONS = {".tflite": "TFLite", ".onnx": "ONNX"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", required=True, metavar="MODEL",
                        help="a full-integer .tflite file or an ONNX QDQ .onnx file")
    parser.add_argument("-o", "--output", metavar="OUT.fqe",
                        help="engine file to write (default: <model>.fqe next to the input)")
    parser.add_argument("--kernels", choices=("reference", "xnnpack"), default=None,
                        help="TFLite only: whose arithmetic to reproduce, TFLite's reference "
                        "kernels (default) or its default interpreter's XNNPACK delegate "
                        "(float32 requantization)")


def run(args) -> int:
    src = Path(args.model)
    if not src.is_file():
        raise CLIError(f"model file {args.model!r} does not exist" if not src.exists()
                       else f"{args.model!r} is not a file")
    fmt = EXTENSIONS.get(src.suffix.lower())
    if fmt is None:
        raise CLIError(f"{args.model!r} must end with one of {', '.join(EXTENSIONS)}")
    kernels = getattr(args, "kernels", None)
    if kernels is not None and fmt != "TFLite":
        raise CLIError(f"--kernels applies to .tflite models only, not {args.model!r}")
    out = Path(args.output) if args.output else src.with_suffix(".fqe")
    out = output_file(out, [src], extensions=(".fqe",), what="engine file")
    import fixedq.interop

    try:
        if fmt == "TFLite":
            program = fixedq.interop.import_tflite(src, kernels=kernels or "reference")
        else:
            program = fixedq.interop.import_onnx(src)
    except ImportError as err:  # onnx (fixedq[onnx]) or TensorFlow's schema missing
        raise CLIError(str(err)) from None
    program.save(out)  # written atomically: never a half-written file
    print(f"imported {src} ({fmt}) -> {out} ({len(program.ops)} engine ops, outputs "
          f"{', '.join(o['name'] for o in program.outputs)}); the program reads and returns the "
          "source model's integers (predict(x, output='int'))")
    sys.stdout.flush()
    return 0
