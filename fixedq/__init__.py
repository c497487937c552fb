"""fixedq: Keras 3 models to FixedPoint, integer-only models with a bit-exact integer engine.

The public API is listed in ``__all__``; heavy submodules (TensorFlow) load on first use so that
``import fixedq`` and ``fixedq --version`` stay fast.

Example:
    >>> import fixedq
    >>> fixedq.__version__
    '0.1.0'
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {}

__all__ = ["__version__"] + sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        return getattr(module, name)
    raise AttributeError(f"module 'fixedq' has no attribute {name!r}")
