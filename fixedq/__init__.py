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

_LAZY = {
    "QuantizationParams": "fixedq.layers.params",
    "quantize": "fixedq.models.quantize",
    "dump_config": "fixedq.models.quantize",
    "calibrate": "fixedq.models.calibrate",
    "load_model": "fixedq.models.loading",
    "save_model": "fixedq.models.loading",
    "sanitize": "fixedq.transforms",
    "supported_layers": "fixedq.ops",
    "qat": "fixedq.models.qat",
    "is_quantized": "fixedq.layers.base",
}

__all__ = ["__version__"] + sorted(_LAZY)


def __getattr__(name: str):
    """Import public names on first use (``fixedq.quantize`` loads TensorFlow then)."""
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        return getattr(module, name)
    raise AttributeError(f"module 'fixedq' has no attribute {name!r}")
