"""The integer arithmetic of fixedq: one function per numbered equation of docs/numerics.md.

Two executors implement the same equations: :mod:`fixedq.tensors.rounding` (NumPy, the
reference, used by the integer engine) and :mod:`fixedq.tensors.kops` (``keras.ops``, used
inside the quantized layers); ``tests/tensors/test_equations.py`` checks both against exact
rational arithmetic on the same draws. A FixedPoint value is an integer ``v`` with
``frac_bits`` ``f`` (``x = v * 2^-f``); the layers keep ``f``, bit widths and bounds as static
metadata in :class:`fixedq.layers.spec.QSpec` and carry ``v`` in tensors (docs/numerics.md
explains why there is no FixedPoint object). Importing this package never imports Keras.

Example (seed 004: PI in 8 unsigned bits with frac_bits 1, 3, 6):
    >>> from fixedq.tensors import rounding
    >>> [int(rounding.quantize_float(3.14159, f, 8, signed=False)[0]) for f in (1, 3, 6)]
    [6, 25, 201]
"""
