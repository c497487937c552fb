"""One schema for q-configs (:func:`fixedq.dump_config`) and ``quantize(overrides=...)``.

Every key a q-config layer entry may hold is listed in :data:`SETTINGS` with its type and one
documented range (the limits of :mod:`fixedq.tensors.limits`, shared with
``QuantizationParams`` and the command line). A violation is a :class:`QConfigError` (a
``ValueError``) naming the layer, the key and the value, raised before any work starts; it is
never a fallback to float (shared/DESIGN.md decision 6). Pure Python, no Keras: the command
line checks a config file before importing TensorFlow.

Example:
    >>> validate_overrides({"conv1": {"weight_bits": 4}})
    >>> validate_overrides({"conv1": {"weight_bits": 99}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    fixedq.models.qconfig_schema.QConfigError: overrides: layer 'conv1', key 'weight_bits': ...
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

from fixedq.tensors.limits import (
    ACTIVATION_BITS,
    FRAC_BITS,
    OUTPUT_BITS,
    STATE_BITS,
    WEIGHT_BITS,
)

QCONFIG_FORMAT = "fixedq-qconfig"
QCONFIG_VERSION = 1
#: Keys of a q-config's top level.
TOP_LEVEL_KEYS = ("format", "version", "qparams", "layers")


class QConfigError(ValueError):
    """A bad value in a q-config or in ``overrides``: always an error, never a float fallback."""


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _int_in(lo: int, hi: int) -> Callable:
    def check(v):
        if not _is_int(v) or not lo <= int(v) <= hi:
            return f"must be an integer in [{lo}, {hi}]"
        return None

    return check


def _bool(v):
    return None if isinstance(v, bool) else "must be true or false"


def _ints_or_int(lo: int, hi: int) -> Callable:
    def check(v):
        values = list(v) if isinstance(v, (list, tuple)) else [v]
        if not values or not all(_is_int(x) and lo <= int(x) <= hi for x in values):
            return (f"must be an integer in [{lo}, {hi}] or a non-empty list of them (one per "
                    "channel)")
        return None

    return check


def _nums(v, nonneg: bool = False) -> bool:
    values = list(v) if isinstance(v, (list, tuple)) else [v]
    return bool(values) and all(_is_num(x) and (not nonneg or x >= 0) for x in values)


def _range(v):
    return None if _nums(v, nonneg=True) else \
        "must be a finite number >= 0 or a non-empty list of them (one per channel)"


def _window(v):
    bad = "must be [low, high]: two finite numbers or two equal-length lists of them, low <= high"
    if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(_nums(x) for x in v):
        return bad
    low, high = ([x] if not isinstance(x, (list, tuple)) else list(x) for x in v)
    if len(low) != len(high) or any(a > b for a, b in zip(low, high, strict=True)):
        return bad
    return None


def _calibration(v):
    ok = isinstance(v, dict) and set(v) == {"min", "max"} and all(
        isinstance(v[k], (list, tuple)) and v[k] and _nums(v[k]) for k in ("min", "max")) \
        and len(v["min"]) == len(v["max"])
    return None if ok else ('must be {"min": [...], "max": [...]}: two equal-length lists of '
                            "finite numbers (as dump_config writes them)")


def _method(v):
    return None if isinstance(v, (str, dict)) else \
        "must be a calibration method name or its dict (fixedq.models.calibration_methods)"


def _dict(v):
    return None if isinstance(v, dict) else "must be an object (as dump_config writes it)"


def _bias_delta(v):
    return None if isinstance(v, (list, tuple)) and _nums(v) else \
        "must be a non-empty list of finite numbers (one per output channel)"


def _positive(v):
    return None if _is_num(v) and v > 0 else "must be a finite number > 0"


@dataclass(frozen=True)
class Setting:
    """One key of a q-config layer entry."""

    key: str
    type: str  # as written in JSON
    allowed: str  # the one documented range
    check: Callable  # value -> reason it is wrong, or None
    override: bool  # may also be given in ``quantize(overrides=...)``
    doc: str


def _span(lim) -> str:
    return f"{lim[0]} .. {lim[1]}"


SETTINGS: dict[str, Setting] = {s.key: s for s in (
    Setting("weight_bits", "int", _span(WEIGHT_BITS), _int_in(*WEIGHT_BITS), True,
            "bits of the layer's weights (signed); layers with weights only"),
    Setting("activation_bits", "int",
            f"{_span(ACTIVATION_BITS)}; {_span(OUTPUT_BITS)} on a model output; >= 2 if signed",
            _int_in(min(ACTIVATION_BITS[0], OUTPUT_BITS[0]),
                    max(ACTIVATION_BITS[1], OUTPUT_BITS[1])), True,
            "bits of the layer's output (unsigned after a fused ReLU, else signed)"),
    Setting("per_tensor", "bool", "true / false", _bool, True,
            "one frac_bits for the whole output instead of one per channel"),
    Setting("asymmetric", "bool", "true / false", _bool, True,
            "a calibrated integer window [lo, lo + 2^n - 1] for a signed output"),
    Setting("frac_bits", "int or [int]",
            f"{_span(FRAC_BITS)}; f0 - b .. f0 + b (f0 calibrated, b value bits)",
            _ints_or_int(*FRAC_BITS), True,
            "fixed frac_bits of the output (one, or one per channel), instead of calibrating"),
    Setting("range", "float or [float]", ">= 0, finite", _range, True,
            "fixed largest magnitude of the output (one, or one per channel)"),
    Setting("window", "[low, high]", "finite, low <= high", _window, True,
            "fixed asymmetric window of a signed output (with asymmetric)"),
    Setting("calibration_method", "str or object", "a calibration method", _method, True,
            "how the output range is chosen from the calibration statistics"),
    Setting("calibration", "{min: [float], max: [float]}", "finite, equal lengths",
            _calibration, False, "recorded per-channel calibration statistics"),
    Setting("weight_rounding", "object", "as recorded by weight rounding", _dict, False,
            "recorded optimized integer kernel (re-applied)"),
    Setting("bias_delta", "[float]", "finite, one per output channel", _bias_delta, False,
            "recorded bias correction (re-applied)"),
    Setting("weight_clip_std", "float", "> 0, finite", _positive, False,
            "recorded weight clipping, in standard deviations (re-applied)"),
    Setting("range_alignment", "object", "model input only", _dict, False,
            "recorded range-alignment factors (re-applied)"),
    Setting("state_bits", "int", _span(STATE_BITS), _int_in(*STATE_BITS), True,
            "bits of a StatefulRecurrent's integer state (docs/numerics.md eq. 41b); "
            "StatefulRecurrent layers only"),
)}

#: Keys ``quantize(overrides=...)`` accepts (the others are results recorded by quantize).
OVERRIDE_KEYS = tuple(k for k, s in SETTINGS.items() if s.override)


def _fail(where: str, layer, key, value, reason: str):
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    raise QConfigError(f"{where}: layer {layer!r}, key {key!r}: {reason}, got {shown}")


def validate_entry(where: str, layer: str, entry, overrides: bool = False) -> None:
    """Check one layer entry: known keys, types and ranges (no model needed).

    Example:
        >>> validate_entry("q_config", "fc", {"per_tensor": "yes"})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        fixedq.models.qconfig_schema.QConfigError: q_config: layer 'fc', key 'per_tensor': ...
    """
    if not isinstance(entry, dict):
        raise QConfigError(f"{where}: layer {layer!r}: its settings must be an object "
                           f"{{key: value}}, got {entry!r:.60}")
    allowed = OVERRIDE_KEYS if overrides else tuple(SETTINGS)
    for key, value in entry.items():
        if key not in allowed:
            raise QConfigError(f"{where}: layer {layer!r}: unknown key {key!r}; allowed: "
                               f"{', '.join(allowed)}")
        reason = SETTINGS[key].check(value)
        if reason is not None:
            _fail(where, layer, key, value, reason)


def validate_qconfig(q_config) -> None:
    """Check a q-config's top level and every layer entry (no model needed).

    Example:
        >>> validate_qconfig({"format": "fixedq-qconfig", "version": 1, "layers": {}, "x": 1})
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        fixedq.models.qconfig_schema.QConfigError: q_config: unknown top-level key 'x'; ...
    """
    if not isinstance(q_config, dict) or q_config.get("format") != QCONFIG_FORMAT:
        raise QConfigError(f"q_config must be a dict made by dump_config (format "
                           f"{QCONFIG_FORMAT!r}), got {str(q_config)[:80]!r}")
    for key in q_config:
        if key not in TOP_LEVEL_KEYS:
            raise QConfigError(f"q_config: unknown top-level key {key!r}; allowed: "
                               f"{', '.join(TOP_LEVEL_KEYS)}")
    version = q_config.get("version", QCONFIG_VERSION)
    if version != QCONFIG_VERSION or not _is_int(version):
        raise QConfigError(f"q_config: key 'version' must be {QCONFIG_VERSION}, got {version!r}")
    if "qparams" in q_config and not isinstance(q_config["qparams"], dict):
        raise QConfigError(f"q_config: key 'qparams' must be an object, got "
                           f"{q_config['qparams']!r:.60}")
    layers = q_config.get("layers", {})
    if not isinstance(layers, dict):
        raise QConfigError(f"q_config: key 'layers' must be an object {{layer: {{key: value}}}}"
                           f", got {layers!r:.60}")
    for name, entry in layers.items():
        validate_entry("q_config", name, entry)


def validate_overrides(overrides) -> None:
    """Check ``quantize(overrides=...)``: ``{layer: {key: value}}`` with override keys only."""
    if overrides is None:
        return
    if not isinstance(overrides, dict):
        raise TypeError(f"overrides must be a dict {{layer_name: {{key: value}}}}, got "
                        f"{type(overrides).__name__}")
    for name, entry in overrides.items():
        validate_entry("overrides", name, entry, overrides=True)


def check_activation_bits(layer: str, bits: int, output: bool, signed: bool | None = None,
                          where: str = "q_config") -> None:
    """``activation_bits`` of ``layer``: the activation range, or the output range on a model
    output; a signed tensor needs a sign bit and one magnitude bit."""
    lim = OUTPUT_BITS if output else ACTIVATION_BITS
    if not lim[0] <= bits <= lim[1]:
        what = "a model output" if output else "a layer that is not a model output"
        _fail(where, layer, "activation_bits", bits,
              f"must be an integer in [{lim[0]}, {lim[1]}] on {what}")
    if signed and bits < 2:
        _fail(where, layer, "activation_bits", bits,
              "must be >= 2 on a signed output (one bit is the sign)")


def frac_bits_window(calibrated: int, value_bits: int) -> tuple[int, int]:
    """Allowed ``frac_bits`` of a tensor whose calibrated range gets ``calibrated`` frac_bits.

    Below ``calibrated - value_bits`` one step of the grid is larger than the calibrated range,
    so every calibrated value rounds to 0; above ``calibrated + value_bits`` everything larger
    than one step of the calibrated grid saturates. Either way the tensor carries (almost) no
    information: the all-zero models of issue 12.

    Example:
        >>> frac_bits_window(7, 7)
        (0, 14)
    """
    return (max(calibrated - value_bits, FRAC_BITS[0]), min(calibrated + value_bits, FRAC_BITS[1]))


def check_frac_bits(layer: str, frac, calibrated, value_bits: int, where: str = "q_config"):
    """``frac_bits`` (one or per channel) against the calibrated choice (one or per channel)."""
    fr = [int(f) for f in frac]
    cal = [int(c) for c in calibrated]
    if len(fr) == 1 and len(cal) > 1:  # per-tensor: the grid of the widest channel
        cal = [min(cal)]
    if len(cal) == 1:
        cal = cal * len(fr)
    windows = [frac_bits_window(c, value_bits) for c in cal]
    for f, c, (lo, hi) in zip(fr, cal, windows, strict=True):
        if not lo <= f <= hi:
            _fail(where, layer, "frac_bits", frac if len(fr) > 1 else fr[0],
                  f"must be in [{lo}, {hi}] for this layer ({value_bits} value bits, calibrated "
                  f"frac_bits {c}: outside, every value rounds to 0 or saturates)")


def markdown_table() -> str:
    """The docs' table of q-config keys (docs/quantization.md, checked by a test)."""
    rows = ["| Key | Type | Allowed | In `overrides` | Meaning |", "|---|---|---|---|---|"]
    for s in SETTINGS.values():
        rows.append(f"| `{s.key}` | {s.type} | {s.allowed} | {'yes' if s.override else 'no'} "
                    f"| {s.doc} |")
    return "\n".join(rows)
