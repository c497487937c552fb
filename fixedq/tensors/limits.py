"""The one set of bit-width and frac_bits limits (QuantizationParams, q-configs, overrides, CLI).

Pure Python (no NumPy, no Keras) so that the command line checks values before TensorFlow is
imported. Every limit is inclusive, ``(lo, hi)``; docs/quantization.md explains each one.

Example:
    >>> from fixedq.tensors.limits import WEIGHT_BITS, ACTIVATION_BITS, OUTPUT_BITS
    >>> WEIGHT_BITS, ACTIVATION_BITS, OUTPUT_BITS
    ((2, 16), (1, 16), (1, 24))
"""

from __future__ import annotations

#: Weights are signed (one bit is the sign, so at least 2); the engine stores kernels as int8
#: or int16, and the requantization products (kernel x activation) stay exact in int64.
WEIGHT_BITS = (2, 16)
#: Activations between layers (and the InputQuantizer): unsigned tensors (after a ReLU) may use
#: 1 bit; at most 16 because the engine stores activations as int8/int16 and elementwise
#: tables index 2^n entries (decision 9). A signed activation also needs >= 2 (sign + 1 bit);
#: that is checked once its sign is known.
ACTIVATION_BITS = (1, 16)
#: The model's outputs (the last quantized layers before the Dequantizer): on-grid float32
#: tensors hold integers exactly up to 2^24, and nothing reads them as a table.
OUTPUT_BITS = (1, 24)
#: The integer state of a StatefulRecurrent (signed, eq. 41b): the layer keeps it as on-grid
#: float32 values, exact up to 24 bits; 4 leaves a sign and 3 magnitude bits.
STATE_BITS = (4, 24)
#: Accumulators (signed) and the integer multipliers that replace float scales.
BUFFER_BITS = (8, 48)
SCALE_BITS = (1, 16)
#: |frac_bits| of an activation: tensors between layers are float32 values v * 2^-f
#: (decision 4), recovered as x * 2^f, so 2^f and 2^-f must both be normal float32 numbers.
#: A tighter bound, relative to the calibrated range, is checked once the range is known.
FRAC_BITS = (-126, 126)
