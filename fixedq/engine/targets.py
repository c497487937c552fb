"""Hardware profiles ("targets") an engine model can be checked against.

A :class:`Target` lists what a device accepts: weight bit widths (separately for the first
neural layer, which reads the raw input), activation bit widths between layers, whether
activations must be per-tensor, which op kinds / neural types exist, and the accumulator width.
:func:`check_target` collects **every** violation and raises one ``ValueError`` listing them.

The two built-in profiles are *Akida-like*: they follow the public descriptions of those
devices, they are not vendor specifications. Which op kinds and neural types each one runs is
declared where the kind is defined (``targets`` of :data:`fixedq.engine.ops.KERNELS` and
:data:`fixedq.engine.ops.NEURAL_TYPES`).

Example:
    >>> TARGETS["akida-1.0"].activation_bits
    (1, 2, 4)
"""

from __future__ import annotations

from dataclasses import dataclass

from fixedq.engine.ops import kinds_for_target, neural_types_for_target


@dataclass(frozen=True)
class Target:
    """A hardware profile.

    Attributes:
        name: profile name.
        description: one line for humans.
        input_weight_bits: allowed weight bits of the first neural layer(s).
        weight_bits: allowed weight bits of the other neural layers.
        activation_bits: allowed total bits of activations between layers (model outputs are
            exempt: they leave the device as wide potentials).
        input_bits: allowed bits of the input quantizer.
        per_tensor_activations: activations must have one frac_bits per tensor.
        kinds: allowed op kinds; neural_types: allowed neural op types.
        buffer_bits: largest accumulator width.
    """

    name: str
    description: str
    input_weight_bits: tuple[int, ...]
    weight_bits: tuple[int, ...]
    activation_bits: tuple[int, ...]
    input_bits: tuple[int, ...]
    per_tensor_activations: bool
    kinds: tuple[str, ...]
    neural_types: tuple[str, ...]
    buffer_bits: int = 32


TARGETS = {
    "akida-1.0": Target(
        name="akida-1.0",
        description="Akida 1.0-like: 8-bit first layer, <=4-bit weights, 1/2/4-bit per-tensor "
                    "activations, sequential conv/dense/pooling networks",
        input_weight_bits=(2, 3, 4, 5, 6, 7, 8), weight_bits=(2, 3, 4),
        activation_bits=(1, 2, 4), input_bits=(8,), per_tensor_activations=True,
        kinds=kinds_for_target("akida-1.0"),
        neural_types=neural_types_for_target("akida-1.0")),
    "akida-2.0": Target(
        name="akida-2.0",
        description="Akida 2.0-like: 4/8-bit weights and activations, skip connections, "
                    "transposed convolutions",
        input_weight_bits=(4, 8), weight_bits=(4, 8), activation_bits=(1, 2, 4, 8),
        input_bits=(8,), per_tensor_activations=False,
        kinds=kinds_for_target("akida-2.0"),
        neural_types=neural_types_for_target("akida-2.0")),
}


def _first_neural(model) -> set[str]:
    """Neural ops with no neural op upstream (they read the raw input)."""
    before: dict[str, bool] = {}
    first = set()
    for op in model.ops:
        upstream = any(before.get(t, False) for t in op.inputs)
        if op.kind == "neural" and not upstream:
            first.add(op.name)
        before[op.name] = upstream or op.kind == "neural"
    return first


def _bits(op) -> int | None:
    if "value_bits" not in op.attrs:
        return None
    return int(op.attrs["value_bits"]) + (1 if op.attrs.get("signed") else 0)


def violations(model, target: Target) -> list[str]:
    """Every reason ``model`` does not fit ``target`` (empty list when it fits)."""
    problems = []
    firsts = _first_neural(model)
    outputs = {o["tensor"] for o in model.outputs}
    for op in model.ops:
        where = f"{op.name!r} ({op.kind}{'/' + op.attrs['type'] if 'type' in op.attrs else ''})"
        if op.kind not in target.kinds:
            problems.append(f"{where}: op kind {op.kind!r} is not supported "
                            f"(allowed: {', '.join(target.kinds)})")
        if op.kind == "neural" and op.attrs["type"] not in target.neural_types:
            problems.append(f"{where}: {op.attrs['type']} layers are not supported")
        if op.kind in ("neural", "buffer_conv"):  # weighted kinds: weight and accumulator bits
            wb = int(op.attrs["weight_bits"])
            allowed = target.input_weight_bits if op.name in firsts else target.weight_bits
            if wb not in allowed:
                which = "first-layer " if op.name in firsts else ""
                problems.append(f"{where}: {wb}-bit weights, allowed {which}weight bits "
                                f"{list(allowed)}")
            if int(op.attrs.get("buffer_bits", 32)) > target.buffer_bits:
                problems.append(f"{where}: {op.attrs['buffer_bits']}-bit accumulator > "
                                f"{target.buffer_bits}")
        bits = _bits(op)
        if bits is not None and op.name not in outputs:
            allowed = target.input_bits if op.kind == "input" else target.activation_bits
            if bits not in allowed:
                what = "input" if op.kind == "input" else "activation"
                problems.append(f"{where}: {bits}-bit {what}s, allowed {list(allowed)}")
        rule = op.attrs.get("rounding", "half_up")
        if rule != "half_up":  # eq. 5b: programs imported from TFLite / ONNX
            problems.append(f"{where}: requantization rounding {rule!r}; the profile "
                            "requantizes half up (eq. 5), so the op would not map bit-exactly")
        if target.per_tensor_activations and len(set(op.attrs.get("out_frac", [0]))) > 1:
            problems.append(f"{where}: per-axis activations (frac_bits vary by channel); the "
                            "target needs per-tensor activations")
    return problems


def check_target(model, target) -> Target:
    """Check ``model`` against ``target`` (a name or :class:`Target`); returns the Target.

    Raises:
        ValueError: unknown target name, or the model violates the profile (one error listing
            every offending op and why).
    """
    if isinstance(target, str):
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; known targets: {sorted(TARGETS)}")
        target = TARGETS[target]
    if not isinstance(target, Target):
        raise TypeError(f"target must be a name or a Target, got {type(target).__name__}")
    problems = violations(model, target)
    if problems:
        raise ValueError(f"model {model.name!r} is not compatible with target {target.name!r} "
                         f"({len(problems)} problem{'s' if len(problems) > 1 else ''}):\n  - "
                         + "\n  - ".join(problems))
    return target
