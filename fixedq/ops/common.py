"""Small helpers shared by the op modules (engine-op attributes, config conditions).

Example:
    >>> i64([1, 2]).dtype
    dtype('int64')
"""

from __future__ import annotations

import numpy as np


def i64(a) -> np.ndarray:
    """``a`` as an int64 array."""
    return np.asarray(a, dtype=np.int64)


def spec_attrs(spec, channels: int) -> dict:
    """Engine attributes of an output spec: value bits, signedness, per-channel frac_bits."""
    if spec.lo is not None:  # stored as u = v - lo: unsigned, all n bits (eq. 37)
        return {"value_bits": int(spec.value_bits) + 1, "signed": False,
                "out_frac": spec.frac_array(channels).tolist()}
    return {"value_bits": int(spec.value_bits), "signed": bool(spec.signed),
            "out_frac": spec.frac_array(channels).tolist()}


def out_attrs(layer, channels: int) -> dict:
    """:func:`spec_attrs` of ``layer``'s output spec (``{}`` without one)."""
    spec = layer.output_spec
    return spec_attrs(spec, channels) if spec is not None else {}
