"""numba compilation of :mod:`fixedq.engine.fast.kernels` (lazy, optional, switchable).

numba is an optional dependency: without it, or with the environment variable
``FIXEDQ_ENGINE_COMPILED=0``, :func:`backend` returns ``None`` and the engine runs its NumPy
reference kernels (same integers, slower). The first call compiles (seconds; the machine
code is cached on disk when the package directory is writable).

Example:
    >>> import os
    >>> from fixedq.engine.fast import jit
    >>> jit.enabled() == (jit.backend() is not None)
    True
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from types import FunctionType, SimpleNamespace

from fixedq.engine.fast import kernels

#: Environment variable: ``0`` (or ``false``/``no``/``off``) disables the compiled kernels.
ENV = "FIXEDQ_ENGINE_COMPILED"

#: The compiled kernels: single-threaded (numba's parallel loops lost whole scheduler quanta
#: to the GEMM's threads on the shared 2-core machine; the plan splits batches over threads
#: instead, the kernels release the GIL).
NAMES = ("requant_rows", "add_rows", "affine_rows", "gap_sum", "quantize_rows",
         "absmax_channels", "im2col", "im2col_u8", "im2col_u8x2", "requant_planes",
         "depthwise_rows", "maxpool", "table_rows", "mul_rows")
#: The requantizing kernels: compiled once per rounding rule (``backend().rule[code]``).
RULED = ("requant_rows", "add_rows", "affine_rows", "requant_planes", "depthwise_rows",
         "add_scaled_rows", "conv_rows")
#: The requantizing kernels that can write a fused table's entries instead of the integers
#: (``backend().table[code]``: :func:`kernels.emit` bound to :func:`kernels.emit_table`).
FUSED = ("requant_rows", "requant_planes", "depthwise_rows", "conv_rows")


class _Pin(threading.local):
    value = None  # inside pinned(): the switch read once at its start

    def __init__(self):
        self.outers = []  # per thread: the values to restore, innermost last


_PIN = _Pin()


def requested() -> bool:
    """Whether the environment allows the compiled kernels (``FIXEDQ_ENGINE_COMPILED``);
    read on every call, except inside :func:`pinned` on the same thread.

    Example:
        >>> isinstance(requested(), bool)
        True
    """
    value = _PIN.value
    if value is not None:
        return value
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class pinned:
    """A context in which :func:`requested` (and so :func:`backend`) answers from one read
    of the environment, on this thread: a plan run reads the switch once per batch instead
    of once per op (a read of ``os.environ`` costs ~1 us, several per op of a batch-1
    frame). Nested contexts keep the outer value.

    Example:
        >>> with pinned():
        ...     requested() == pinned.current()
        True
        >>> pinned.current() is None
        True
    """

    def __enter__(self):
        # the outer values live on the thread, not on the object: one object may be
        # entered inside itself, or on several threads at once
        outer = _PIN.value
        if outer is None:
            _PIN.value = requested()
        _PIN.outers.append(outer)
        return self

    def __exit__(self, *exc):
        _PIN.value = _PIN.outers.pop()
        return False

    @staticmethod
    def current():
        """The pinned value on this thread, or ``None`` outside :func:`pinned`."""
        return _PIN.value


def enabled() -> bool:
    """Compiled kernels requested and numba importable."""
    return requested() and _compiled() is not None


def backend():
    """The compiled kernels (a namespace of numba functions) or ``None`` (numba missing, or
    disabled by ``FIXEDQ_ENGINE_COMPILED=0``; read on every call so tests can switch)."""
    return _compiled() if requested() else None


@lru_cache(maxsize=1)
def _compiled():
    try:
        import numba
    except ImportError:  # pragma: no cover - depends on the environment
        return None

    def build(cache):
        opts = {"cache": cache, "nogil": True, "error_model": "numpy"}

        def compiled(fn, scope, suffix=""):
            # a copy of ``fn`` reading ``scope`` as its globals (own name: own cache entry)
            copy = FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__,
                                fn.__closure__)
            copy.__qualname__ = fn.__qualname__ + suffix
            return numba.njit(**opts)(copy)

        fns = {name: compiled(getattr(kernels, name), vars(kernels))
               for name in NAMES if name not in RULED}
        # the requantizing kernels: one variant per rounding rule (and, for FUSED, one more
        # writing a table's entries), compiled lazily on first use, each with requant_value
        # bound to its rule's function and emit to emit_plain / emit_table
        rules, tables = {}, {}
        for code in kernels.RULES.values():
            for emit, names, out, suffix in (("emit_plain", RULED, rules, ""),
                                             ("emit_table", FUSED, tables, "_table")):
                scope = dict(vars(kernels))
                # (LLVM inlines them; numba's inline="always" stopped the loops vectorizing)
                scope["requant_value"] = compiled(kernels.RULE_FUNCTIONS[code], scope)
                scope["emit"] = compiled(getattr(kernels, emit), scope)
                out[code] = SimpleNamespace(**{
                    name: compiled(getattr(kernels, name), scope, f"__rule{code}{suffix}")
                    for name in names})
        return SimpleNamespace(**fns, rule=rules, table=tables)

    try:  # on-disk cache next to the module when writable
        return build(True)
    except RuntimeError:  # pragma: no cover - no writable cache location
        return build(False)
