"""The integer engine: run a fixedq-quantized model with NumPy integers, bit-exact with Keras.

``import fixedq.engine`` never imports TensorFlow or Keras; only :func:`convert` (which reads a
Keras model) does, on first use.

Example:
    >>> import fixedq.engine as fe
    >>> sorted(fe.TARGETS)
    ['akida-1.0', 'akida-2.0']
    >>> engine = fe.convert(qmodel, target="akida-2.0")   # doctest: +SKIP
    >>> engine.save("model.fqe"); fe.load("model.fqe").predict(x)   # doctest: +SKIP
"""

from __future__ import annotations

from fixedq.engine.fileformat import FORMAT, VERSION, load, save
from fixedq.engine.model import Model, dequantize
from fixedq.engine.program_check import check_program
from fixedq.engine.targets import TARGETS, Target, check_target

__all__ = ["FORMAT", "Model", "TARGETS", "Target", "VERSION", "check_program", "check_target",
           "convert", "dequantize", "load", "save"]


def convert(qmodel, target=None, fuse: bool = True) -> Model:
    """Convert a quantized Keras model (imports Keras); see :func:`fixedq.engine.converter.convert`.

    Example:
        >>> engine = convert(qmodel)   # doctest: +SKIP
    """
    from fixedq.engine.converter import convert as _convert

    return _convert(qmodel, target=target, fuse=fuse)
