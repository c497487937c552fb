"""Model-level API: quantize, calibrate, q-config dump/apply, load_model/save_model.

The streaming helpers load on first use (they import Keras; ``fixedq_cli`` imports modules of
this package that must not): ``fixedq.models.reset_buffers``, ``predict_clips``,
``unroll_clips``.
"""

from __future__ import annotations

import importlib

_LAZY = {"predict_clips": "fixedq.models.streaming", "reset_buffers": "fixedq.models.streaming",
         "unroll_clips": "fixedq.models.streaming"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fixedq.models' has no attribute {name!r}")
