"""Analysis of models before and after quantization.

- :func:`check` finds weight-scale, saturation and range problems of a quantized model;
- :func:`lint` finds quantization-unfriendly choices in a *float* model (missing
  BatchNormalization after convolutions, missing or weak weight decay);
- :func:`inspect` measures per-tensor SNR / relative error and saturation, float vs quantized;
- :mod:`fixedq.analysis.mixed_precision` searches per-layer bit widths automatically.

Example:
    >>> from fixedq.analysis import check
    >>> check(qmodel).ok  # doctest: +SKIP
    True
"""

from fixedq.analysis.check import CheckReport, LayerCheck, Problem, check
from fixedq.analysis.inspection import InspectReport, LayerInspection, TensorError, inspect
from fixedq.analysis.lint import LintReport, lint

__all__ = ["CheckReport", "InspectReport", "LayerCheck", "LayerInspection", "LintReport",
           "Problem", "TensorError", "check", "inspect", "lint"]
