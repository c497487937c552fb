"""Analysis of quantized models: :func:`check` finds weight-scale, saturation and range problems.

Example:
    >>> from fixedq.analysis import check
    >>> check(qmodel).ok  # doctest: +SKIP
    True
"""

from fixedq.analysis.check import CheckReport, LayerCheck, Problem, check

__all__ = ["CheckReport", "LayerCheck", "Problem", "check"]
