"""Interoperability of integer engine programs with other runtimes.

:func:`import_tflite` reads a full-integer TFLite model into an engine program that reproduces
TFLite's integer arithmetic, :func:`import_onnx` an ONNX QDQ model (docs/interop.md).

:func:`export_onnx` writes an engine program (:class:`fixedq.engine.Model` or a ``.fqe`` file)
as a standard ONNX model whose onnxruntime outputs equal the engine's ``predict`` on every
element (docs/interop.md). Nothing here imports TensorFlow; ``onnx`` is imported when an export
runs (``pip install "fixedq[onnx]"``).

Example:
    >>> import fixedq.interop                                          # doctest: +SKIP
    >>> fixedq.interop.export_onnx(fe.load("model.fqe"), "model.onnx")  # doctest: +SKIP
"""

from fixedq.interop.onnx_export import EXPORTABLE_KINDS, export_onnx, to_onnx
from fixedq.interop.onnx_import import import_onnx
from fixedq.interop.tflite_import import import_tflite

__all__ = ["EXPORTABLE_KINDS", "export_onnx", "import_onnx", "import_tflite", "to_onnx"]
