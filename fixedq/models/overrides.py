"""Manual mixed precision in the style of TIDL's name lists, as ``quantize`` overrides.

Example:
    >>> mixed_precision(params_16bit_names=["conv1"], features_16bit_names=["conv1", "add"])
    {'conv1': {'weight_bits': 16, 'activation_bits': 16}, 'add': {'activation_bits': 16}}
"""

from __future__ import annotations


def mixed_precision(params_16bit_names=(), features_16bit_names=(), params_4bit_names=(),
                    features_4bit_names=()) -> dict:
    """Per-layer bit-width overrides for ``quantize(..., overrides=...)``.

    ``params_*`` set a layer's ``weight_bits``; ``features_*`` set its output
    ``activation_bits``. A name in both the 4-bit and the 16-bit list raises ``ValueError``.
    """
    out: dict[str, dict] = {}
    for names, key, bits in ((params_16bit_names, "weight_bits", 16),
                             (features_16bit_names, "activation_bits", 16),
                             (params_4bit_names, "weight_bits", 4),
                             (features_4bit_names, "activation_bits", 4)):
        if isinstance(names, str):
            raise TypeError(f"name lists must be lists of layer names, got the string {names!r}")
        for name in names:
            entry = out.setdefault(str(name), {})
            if key in entry and entry[key] != bits:
                raise ValueError(f"layer {name!r} is listed for both {entry[key]} and {bits} "
                                 f"{key}")
            entry[key] = bits
    return out
