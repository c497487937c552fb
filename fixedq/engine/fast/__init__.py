"""The engine's compiled dense path: numba kernels and a per-model execution plan.

:mod:`.kernels` holds the loop bodies, :mod:`.jit` compiles them (numba optional;
``FIXEDQ_ENGINE_COMPILED=0`` disables them), :mod:`.plan` maps every op of a model to a compiled
step or its NumPy reference kernel. Outputs are the reference integers, bit for bit.
"""
