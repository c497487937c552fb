"""``fixedq export``: write an integer engine model (.fqe) as an ONNX model, without TensorFlow.

Example:
    $ fixedq export -m digits.fqe -o digits.onnx
    saved ONNX model to digits.onnx (opset 17, 11 ops -> 74 nodes, output float)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fixedq_cli._io import CLIError, output_file

HELP = "export an engine model (.fqe) to ONNX (onnxruntime outputs == engine outputs)"
DESCRIPTION = """\
Write an engine model written by 'fixedq convert' as a standard ONNX model (opset 17) whose
onnxruntime outputs equal the engine's on every element: float32 outputs v*2^-f as
'fixedq run' computes them (--int: the int64 output integers). Integer arithmetic is carried
exactly in double precision (every static bound is checked below 2^53) or int64; an op that
cannot be exported exactly, or of a kind the export does not support, is one error naming the
op, and nothing is written. Needs the onnx package: pip install "fixedq[onnx]".
TensorFlow is never imported. The output goes next to the input as <model>.onnx unless -o is
given; the input file is never overwritten. See docs/interop.md.

examples:
  fixedq export -m model.fqe
  fixedq export -m model.fqe -o model_int.onnx --int"""

ONNX_EXTENSION = ".onnx"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", required=True, metavar="ENGINE_MODEL",
                        help="engine model file (.fqe, written by 'fixedq convert')")
    parser.add_argument("-o", "--output", metavar="OUT.onnx",
                        help=f"ONNX file to write (default: <model>{ONNX_EXTENSION} next to "
                             "the input)")
    parser.add_argument("--int", action="store_true",
                        help="int64 outputs (the engine's output integers) instead of float32")


def run(args) -> int:
    src = Path(args.model)
    if not src.is_file():
        raise CLIError(f"engine file {args.model!r} does not exist" if not src.exists()
                       else f"{args.model!r} is not a file (an engine .fqe file is expected)")
    out = Path(args.output) if args.output else src.with_suffix(ONNX_EXTENSION)
    out = output_file(out, [src], extensions=(ONNX_EXTENSION,), what="ONNX file")
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise CLIError("exporting needs the 'onnx' package: pip install \"fixedq[onnx]\"") \
            from None
    import fixedq.engine
    from fixedq.interop import onnx_export

    model = fixedq.engine.load(src)
    proto = onnx_export.to_onnx(model, output="int" if args.int else "float")
    from fixedq.io import write_atomic

    write_atomic(out, proto.SerializeToString())  # never a half-written file
    print(f"saved ONNX model to {out} (opset {onnx_export.OPSET}, {len(model.ops)} ops -> "
          f"{len(proto.graph.node)} nodes, output {'int64' if args.int else 'float32'})")
    sys.stdout.flush()
    return 0
