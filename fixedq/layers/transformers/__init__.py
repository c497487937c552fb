"""Transformer layers: float building blocks (train with them) and their quantized versions.

See ``docs/transformers.md``. Importing registers every layer with Keras serialization.
"""

from fixedq.layers.transformers.float_layers import (
    AddPositionEmbs,
    Attention,
    ClassToken,
    ExtractToken,
    LayerMadNormalization,
    Shiftmax,
    shiftmax,
)
from fixedq.layers.transformers.quantized import (
    QuantizedAddPositionEmbs,
    QuantizedAttention,
    QuantizedClassToken,
    QuantizedExtractToken,
    QuantizedLayerMadNormalization,
    QuantizedShiftmax,
)

__all__ = [
    "AddPositionEmbs",
    "Attention",
    "ClassToken",
    "ExtractToken",
    "LayerMadNormalization",
    "QuantizedAddPositionEmbs",
    "QuantizedAttention",
    "QuantizedClassToken",
    "QuantizedExtractToken",
    "QuantizedLayerMadNormalization",
    "QuantizedShiftmax",
    "Shiftmax",
    "shiftmax",
]
